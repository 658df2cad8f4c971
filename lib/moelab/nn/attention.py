"""Causal self-attention: fused QKV, optional QK-norm, rotary positions, the KV cache, and
``scaled_dot_product_attention`` with head sizes padded for the fused CUDA kernels.

The positional encodings are :mod:`moelab.nn.positions`, the cache :mod:`moelab.nn.kv_cache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.config.model import ModelConfig
from moelab.nn.aligned import Linear
from moelab.nn.kv_cache import KVCache
from moelab.nn.positions import apply_rope


def rms_norm(x: Tensor, norm: nn.RMSNorm) -> Tensor:
    """``norm`` applied with its gain cast to x's dtype: under bf16 autocast, the fused kernel (float32 inside)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


def padded_head_dim(head_dim: int, multiple: int = 8) -> int:
    """The head size rounded up to a multiple of 8 (what SDPA's fused CUDA kernels need)."""
    return head_dim + (-head_dim % multiple)


def attention(q: Tensor, k: Tensor, v: Tensor, pad_head_dim: bool, **kwargs) -> Tensor:
    """``scaled_dot_product_attention``; with ``pad_head_dim`` the head size is zero-padded to a multiple of 8.

    SDPA's fused CUDA kernels (flash, memory-efficient, cuDNN) need a head size that is a
    multiple of 8; other sizes fall back to the slow math kernel. Zeros appended to q and k
    add nothing to the dot products, zeros appended to v give zero output columns, which
    are sliced off; the softmax scale stays 1/sqrt(true head size). So the result and its
    gradients are the same, computed by a fused kernel (the seed preset's head size 257
    runs as 264: the memory-efficient kernel; flash stops at 256).
    """
    head_dim = q.shape[-1]
    extra = padded_head_dim(head_dim) - head_dim if pad_head_dim else 0
    if not extra:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    q, k, v = (F.pad(t, (0, extra)) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(head_dim), **kwargs)
    return y[..., :head_dim]


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection and SDPA.

    ``pad_head_dim``: None (the default) pads the head size to a multiple of 8 on CUDA
    when it is not one already (see :func:`attention`); True / False force it on or off
    (``Transformer.set_padding``; the tests force it on the CPU).

    With ``qk_norm``, each head's query and key are RMS-normalized over the head size
    before RoPE, so the attention logits cannot grow with the size of the projections
    (QK-norm: modded-nanogpt and nanochat per head without a gain; Qwen3 and Gemma 3 per
    head with one; OLMo 2 over all heads together, with one). Here q and k each have a
    learned gain of head size, shared by the heads, initialized to 1: without it, the
    logits q·k / sqrt(head size) of unit-RMS vectors stay below sqrt(head size), 4 to 6 at
    this project's head sizes (modded-nanogpt, at head size 128, raises its fixed attention
    scale to 0.12 for that). Keys are cached normalized, so the KV cache and the padded-head
    path need nothing else.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pad_head_dim: bool | None = None
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm = nn.RMSNorm(config.head_dim) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_dim) if config.qk_norm else None

    def residual_projections(self) -> list[Tensor]:
        """The weights that write into the residual stream (the init rule scales them down)."""
        return [self.proj.weight]

    def fused_matrices(self) -> list[tuple[Tensor, int]]:
        """Weights that store several matrices stacked along their rows: q, k and v in ``qkv``.

        An optimizer that treats each matrix as a unit (Muon, :mod:`moelab.train.optim`) splits
        them, as modded-nanogpt orthogonalizes its stacked q, k, v (and o) weights one by one.
        """
        return [(self.qkv.weight, 3)]

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        qk, v = qkv[:2], qkv[2]
        if self.q_norm is not None:  # QK-norm over each head's size, before the positions are rotated in
            qk = torch.stack([rms_norm(qk[0], self.q_norm), rms_norm(qk[1], self.k_norm)])
        if rope is not None:  # q and k in one call: decoding a token is many small operations, so fewer is faster
            qk = apply_rope(qk, *rope)
        q, k = qk.unbind(0)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        if past == 0 or T == 1:
            # no cache, or one new query that may see every cached key
            mask, is_causal = None, T > 1
        else:  # several new queries after a cached prefix: causal with an offset
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            is_causal = False
        pad = self.pad_head_dim
        if pad is None:
            pad = q.is_cuda and q.shape[-1] % 8 != 0
        y = attention(
            q, k, v, pad, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))
