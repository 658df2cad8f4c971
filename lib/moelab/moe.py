"""The sparse Mixture-of-Experts feed-forward, read top to bottom.

For every token x (a row of the (B, T, d) input), :class:`MoE` does, in order:

1. router: ``logits = x W_g`` over the ``n_experts`` routed experts;
2. noise (training only, noisy top-k of Shazeer et al. 2017): add
   ``randn · softplus(x W_noise)`` to the logits;
3. ``probs = softmax(logits)`` and the ``top_k`` most probable experts;
4. gates: the chosen probabilities, renormalized to sum to 1 when top_k > 1 (Mixtral);
   with top_k = 1 the raw probability is kept (Switch), so the router still gets a
   gradient from the output;
5. capacity (optional, ``capacity_factor``): drop the slots an expert has no room for
   (:func:`capacity_keep`);
6. dispatch: sort the token slots by expert, so expert e sees one contiguous block;
7. experts: one call runs every expert on its block (:mod:`moelab.experts`);
8. combine: scale each result by its gate and add it back to its token (``index_add_``);

plus the always-on common experts, which see every token. ``MoE.forward`` returns the
output and a :class:`RouterOutput`; the auxiliary losses are computed from the router
outputs of all layers in one place, :func:`moe_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .experts import Experts, mlp


@dataclass
class RouterOutput:
    """What one MoE layer's router computed, shaped (B, T, ·); not detached (the losses need the graph).

    logits: clean router logits (N) before noise; probs: softmax of the (noisy, in
    training) logits (N); experts: chosen expert ids, best first (k); weights: their gate
    weights (k); dropped: True where capacity dropped the slot (k), None when dropless.
    """

    logits: Tensor
    probs: Tensor
    experts: Tensor
    weights: Tensor
    dropped: Tensor | None

    def record(self) -> "RoutingRecord":
        dropped = self.dropped if self.dropped is not None else torch.zeros_like(self.experts, dtype=torch.bool)
        return RoutingRecord(self.experts.detach(), self.weights.detach(), self.probs.detach(), dropped)


@dataclass
class RoutingRecord:
    """What one MoE layer's router did for a batch (tensors are detached).

    experts: (B, T, k) chosen expert ids, best first; weights: (B, T, k) their gate
    weights; probs: (B, T, N) router softmax over all experts; dropped: (B, T, k)
    True where a capacity limit dropped that token slot.
    """

    experts: Tensor
    weights: Tensor
    probs: Tensor
    dropped: Tensor


class FeedForward(nn.Module):
    """Linear -> activation -> Linear. Also ``n`` always-on experts of width ``h`` fused as one of width ``n*h``

    (the sum of n such experts is exactly one wide FFN with a single output bias).
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool, activation: str = "gelu") -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.activation = activation

    def residual_projections(self) -> list[Tensor]:
        return [self.proj.weight]

    def forward(self, x: Tensor) -> Tensor:
        return mlp(x, self.fc.weight.t(), self.fc.bias, self.proj.weight.t(), self.proj.bias, self.activation)


