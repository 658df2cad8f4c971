"""moelab: small sparse Mixture-of-Experts language models, for notebooks."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
import importlib

from .config import ModelConfig, TrainConfig
from .presets import PRESETS, preset
from .model import GenerationStep, KVCache, ModelOutput, Transformer
from .moe import RoutingRecord, load_balancing_loss, router_z_loss
from .tokenizer import ByteTokenizer

__version__ = "0.1.0"

# Loaded on first use.
_LAZY = {
    "Trainer": "trainer",
    "TrainResult": "trainer",
    "TrainingDiverged": "trainer",
    "latest_checkpoint": "runs",
    "score_text": "scoring",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'moelab' has no attribute {name!r}")

__all__ = [
    "PRESETS",
    "ByteTokenizer",
    "CheckpointError",
    "GenerationStep",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "RoutingRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "Transformer",
    "score_text",
    "latest_checkpoint",
    "load_balancing_loss",
    "load_checkpoint",
    "load_model",
    "preset",
    "router_z_loss",
    "save_checkpoint",
]
