"""moelab: small sparse Mixture-of-Experts language models, for notebooks.

The names most notebooks need, imported eagerly; every other name lives in the module
that owns it (see README.md, "The layout").
"""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import ModelConfig, TrainConfig
from .generation import GenerationStep
from .model import KVCache, ModelOutput, Transformer
from .moe import RouterOutput, RoutingRecord, load_balancing_loss, moe_losses, router_z_loss
from .presets import PRESETS, preset
from .runs import TrainResult, latest_checkpoint
from .scoring import score_text
from .tokenizer import ByteTokenizer
from .trainer import Trainer, TrainingDiverged

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ByteTokenizer",
    "CheckpointError",
    "GenerationStep",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "RouterOutput",
    "RoutingRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "Transformer",
    "latest_checkpoint",
    "load_balancing_loss",
    "load_checkpoint",
    "load_model",
    "moe_losses",
    "preset",
    "router_z_loss",
    "save_checkpoint",
    "score_text",
]