class MoE(nn.Module):
    """Sparse MoE feed-forward: routed experts (top-k of n) plus always-on common experts.

    With ``n_experts=0`` it is the dense feed-forward (common experts only). ``kernel``
    picks how the routed experts are computed (see :mod:`moelab.experts`).
    """

    def __init__(self, config: ModelConfig, kernel: str = "auto") -> None:
        super().__init__()
        self.n_experts = config.n_experts
        self.top_k = config.top_k
        self.expert_hidden = config.expert_hidden
        self.capacity_factor = config.capacity_factor
        self.common = (
            FeedForward(config.n_embd, config.n_common_experts * config.expert_hidden, config.bias, config.activation)
            if config.n_common_experts
            else None
        )
        if config.is_moe:
            self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)
            self.noise = nn.Linear(config.n_embd, config.n_experts, bias=False) if config.router_noise else None
            self.experts = Experts(
                config.n_experts, config.n_embd, config.expert_hidden, config.bias, kernel, config.activation
            )

    def undecayed_weights(self) -> list[Tensor]:
        """Matrices the optimizer must not decay: the router-noise weights.

        Decay pulls weights toward 0, i.e. the noise std toward softplus(0) ≈ 0.69, a large
        fixed noise, rather than letting the router learn how much noise it wants.
        """
        return [self.noise.weight] if self.n_experts and self.noise is not None else []

    def forward(
        self, x: Tensor, *, start: int = 0, expert_counts: Tensor | None = None
    ) -> tuple[Tensor, RouterOutput | None]:
        """x (B, T, d) -> (y (B, T, d), router output; None for the dense model).

        ``start``: position of x[:, 0] in its sequence; ``expert_counts`` (B, N): slots of
        positions before ``start`` per expert, updated in place (both for capacity with a
        KV cache: see :func:`capacity_keep`).
        """
        B, T, d = x.shape
        flat = x.reshape(-1, d)
        y = self.common(flat) if self.common is not None else None
        if not self.n_experts:
            return y.reshape(x.shape), None

        clean_logits = self.gate(flat)  # 1. router
        logits = clean_logits
        if self.noise is not None and self.training:  # 2. noise
            logits = clean_logits + torch.randn_like(clean_logits) * F.softplus(self.noise(flat))
        # 3. softmax and top-k, in at least float32 (also under bf16 autocast)
        probs = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:  # 4. gates
            weights = weights / weights.sum(dim=-1, keepdim=True)
        keep = None  # 5. capacity
        if self.capacity_factor is not None:
            keep = capacity_keep(experts.view(B, T, -1), self.capacity_factor, self.n_experts, start, expert_counts)
            keep = keep.reshape(experts.shape)

        if flat.shape[0] == 1 and not self.training:  # decoding one token: no sort
            chosen = experts[0] if keep is None else experts[0][keep[0]]
            gates = weights[0] if keep is None else weights[0][keep[0]]
            routed = self.experts.one_token(flat, chosen.tolist(), gates)
        else:  # 6.-8.
            routed = self.dispatch_and_combine(flat, experts, weights, keep)
        y = routed if y is None else y + routed.to(y.dtype)

        router = RouterOutput(
            clean_logits.view(B, T, -1),
            probs.view(B, T, -1),
            experts.view(B, T, -1),
            weights.view(B, T, -1),
            None if keep is None else ~keep.view(B, T, -1),
        )
        return y.reshape(x.shape), router

    def dispatch_and_combine(self, flat: Tensor, experts: Tensor, weights: Tensor, keep: Tensor | None) -> Tensor:
        """Sort token slots by expert, run each expert once on its block, scatter-add the gated results."""
        k = experts.shape[-1]
        slot_expert = experts.reshape(-1)
        order = torch.argsort(slot_expert, stable=True)  # 6. dispatch (stable: token order within an expert)
        if keep is None:
            counts = torch.bincount(slot_expert, minlength=self.n_experts)
        else:
            order = order[keep.reshape(-1)[order]]
            counts = torch.bincount(slot_expert[order], minlength=self.n_experts)
        token = order // k
        x_sorted = flat.index_select(0, token)
        if torch.is_autocast_enabled(flat.device.type):  # keep activations in the autocast dtype through the experts
            x_sorted = x_sorted.to(torch.get_autocast_dtype(flat.device.type))
        out_sorted = self.experts(x_sorted, counts.tolist())  # 7. experts
        out_sorted = out_sorted * weights.reshape(-1)[order].unsqueeze(-1).to(out_sorted.dtype)  # 8. combine
        routed = out_sorted.new_zeros(flat.shape)
        routed.index_add_(0, token, out_sorted)
        return routed


