"""The KV cache: every layer's keys and values preallocated for incremental decoding, and the MoE
capacity counts of the cached positions."""

from __future__ import annotations

import torch
from torch import Tensor

from moelab.config.model import ModelConfig


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding.

    With a capacity limit it also carries, per layer, sequence and expert, how many
    slots the cached positions chose (``expert_counts`` (L, B, N)), so the next
    positions are dropped exactly as in a full recomputation (see :func:`moelab.nn.moe.layer.capacity_keep`).
    """

    def __init__(self, config: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (config.n_layers, batch_size, config.n_heads, config.context_window, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.layers = [(self.keys[i], self.values[i]) for i in range(config.n_layers)]  # each (B, H, W, head size)
        self.length = 0  # positions filled (same for every layer once a forward pass ends)
        self.expert_counts = None
        if config.is_moe and config.capacity_factor is not None:
            self.expert_counts = torch.zeros(
                config.n_layers, batch_size, config.routed_experts, device=device, dtype=torch.long
            )

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, hd) after the cached positions; return all of the layer's (B, H, length + T, hd)."""
        start, new = self.length, k.shape[2]
        keys, values = self.layers[layer]  # narrow and copy_: the fewest operations a token
        keys.narrow(2, start, new).copy_(k)
        values.narrow(2, start, new).copy_(v)
        return keys.narrow(2, 0, start + new), values.narrow(2, 0, start + new)
