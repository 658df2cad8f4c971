"""Slow, obvious reference implementations that the fast code is tested against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moelab.moe import MoE


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE layer one token at a time, one expert at a time (eval mode, no router noise).

    x: (tokens, d). Common experts are read back as n separate experts from their
    fused weights; capacity drops a slot when its expert already took `capacity`
    slots from earlier tokens (earlier token, then better-ranked choice, first).
    """
    n_tokens, d = x.shape
    taken = [0] * max(moe.n_experts, 1)
    capacity = moe.capacity(n_tokens) if moe.n_experts else None
    out = []
    for t in range(n_tokens):
        xt = x[t]
        y = torch.zeros(d, dtype=x.dtype)
        if moe.common is not None:
            w1, b1 = moe.common.fc.weight, moe.common.fc.bias
            w2, b2 = moe.common.proj.weight, moe.common.proj.bias
            for start in range(0, w1.shape[0], moe.expert_hidden):
                part = slice(start, start + moe.expert_hidden)
                h = w1[part] @ xt + (b1[part] if b1 is not None else 0)
                y = y + w2[:, part] @ F.gelu(h)
            if b2 is not None:
                y = y + b2
        if moe.n_experts:
            logits = moe.gate.weight @ xt
            probs = torch.softmax(logits, dim=0)
            ranked = sorted(range(moe.n_experts), key=lambda e: -probs[e].item())[: moe.top_k]
            gates = [probs[e] for e in ranked]
            if moe.top_k > 1:
                total = sum(gates)
                gates = [g / total for g in gates]
            ex = moe.experts
            for e, g in zip(ranked, gates):
                if capacity is not None:
                    if taken[e] >= capacity:
                        continue
                    taken[e] += 1
                h = xt @ ex.w1[e] + (ex.b1[e] if ex.b1 is not None else 0)
                y = y + g * (F.gelu(h) @ ex.w2[e] + (ex.b2[e] if ex.b2 is not None else 0))
        out.append(y)
    return torch.stack(out)


def reference_z_loss(logits: torch.Tensor) -> float:
    """(1/B) sum_i (log sum_j exp(x_ij))^2, in plain Python floats."""
    total = 0.0
    for row in logits.tolist():
        total += math.log(sum(math.exp(v) for v in row)) ** 2
    return total / len(logits)
