"""The sparse Mixture-of-Experts feed-forward, read top to bottom.

For every token x (a row of the (B, T, d) input), :class:`MoE` does, in order:

1. router: ``logits = x W_g`` over the N routed experts (N = ``n_experts`` ·
   ``expert_granularity``: fine-grained experts, DeepSeekMoE arXiv 2401.06066, are just
   more, narrower experts here);
2. noise (training only, noisy top-k of Shazeer et al. 2017): add
   ``randn · softplus(x W_noise)`` to the logits;
3. scores, in at least float32: ``softmax(logits)`` over the N experts (``gate="softmax"``,
   Mixtral) or ``sigmoid(logits)`` of each (``gate="sigmoid"``, DeepSeek-V3 arXiv 2412.19437);
4. choice: the k highest scores (k = ``top_k`` · ``expert_granularity``). With
   ``balance="bias"`` (auxiliary-loss-free balancing, Wang et al. 2024, arXiv 2408.15664)
   a per-expert bias is added to the scores for this choice only, and in training the
   layer counts the slots each expert got, for the bias update after the optimizer step
   (:meth:`MoE.update_balance_bias`);
5. gates: the chosen *raw* scores (never the bias), renormalized to sum to 1 when k > 1
   (Mixtral; DeepSeek-V3's sigmoid gate); with k = 1 the raw score is kept (Switch), so
   the router still gets a gradient from the output (a renormalized single gate is 1);
6. capacity (optional, ``capacity_factor``): drop the slots an expert has no room for
   (:func:`capacity_keep`);
7. dispatch: sort the token slots by expert, so expert e sees one contiguous block;
8. experts: one call runs every expert on its block (:mod:`moelab.nn.moe.experts`);
9. combine: scale each result by its gate and add it back to its token (``index_add_``);

plus the always-on common experts, which see every token. ``MoE.forward`` returns the
output and a :class:`RouterOutput`; the auxiliary losses are computed from the router
outputs of all layers in one place, :func:`moe_losses` (the load-balancing loss enters
the training loss only with ``balance="aux_loss"``), and the balance of a layer is
measured the same way for every choice by :func:`load_imbalance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.nn.aligned import Linear
from moelab.config.model import ModelConfig
from moelab.nn.moe.experts import ACTIVATIONS, Experts


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

    def record(self) -> "RoutingRecord":
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


class FeedForward(nn.Module):
    """Linear -> activation -> Linear. Also ``n`` always-on experts of width ``h`` fused as one of width ``n*h``

    (the sum of n such experts is exactly one wide FFN with a single output bias).
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool, activation: str = "gelu") -> None:
        super().__init__()
        self.fc = Linear(n_embd, hidden, bias=bias)
        self.proj = Linear(hidden, n_embd, bias=bias)
        self.activation = activation

    def residual_projections(self) -> list[Tensor]:
        return [self.proj.weight]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(ACTIVATIONS[self.activation][0](self.fc(x)))


