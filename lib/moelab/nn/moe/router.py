"""The router of a MoE layer: steps 1-5 of :mod:`moelab.nn.moe.layer`, and the balance bias.

For the rows x of a layer's input, :class:`Router` computes the logits ``x W_g`` over the N
routed experts (1), adds noise in training (2), turns the logits into scores (3), chooses
each row's k experts (4: by score, plus the balance bias when ``balance="bias"``) and their
gates (5: the raw scores of the chosen experts, renormalized when k > 1). The MoE layer and
the one-token decoders (:mod:`moelab.generate.decoder`, :mod:`moelab.generate.compiled`) all route
through :func:`select_experts`.
With ``balance="bias"`` the router also counts the slots each expert got during the
optimizer step; :meth:`Router.update_balance_bias` moves the bias after the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.config.model import ModelConfig
from moelab.nn.aligned import Linear


@dataclass
class RouterOutput:
    """What one MoE layer's router computed, shaped (B, T, ·); not detached (the losses need the graph).

    logits: clean router logits (N) before noise; probs: the router's distribution over
    the N experts from the (noisy, in training) logits: the softmax for ``gate="softmax"``,
    the sigmoid scores divided by their sum over the N experts for ``gate="sigmoid"``
    (DeepSeek-V3's normalized scores); the load-balancing loss takes its P_i from it and
    the analyses their importance and entropies. experts: chosen expert ids, best by
    selection score first (k); weights: their gate weights (k); dropped: True where
    capacity dropped the slot (k), None when dropless.
    """

    logits: Tensor
    probs: Tensor
    experts: Tensor
    weights: Tensor
    dropped: Tensor | None

    def record(self) -> RoutingRecord:
        dropped = self.dropped if self.dropped is not None else torch.zeros_like(self.experts, dtype=torch.bool)
        return RoutingRecord(self.experts.detach(), self.weights.detach(), self.probs.detach(), dropped)


@dataclass
class RoutingRecord:
    """What one MoE layer's router did for a batch (tensors are detached).

    experts: (B, T, k) chosen expert ids, best first; weights: (B, T, k) their gate
    weights; probs: (B, T, N) router distribution over all experts (see
    :class:`RouterOutput`); dropped: (B, T, k)
    True where a capacity limit dropped that token slot.
    """

    experts: Tensor
    weights: Tensor
    probs: Tensor
    dropped: Tensor


def select_experts(
    logits: Tensor, score: str, top_k: int, balance_bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 3-5 of routing on logits (rows, N): (probs (rows, N), experts (rows, k), gates (rows, k)).

    A function of tensors and plain values (not of the module), so that the compiled one-token
    step (:mod:`moelab.generate.compiled`) routes with it for any model of a configuration.
    """
    wide = torch.promote_types(logits.dtype, torch.float32)  # 3. scores (also under bf16 autocast)
    if score == "softmax":
        scores = probs = torch.softmax(logits, dim=-1, dtype=wide)
    else:
        scores = torch.sigmoid(logits.to(wide))
        probs = scores / scores.sum(dim=-1, keepdim=True)
    if balance_bias is None:  # 4. choice and 5. gates: the raw scores of the chosen
        weights, experts = scores.topk(top_k, dim=-1)
    else:  # the bias steers the choice only
        experts = (scores + balance_bias).topk(top_k, dim=-1).indices
        weights = scores.gather(-1, experts)
    if top_k > 1:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, experts, weights


class Router(nn.Module):
    """Top-k routing over ``config.routed_experts`` experts (see the module's docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts = config.routed_experts
        self.top_k = config.routed_top_k
        self.score = config.gate  # "softmax" or "sigmoid"
        self.gate = Linear(config.n_embd, self.n_experts, bias=False)
        self.noise = Linear(config.n_embd, self.n_experts, bias=False) if config.router_noise else None
        # balance="bias": the selection bias is state (saved in checkpoints, restored on resume);
        # the slot counts of the current optimizer step are not (they are 0 after every step)
        with_bias = config.balance == "bias"
        self.bias_update_rate = config.bias_update_rate
        self.register_buffer("balance_bias", torch.zeros(self.n_experts) if with_bias else None)
        self.register_buffer("step_slots", torch.zeros(self.n_experts, dtype=torch.long) if with_bias else None,
                             persistent=False)  # fmt: skip

    def undecayed_weights(self) -> list[Tensor]:
        """Matrices the optimizer must not decay: the router-noise weights.

        Decay pulls weights toward 0, i.e. the noise std toward softplus(0) ≈ 0.69, a large
        fixed noise, rather than letting the router learn how much noise it wants.
        """
        return [self.noise.weight] if self.noise is not None else []

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (rows, d) -> (clean logits (rows, N), probs (rows, N), experts (rows, k), gates (rows, k))."""
        clean_logits = self.gate(x)  # 1. router
        logits = clean_logits
        if self.noise is not None and self.training:  # 2. noise
            logits = clean_logits + torch.randn_like(clean_logits) * F.softplus(self.noise(x))
        probs, experts, weights = self.select(logits)
        if self.step_slots is not None and self.training:  # this step's load, for the bias update
            slot_experts = experts.reshape(-1)
            self.step_slots.index_add_(0, slot_experts, torch.ones_like(slot_experts))  # no host sync
        return clean_logits, probs, experts, weights

    def select(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Steps 3-5 on logits (rows, N): (probs (rows, N), experts (rows, k), gates (rows, k))."""
        return select_experts(logits, self.score, self.top_k, self.balance_bias)

    @torch.no_grad()
    def update_balance_bias(self, slots: Tensor) -> None:
        """The auxiliary-loss-free update (Wang et al. 2024, arXiv 2408.15664, Algorithm 1), then a fresh count.

        ``b_i += γ · sign(mean_j slots_j − slots_i)``: an expert that got more than its
        share of the step's slots becomes less likely to be chosen, one with less more
        likely (equal loads: no change). ``slots`` (N,): routed slots per expert over the
        whole optimizer step: every micro-batch, and every rank under DDP (so every rank
        moves its bias the same way). Slots that capacity dropped count: the bias steers
        the router's choices.
        """
        slots = slots.to(self.balance_bias.device, torch.float64)
        self.balance_bias += self.bias_update_rate * torch.sign(slots.mean() - slots).to(self.balance_bias.dtype)
        self.step_slots.zero_()
