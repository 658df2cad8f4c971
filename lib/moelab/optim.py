"""The optimizer: AdamW with the model's weight-decay rule (:func:`moelab.model.decay_groups`)."""

from __future__ import annotations

import torch

from .config import TrainConfig
from .model import Transformer, decay_groups


def make_optimizer(model: Transformer, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over two groups: the decayed matrices, then everything else (weight decay 0)."""
    decay, keep = decay_groups(model)
    groups = [
        {"params": [p for _, p in decay], "weight_decay": train.weight_decay},
        {"params": [p for _, p in keep], "weight_decay": 0.0},
    ]
    try:  # the fused kernel is one op for all parameters (CPU and CUDA)
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)
