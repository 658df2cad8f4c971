"""moelab: small sparse Mixture-of-Experts language models, for notebooks."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import PRESETS, ModelConfig, TrainConfig, preset
from .model import GenerationStep, KVCache, ModelOutput, Transformer
from .moe import RoutingRecord, load_balancing_loss, router_z_loss
from .tokenizer import ByteTokenizer

__version__ = "0.1.0"

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
    "Transformer",
    "load_balancing_loss",
    "load_checkpoint",
    "load_model",
    "preset",
    "router_z_loss",
    "save_checkpoint",
]
