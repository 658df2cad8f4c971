"""moelab: small sparse Mixture-of-Experts language models, for notebooks.

The names most notebooks need, imported eagerly; every other name lives in the module
that owns it (see README.md, "The layout").
"""

from importlib.metadata import version

from moelab.runs.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from moelab.config.model import ModelConfig
from moelab.config.train import TrainConfig
from moelab.generate.next_token import GenerationStep
from moelab.nn.model import KVCache, ModelOutput, Transformer
from moelab.nn.moe.losses import load_balancing_loss, moe_losses, router_z_loss
from moelab.nn.moe.router import RouterOutput, RoutingRecord
from moelab.config.presets import PRESETS, preset
from moelab.runs.files import TrainResult, latest_checkpoint
from moelab.evaluate.scoring import score_text
from moelab.data.tokenizer import ByteTokenizer
from moelab.train.trainer import Trainer, TrainingDiverged

__version__ = version("moelab")  # pyproject.toml's, as installed

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
