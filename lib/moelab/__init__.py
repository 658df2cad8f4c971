"""moelab: small sparse Mixture-of-Experts language models, for notebooks."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
import importlib

from .config import PRESETS, ModelConfig, TrainConfig, preset
from .model import GenerationStep, KVCache, ModelOutput, Transformer
from .moe import RoutingRecord, load_balancing_loss, router_z_loss
from .tokenizer import ByteTokenizer

__version__ = "0.1.0"

# Loaded on first use, so that `python -m moelab.train` / `-m moelab.evaluate` do not
# import their own module twice. `moelab.evaluate` is that module, callable as the function.
_LAZY = {
    "Trainer": "train",
    "TrainResult": "train",
    "TrainingDiverged": "train",
    "latest_checkpoint": "train",
    "evaluate": "evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return module if name == "evaluate" else getattr(module, name)
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
    "evaluate",
    "latest_checkpoint",
    "load_balancing_loss",
    "load_checkpoint",
    "load_model",
    "preset",
    "router_z_loss",
    "save_checkpoint",
]
