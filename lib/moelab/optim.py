"""The optimizer: AdamW with the model's weight-decay rule (:func:`moelab.model.decay_groups`)."""

from __future__ import annotations

from typing import Any

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


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: Transformer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state, also one saved before the decay rule excluded the router noise.

    Until moelab 0.1.0's redesign every matrix decayed, the router-noise weights included, so
    such a checkpoint's two groups are (all matrices, the rest). Its per-parameter moments are
    moved to where the same parameters sit in today's groups.
    """
    try:
        optimizer.load_state_dict(state)
        return
    except ValueError:
        if len(state["param_groups"]) != 2:
            raise
    decay, keep = decay_groups(model)
    undecayed = {id(p) for m in model.modules() if hasattr(m, "undecayed_weights") for p in m.undecayed_weights()}
    position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    old_decay = sorted([n for n, _ in decay] + [n for n, p in keep if id(p) in undecayed], key=position.__getitem__)
    old_order = old_decay + [n for n, p in keep if id(p) not in undecayed]
    new_index = {name: i for i, (name, _) in enumerate(decay + keep)}
    old_ids = state["param_groups"][0]["params"] + state["param_groups"][1]["params"]
    if len(old_ids) != len(old_order):
        raise ValueError(f"the checkpoint's optimizer holds {len(old_ids)} parameters, the model {len(old_order)}")
    remapped = optimizer.state_dict()
    remapped["state"] = {new_index[name]: state["state"][i] for name, i in zip(old_order, old_ids) if i in state["state"]}
    optimizer.load_state_dict(remapped)
