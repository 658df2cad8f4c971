"""Sampling one token from the logits: greedy, temperature, top-k and nucleus (top-p).

The generation loop itself is :meth:`moelab.nn.model.Transformer.iter_generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moelab.nn.moe.router import RoutingRecord


WINDOW_MODES = ("slide", "crop")  # what generation does past the context window (Transformer.generate)


@dataclass
class GenerationStep:
    """One generated position: tokens (B,) and, if asked for, the routing that produced them."""

    tokens: Tensor
    routing: list[RoutingRecord] | None = None


def last_position(record: RoutingRecord) -> RoutingRecord:
    """The routing of the last position only: each field (B, T, ·) -> (B, ·)."""
    return RoutingRecord(record.experts[:, -1], record.weights[:, -1], record.probs[:, -1], record.dropped[:, -1])


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an integer in 1..{vocab_size}, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")


def sample_next_token(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> Tensor:
    """Pick one token per row of logits (B, V): greedy at temperature 0, else sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the ones before it already reach top_p (the first is always kept)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