def capacity_keep(
    experts: Tensor, capacity_factor: float, n_experts: int, start: int = 0, expert_counts: Tensor | None = None
) -> Tensor:
    """Which token slots fit their expert's capacity: (B, T, k) bool, True = kept.

    Capacity is per sequence and grows with the position: at position t (0-based, from
    the start of the sequence) an expert may hold ``C(t) = ceil(capacity_factor · (t+1) ·
    k / N)`` of the sequence's slots, i.e. its fair share of the slots so far. A slot at
    position t is kept iff fewer than C(t) slots of *earlier positions of the same
    sequence* chose the same expert (dropped ones count too, as in GShard / Switch: an
    expert's buffer position is its count of requests). So when an expert is
    oversubscribed, the **later** tokens are dropped first: a token's fate depends only on
    its own sequence's tokens up to itself, never on later positions or on other rows of
    the batch. That keeps the model causal (cached decoding = recomputation) and makes
    evaluation independent of the batch size. (A token never picks one expert twice, so
    the slots of the same token do not compete.)

    experts (B, T, k) chosen ids; ``start``: position of experts[:, 0]; ``expert_counts``
    (B, N): slots per expert chosen at positions before ``start`` (a KV cache carries it),
    updated in place with this chunk's choices.
    """
    B, T, k = experts.shape
    chosen = F.one_hot(experts, n_experts).sum(dim=2)  # (B, T, N): 0 or 1 per expert
    before = chosen.cumsum(dim=1) - chosen  # slots of earlier positions of this chunk
    if expert_counts is not None:
        before = before + expert_counts.unsqueeze(1)
        expert_counts += chosen.sum(dim=1)
    position = torch.arange(start + 1, start + T + 1, device=experts.device, dtype=torch.float64)
    capacity = torch.ceil(position * capacity_factor * k / n_experts).to(before.dtype)  # C(t), (T,)
    rank = before.gather(2, experts)  # (B, T, k)
    return rank < capacity.view(1, T, 1)


# ---------------------------------------------------------------------------- losses


def expert_load(expert_indices: Tensor, n_experts: int) -> Tensor:
    """Share of routed token slots each expert receives, shape (n_experts,), summing to 1.

    expert_indices: chosen expert ids of any shape (tokens × top_k slots).
    """
    slots = torch.bincount(expert_indices.reshape(-1), minlength=n_experts).float()
    return slots / max(expert_indices.numel(), 1)


def load_balancing_loss(router_probs: Tensor, expert_indices: Tensor, n_experts: int) -> Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4), top-k form as in Mixtral.

    ``L = N · Σ_i f_i · P_i`` where ``f_i`` is the share of routed token *slots* (tokens ×
    top_k) that go to expert i (so Σ f_i = 1) and ``P_i`` the mean router probability of
    expert i. Only P carries gradient.

    Normalization: with k = top_k, this equals Hugging Face Mixtral's
    ``load_balancing_loss_func`` divided by k (HF divides the slot counts by the number
    of tokens, so its Σ f_i = k), and the model averages it over layers
    (:func:`moe_losses`) where HF pools the tokens of all layers. Uniform routing gives 1;
    full collapse (every token's k slots on the same k experts, all probability on one)
    gives N / k (N for top_k = 1).

    router_probs: (..., N) softmax of the router logits; expert_indices: (..., k).
    """
    fraction = expert_load(expert_indices, n_experts).to(router_probs.dtype)
    mean_prob = router_probs.reshape(-1, n_experts).mean(dim=0)
    return n_experts * torch.sum(fraction * mean_prob)


def router_z_loss(router_logits: Tensor) -> Tensor:
    """Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): mean over tokens of logsumexp(logits)^2."""
    logits = router_logits.reshape(-1, router_logits.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(logits, dim=-1).square().mean()


def moe_losses(routers: list[RouterOutput | None], n_experts: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The auxiliary load-balancing loss and the router z-loss, each averaged over MoE layers.

    ``routers``: one router output per layer (None for a dense layer: both losses 0 there);
    ``like``: a tensor of the activations' device and dtype (for the zeros of a dense model).
    """
    zero = like.new_zeros((), dtype=torch.promote_types(like.dtype, torch.float32))
    aux = [zero if r is None else load_balancing_loss(r.probs, r.experts, n_experts) for r in routers]
    z = [zero if r is None else router_z_loss(r.logits) for r in routers]
    return torch.stack(aux).mean(), torch.stack(z).mean()
