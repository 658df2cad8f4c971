"""The optimizer: AdamW with weight decay on the weight matrices only."""

from __future__ import annotations

import torch

from .config import TrainConfig
from .model import Transformer


def no_decay(name: str) -> bool:
    """Biases and LayerNorm gains are not decayed; weight matrices (and embeddings) are."""
    return name.endswith(("bias", ".b1", ".b2")) or ".ln" in f".{name}" or name.startswith("ln_f")


def make_optimizer(model: Transformer, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if not no_decay(n)]
    keep = [p for n, p in model.named_parameters() if no_decay(n)]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    try:  # the fused kernel is one op for all parameters (CPU and CUDA)
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)