class MoE(nn.Module):
    """Sparse MoE feed-forward: routed experts (top-k of n) plus always-on common experts.

    With ``n_experts=0`` it is the dense feed-forward (common experts only). ``kernel``
    picks how the routed experts are computed (see :mod:`moelab.nn.moe.experts`). ``n_experts``,
    ``top_k``: the routed experts and the choices per token as the router sees them
    (fine-grained experts included); ``expert_hidden``: the width of one common expert.
    """

    def __init__(self, config: ModelConfig, kernel: str = "auto") -> None:
        super().__init__()
        self.n_experts = config.routed_experts
        self.top_k = config.routed_top_k
        self.expert_hidden = config.expert_hidden
        self.capacity_factor = config.capacity_factor
        self.score = config.gate  # "softmax" or "sigmoid"
        self.common = (
            FeedForward(config.n_embd, config.n_common_experts * config.expert_hidden, config.bias, config.activation)
            if config.n_common_experts
            else None
        )
        if config.is_moe:
            self.gate = Linear(config.n_embd, self.n_experts, bias=False)
            self.noise = Linear(config.n_embd, self.n_experts, bias=False) if config.router_noise else None
            self.experts = Experts(
                self.n_experts, config.n_embd, config.routed_hidden, config.bias, kernel, config.activation
            )
        # balance="bias": the selection bias is state (saved in checkpoints, restored on resume);
        # the slot counts of the current optimizer step are not (they are 0 after every step)
        with_bias = config.is_moe and config.balance == "bias"
        self.bias_update_rate = config.bias_update_rate
        self.register_buffer("balance_bias", torch.zeros(self.n_experts) if with_bias else None)
        self.register_buffer("step_slots", torch.zeros(self.n_experts, dtype=torch.long) if with_bias else None,
                             persistent=False)  # fmt: skip

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
        wide = torch.promote_types(logits.dtype, torch.float32)  # 3. scores (also under bf16 autocast)
        if self.score == "softmax":
            scores = probs = torch.softmax(logits, dim=-1, dtype=wide)
        else:
            scores = torch.sigmoid(logits.to(wide))
            probs = scores / scores.sum(dim=-1, keepdim=True)
        selection = scores if self.balance_bias is None else scores + self.balance_bias  # 4. choice
        experts = selection.topk(self.top_k, dim=-1).indices
        if self.step_slots is not None and self.training:  # this step's load, for the bias update
            slot_experts = experts.reshape(-1)
            self.step_slots.index_add_(0, slot_experts, torch.ones_like(slot_experts))  # no host sync
        weights = scores.gather(-1, experts)  # 5. gates: the raw scores
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        keep = None  # 6. capacity
        if self.capacity_factor is not None:
            keep = capacity_keep(experts.view(B, T, -1), self.capacity_factor, self.n_experts, start, expert_counts)
            keep = keep.reshape(experts.shape)

        if flat.shape[0] == 1 and not self.training:  # decoding one token: no sort
            chosen = experts[0] if keep is None else experts[0][keep[0]]
            gates = weights[0] if keep is None else weights[0][keep[0]]
            routed = self.experts.one_token(flat, chosen.tolist(), gates)
        else:  # 7.-9.
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

    def dispatch_and_combine(self, flat: Tensor, experts: Tensor, weights: Tensor, keep: Tensor | None) -> Tensor:
        """Sort token slots by expert, run each expert once on its block, scatter-add the gated results."""
        k = experts.shape[-1]
        slot_expert = experts.reshape(-1)
        order = torch.argsort(slot_expert, stable=True)  # 7. dispatch (stable: token order within an expert)
        if keep is not None:  # capacity: the kept slots only (their number is read on the host)
            order = order[keep.reshape(-1)[order]]
        counts = slot_counts(slot_expert if keep is None else slot_expert[order], self.n_experts)
        token = order // k
        x_sorted = flat.index_select(0, token)
        if torch.is_autocast_enabled(flat.device.type):  # keep activations in the autocast dtype through the experts
            x_sorted = x_sorted.to(torch.get_autocast_dtype(flat.device.type))
        out_sorted = self.experts(x_sorted, counts)  # 8. experts
        out_sorted = out_sorted * weights.reshape(-1)[order].unsqueeze(-1).to(out_sorted.dtype)  # 9. combine
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


# ---------------------------------------------------------------------------- load and losses


def slot_counts(expert_indices: Tensor, n_experts: int) -> Tensor:
    """Slots per expert, (n_experts,) int64, of chosen expert ids of any shape.

    A scatter-add into a fixed-size tensor: unlike ``torch.bincount``, which reads the largest
    id back to the host on CUDA, it never stops the GPU's queue.
    """
    ids = expert_indices.reshape(-1)
    return torch.zeros(n_experts, dtype=torch.long, device=ids.device).index_add_(0, ids, torch.ones_like(ids))


def expert_load(expert_indices: Tensor, n_experts: int) -> Tensor:
    """Share of routed token slots each expert receives, shape (n_experts,), summing to 1.

    expert_indices: chosen expert ids of any shape (tokens × top_k slots).
    """
    slots = slot_counts(expert_indices, n_experts).float()
    return slots / max(expert_indices.numel(), 1)


def load_imbalance(load: Tensor) -> tuple[Tensor, Tensor]:
    """How unevenly a layer's load is spread: (load CV, MaxVio), each of shape ``load.shape[:-1]``.

    load (..., N): per-expert load, as slot counts or shares (both measures are scale-free).
    CV = std / mean (the population std over the N experts); MaxVio = (max_i load_i − mean)
    / mean (Wang et al. 2024, arXiv 2408.15664). Both are 0 for a perfectly balanced layer;
    with all load on one of N experts, CV = sqrt(N − 1) and MaxVio = N − 1.
    """
    load = load.double()
    mean = load.mean(dim=-1)
    return load.std(dim=-1, correction=0) / mean, (load.amax(dim=-1) - mean) / mean


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

    router_probs: (..., N) the router's distribution over experts (:class:`RouterOutput`
    ``probs``: the softmax, or the normalized sigmoid scores as in DeepSeek-V3's
    sequence-wise balance loss); expert_indices: (..., k).
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

    Both are computed for every gate and balance choice (the load-balancing loss is then
    a comparable balance measure); the model adds the load-balancing loss to its training
    loss only with ``balance="aux_loss"`` (``ModelConfig.aux_loss_weight``). The z-loss
    acts on the raw logits, before softmax or sigmoid.

    ``routers``: one router output per layer (None for a dense layer: both losses 0 there);
    ``like``: a tensor of the activations' device and dtype (for the zeros of a dense model).
    """
    zero = like.new_zeros((), dtype=torch.promote_types(like.dtype, torch.float32))
    aux = [zero if r is None else load_balancing_loss(r.probs, r.experts, n_experts) for r in routers]
    z = [zero if r is None else router_z_loss(r.logits) for r in routers]
    return torch.stack(aux).mean(), torch.stack(z).mean()
