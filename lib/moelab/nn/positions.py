"""Positional encodings: the fixed sinusoidal table (Vaswani et al. 2017) and rotary embeddings (Su et al. 2021).

The model holds the tables (a learned one is an embedding of the model); these functions make
and apply them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """The fixed sin/cos table of Vaswani et al. (2017), shape (length, dim)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


def rope_tables(length: int, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables for rotary embeddings (Su et al. 2021), each (length, head_dim)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + d/2) of x (..., T, d) by the angles of their positions (cos, sin: (T, d))."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
