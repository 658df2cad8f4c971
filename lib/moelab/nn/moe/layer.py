"""The sparse Mixture-of-Experts feed-forward, read top to bottom.

For every token x (a row of the (B, T, d) input), :class:`MoE` does, in order (steps 1-5
are its :class:`~moelab.nn.moe.router.Router`'s):

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
   (:meth:`Router.update_balance_bias <moelab.nn.moe.router.Router.update_balance_bias>`);
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
outputs of all layers in one place, :func:`moelab.nn.moe.losses.moe_losses` (the
load-balancing loss enters the training loss only with ``balance="aux_loss"``), and the
balance of a layer is measured the same way for every choice by
:func:`moelab.nn.moe.metrics.load_imbalance`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.nn.aligned import Linear
from moelab.config.model import ModelConfig
from moelab.nn.moe.activations import ACTIVATION_FUNCTIONS
from moelab.nn.moe.experts import Experts
from moelab.nn.moe.metrics import slot_counts
from moelab.nn.moe.router import Router, RouterOutput


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
        return self.proj(ACTIVATION_FUNCTIONS[self.activation][0](self.fc(x)))


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


class MoE(nn.Module):
    """Sparse MoE feed-forward: routed experts (top-k of n) plus always-on common experts.

    With ``n_experts=0`` it is the dense feed-forward (common experts only): no router, no
    routed experts. ``n_experts``, ``top_k``: the routed experts and the choices per token as the router sees them
    (fine-grained experts included); ``expert_hidden``: the width of one common expert.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts = config.routed_experts
        self.top_k = config.routed_top_k
        self.expert_hidden = config.expert_hidden
        self.capacity_factor = config.capacity_factor
        self.common = (
            FeedForward(config.n_embd, config.n_common_experts * config.expert_hidden, config.bias, config.activation)
            if config.n_common_experts
            else None
        )
        self.router = None
        if config.is_moe:
            self.router = Router(config)
            self.experts = Experts(
                self.n_experts, config.n_embd, config.routed_hidden, config.bias, activation=config.activation
            )
        # checkpoints of moelab before the Router module name its tensors moe.gate/noise/balance_bias
        self.register_load_state_dict_pre_hook(_rename_router_tensors)

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

        clean_logits, probs, experts, weights = self.router(flat)  # 1.-5. (moelab.nn.moe.router)
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

    def dispatch_and_combine(self, flat: Tensor, experts: Tensor, weights: Tensor, keep: Tensor | None) -> Tensor:
        """Sort token slots by expert, run each expert once on its block, scatter-add the gated results.

        Where the experts run grouped (CUDA in bf16) and nothing is dropped, the slots go straight
        into the grouped kernel's layout instead (:meth:`Experts.dispatch`): the same sum.
        """
        if torch.is_autocast_enabled(flat.device.type):  # keep activations in the autocast dtype through the experts
            flat = flat.to(torch.get_autocast_dtype(flat.device.type))
        if keep is None and self.experts.runs_grouped(flat):
            routed = self.experts.dispatch(flat, experts, weights)
            if routed is not None:
                return routed
        k = experts.shape[-1]
        slot_expert = experts.reshape(-1)
        order = torch.argsort(slot_expert, stable=True)  # 7. dispatch (stable: token order within an expert)
        if keep is not None:  # capacity: the kept slots only (their number is read on the host)
            order = order[keep.reshape(-1)[order]]
        counts = slot_counts(slot_expert if keep is None else slot_expert[order], self.n_experts)
        token = order // k
        x_sorted = flat.index_select(0, token)
        out_sorted = self.experts(x_sorted, counts)  # 8. experts
        out_sorted = out_sorted * weights.reshape(-1)[order].unsqueeze(-1).to(out_sorted.dtype)  # 9. combine
        routed = out_sorted.new_zeros(flat.shape)
        routed.index_add_(0, token, out_sorted)
        return routed


def _rename_router_tensors(module, state_dict, prefix, *args) -> None:
    """Load a checkpoint written before the router was its own module (moe.gate → moe.router.gate, …)."""
    for name in ("gate.weight", "noise.weight", "balance_bias"):
        if prefix + name in state_dict:
            state_dict[prefix + "router." + name] = state_dict.pop(prefix + name)
