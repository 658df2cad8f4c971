"""The sparse Mixture-of-Experts feed-forward.

A noisy top-k router (Shazeer et al. 2017) picks ``top_k`` of ``n_experts`` routed
experts per token; always-on common experts see every token. Token–expert pairs are
sorted by expert so each expert runs one matmul over a contiguous slice, and the
results are scattered back with ``index_add_`` (no boolean mask over all tokens per
expert). The load-balancing loss and router z-loss are returned separately so the
model can weight and log them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


def expert_load(expert_indices: Tensor, n_experts: int) -> Tensor:
    """Share of routed token slots each expert receives, shape (n_experts,), summing to 1.

    expert_indices: chosen expert ids of any shape (tokens × top_k slots).
    """
    slots = torch.bincount(expert_indices.reshape(-1), minlength=n_experts).float()
    return slots / max(expert_indices.numel(), 1)


def load_balancing_loss(router_probs: Tensor, expert_indices: Tensor, n_experts: int) -> Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4), top-k form as in Mixtral.

    ``N * sum_i f_i * P_i`` where ``f_i`` is the share of routed token slots that go to
    expert ``i`` and ``P_i`` the mean router probability of expert ``i``. It equals 1
    for perfectly uniform routing and ``N`` when every token goes to one expert; only
    ``P`` carries gradient.

    router_probs: (tokens, N) softmax of the router logits; expert_indices: (tokens, k).
    """
    fraction = expert_load(expert_indices, n_experts).to(router_probs.dtype)
    mean_prob = router_probs.mean(dim=0)
    return n_experts * torch.sum(fraction * mean_prob)


def router_z_loss(router_logits: Tensor) -> Tensor:
    """Router z-loss (Zoph et al. 2022, ST-MoE eq. 5): mean over tokens of logsumexp(logits)^2."""
    logits = router_logits.to(torch.promote_types(router_logits.dtype, torch.float32))
    return torch.logsumexp(logits, dim=-1).square().mean()


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


@dataclass
class MoEOutput:
    y: Tensor
    aux_loss: Tensor
    z_loss: Tensor
    routing: RoutingRecord | None = None


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear. Also ``n`` always-on experts of width ``h`` fused as one of width ``n*h``

    (the sum of n such experts is exactly one wide FFN with a single output bias).
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Experts(nn.Module):
    """``n`` feed-forward experts with stacked weights: w1 (n, d, h), w2 (n, h, d)."""

    def __init__(self, n: int, n_embd: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n, n_embd, hidden))
        self.w2 = nn.Parameter(torch.empty(n, hidden, n_embd))
        self.b1 = nn.Parameter(torch.zeros(n, hidden)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(n, n_embd)) if bias else None
        # GPT-2's N(0, 0.02), so a layer used on its own is initialized too (Transformer re-initializes)
        nn.init.normal_(self.w1, std=0.02)
        nn.init.normal_(self.w2, std=0.02)

    def forward(self, x_sorted: Tensor, counts: list[int]) -> Tensor:
        """Run expert e on its contiguous slice of ``x_sorted`` (``counts[e]`` rows).

        Weights are cast once to the activations' dtype (bf16 under autocast).
        """
        dtype = x_sorted.dtype
        cast = [None if p is None else p.to(dtype) for p in (self.w1, self.b1, self.w2, self.b2)]
        return ExpertMLP.apply(x_sorted, *cast, tuple(counts))


class ExpertMLP(torch.autograd.Function):
    """GELU MLPs over contiguous row slices, one per expert, with a hand-written backward.

    Autograd through per-expert slices of stacked weights would build every weight
    gradient from slices (a zero-filled or stacked full-size copy per layer); here each
    expert's gradient is written in place into one (n, ·, ·) tensor. Two kernels compute
    the same thing: a loop of one matmul per expert, or ``torch.nn.functional.grouped_mm``
    (one call for all experts; see :func:`use_grouped_mm`).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, counts):
        grouped = use_grouped_mm(x)
        with torch.autocast(x.device.type, enabled=False):
            try:
                pre, act, out = (_grouped_forward if grouped else _loop_forward)(x, w1, b1, w2, b2, counts)
            except RuntimeError as err:
                if not grouped or GROUPED_MM is not None:
                    raise
                # automatic choice only: a GPU or shape grouped_mm refuses (its kernels have layout
                # limits that differ by GPU) falls back to the loop for the rest of the process
                _GROUPED_REFUSED.add(x.device.type)
                warnings.warn(f"grouped_mm refused ({err}); using one matmul per expert instead", stacklevel=2)
                grouped = False
                pre, act, out = _loop_forward(x, w1, b1, w2, b2, counts)
        ctx.save_for_backward(x, w1, w2, pre, act)
        ctx.counts, ctx.has_bias, ctx.grouped = counts, (b1 is not None, b2 is not None), grouped
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w1, w2, pre, act = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            backward = _grouped_backward if ctx.grouped else _loop_backward
            grads = backward(grad_out.contiguous(), x, w1, w2, pre, act, ctx.counts, ctx.has_bias)
        return (*grads, None)


# Which kernel ExpertMLP uses: None = automatic (grouped_mm on CUDA in bf16), True / False to force.
GROUPED_MM: bool | None = None


_GROUPED_REFUSED: set[str] = set()


def use_grouped_mm(x: Tensor) -> bool:
    if GROUPED_MM is not None:
        return GROUPED_MM
    return x.is_cuda and x.dtype == torch.bfloat16 and hasattr(F, "grouped_mm") and "cuda" not in _GROUPED_REFUSED


def _loop_forward(x, w1, b1, w2, b2, counts):
    pre = x.new_empty(x.shape[0], w1.shape[-1])
    act = torch.empty_like(pre)
    out = x.new_empty(x.shape[0], w2.shape[-1])
    for e, rows in _slices(counts):
        if b1 is None:
            torch.mm(x[rows], w1[e], out=pre[rows])
        else:
            torch.addmm(b1[e], x[rows], w1[e], out=pre[rows])
        act[rows] = F.gelu(pre[rows])
        if b2 is None:
            torch.mm(act[rows], w2[e], out=out[rows])
        else:
            torch.addmm(b2[e], act[rows], w2[e], out=out[rows])
    return pre, act, out


def _loop_backward(grad_out, x, w1, w2, pre, act, counts, has_bias):
    grad_x = torch.empty_like(x)
    grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
    grad_b1 = x.new_zeros(w1.shape[0], w1.shape[-1]) if has_bias[0] else None
    grad_b2 = x.new_zeros(w2.shape[0], w2.shape[-1]) if has_bias[1] else None
    for e, rows in _slices(counts):
        g = grad_out[rows]
        torch.mm(act[rows].t(), g, out=grad_w2[e])
        g_pre = torch.ops.aten.gelu_backward(g @ w2[e].t(), pre[rows])
        torch.mm(x[rows].t(), g_pre, out=grad_w1[e])
        torch.mm(g_pre, w1[e].t(), out=grad_x[rows])
        if grad_b2 is not None:
            torch.sum(g, 0, out=grad_b2[e])
        if grad_b1 is not None:
            torch.sum(g_pre, 0, out=grad_b1[e])
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def _group_layout(counts, device):
    """grouped_mm's offsets (the end row of each expert) and each row's expert."""
    sizes = torch.tensor(counts, device=device)
    offsets = sizes.cumsum(0).to(torch.int32)
    return offsets, torch.repeat_interleave(torch.arange(len(counts), device=device), sizes)


def _pad_rows(t: Tensor, multiple: int = 8) -> Tensor:
    """Zero rows appended up to a multiple of 8, so a transposed copy has 16-byte-aligned strides
    (grouped_mm needs them; rows past the last offset are ignored)."""
    extra = -t.shape[0] % multiple
    return F.pad(t, (0, 0, 0, extra)) if extra else t


def _transposed_rows(t: Tensor) -> Tensor:
    return _pad_rows(t).t().contiguous()


def _grouped_forward(x, w1, b1, w2, b2, counts):
    offsets, row_expert = _group_layout(counts, x.device)
    pre = F.grouped_mm(x, w1, offs=offsets)
    if b1 is not None:
        pre += b1[row_expert]
    act = F.gelu(pre)
    out = F.grouped_mm(act, w2, offs=offsets)
    if b2 is not None:
        out += b2[row_expert]
    return pre, act, out


def _grouped_backward(grad_out, x, w1, w2, pre, act, counts, has_bias):
    offsets, row_expert = _group_layout(counts, x.device)
    g_pre = torch.ops.aten.gelu_backward(F.grouped_mm(grad_out, w2.transpose(1, 2).contiguous(), offs=offsets), pre)
    # weight gradients: (n, ·, ·) from row-partitioned 2D operands; zeros for an expert without rows
    grad_w2 = F.grouped_mm(_transposed_rows(act), _pad_rows(grad_out), offs=offsets)
    grad_w1 = F.grouped_mm(_transposed_rows(x), _pad_rows(g_pre), offs=offsets)
    grad_x = F.grouped_mm(g_pre, w1.transpose(1, 2).contiguous(), offs=offsets)
    grad_b1 = x.new_zeros(w1.shape[0], w1.shape[-1]).index_add_(0, row_expert, g_pre) if has_bias[0] else None
    grad_b2 = x.new_zeros(w2.shape[0], w2.shape[-1]).index_add_(0, row_expert, grad_out) if has_bias[1] else None
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def _slices(counts: tuple[int, ...]):
    """(expert, row slice) for every expert with at least one row."""
    start = 0
    for e, count in enumerate(counts):
        if count:
            yield e, slice(start, start + count)
        start += count


class MoE(nn.Module):
    """Sparse MoE feed-forward: routed experts (top-k of n) plus always-on common experts.

    With ``n_experts=0`` it is the dense feed-forward (common experts only).
    Gate weights are the router's softmax probabilities of the chosen experts,
    renormalized to sum to 1 when top_k > 1 (Mixtral); with top_k = 1 the raw
    probability is kept (Switch) so the router still gets a gradient from the output.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts = config.n_experts
        self.top_k = config.top_k
        self.expert_hidden = config.expert_hidden
        self.capacity_factor = config.capacity_factor
        self.common = (
            FeedForward(config.n_embd, config.n_common_experts * config.expert_hidden, config.bias)
            if config.n_common_experts
            else None
        )
        if config.is_moe:
            self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)
            self.noise = nn.Linear(config.n_embd, config.n_experts, bias=False) if config.router_noise else None
            self.experts = Experts(config.n_experts, config.n_embd, config.expert_hidden, config.bias)

    def capacity(self, n_tokens: int) -> int | None:
        """Token slots each expert may take (None: dropless)."""
        if self.capacity_factor is None:
            return None
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def forward(self, x: Tensor, record_routing: bool = False, losses: bool = True) -> MoEOutput:
        """``losses=False`` skips the auxiliary losses (returned as 0), e.g. when decoding."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        y = self.common(flat) if self.common is not None else None
        zero = flat.new_zeros((), dtype=torch.promote_types(flat.dtype, torch.float32))
        if not self.n_experts:
            return MoEOutput(y.reshape(shape), zero, zero)

        clean_logits = self.gate(flat)
        logits = clean_logits
        if self.noise is not None and self.training:
            logits = clean_logits + torch.randn_like(clean_logits) * F.softplus(self.noise(flat))
        # router math in at least float32, also under bf16 autocast
        probs = torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        if flat.shape[0] == 1 and self.capacity_factor is None and not self.training:  # decoding: no sort
            routed, dropped = (
                self._single_token(flat, experts[0].tolist(), weights[0]),
                torch.zeros_like(experts, dtype=torch.bool),
            )
        else:
            routed, dropped = self._dispatch(flat, experts, weights)
        y = routed if y is None else y + routed.to(y.dtype)

        routing = None
        if record_routing:
            lead = shape[:-1]
            routing = RoutingRecord(
                experts=experts.reshape(*lead, -1).detach(),
                weights=weights.reshape(*lead, -1).detach(),
                probs=probs.reshape(*lead, -1).detach(),
                dropped=dropped.reshape(*lead, -1),
            )
        if not losses:
            return MoEOutput(y.reshape(shape), zero, zero, routing)
        return MoEOutput(
            y.reshape(shape),
            load_balancing_loss(probs, experts, self.n_experts),
            router_z_loss(clean_logits),
            routing,
        )

    def _single_token(self, row: Tensor, experts: list[int], weights: Tensor) -> Tensor:
        """The routed experts of one token (1, d), run directly by index."""
        ex = self.experts
        dtype = torch.get_autocast_dtype(row.device.type) if torch.is_autocast_enabled(row.device.type) else row.dtype
        out = None
        for e, gate in zip(experts, weights.to(dtype).unbind(0)):
            h = (
                row.to(dtype) @ ex.w1[e].to(dtype)
                if ex.b1 is None
                else torch.addmm(ex.b1[e].to(dtype), row.to(dtype), ex.w1[e].to(dtype))
            )
            h = F.gelu(h)
            y = h @ ex.w2[e].to(dtype) if ex.b2 is None else torch.addmm(ex.b2[e].to(dtype), h, ex.w2[e].to(dtype))
            out = y * gate if out is None else out + y * gate
        return out

    def _dispatch(self, flat: Tensor, experts: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Sort token slots by expert, run each expert once, scatter-add the weighted results."""
        k = experts.shape[-1]
        slot_expert = experts.reshape(-1)
        order = torch.argsort(slot_expert, stable=True)  # stable: earlier tokens first (capacity priority)
        counts = torch.bincount(slot_expert, minlength=self.n_experts)
        dropped = torch.zeros_like(slot_expert, dtype=torch.bool)

        capacity = self.capacity(flat.shape[0])
        if capacity is not None:
            sorted_expert = slot_expert[order]
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(order.numel(), device=order.device) - starts[sorted_expert]
            keep = rank < capacity
            dropped[order[~keep]] = True
            order = order[keep]
            counts = counts.clamp(max=capacity)

        token = order // k
        x_sorted = flat.index_select(0, token)
        if torch.is_autocast_enabled(flat.device.type):  # keep activations in the autocast dtype through the experts
            x_sorted = x_sorted.to(torch.get_autocast_dtype(flat.device.type))
        out_sorted = self.experts(x_sorted, counts.tolist())
        out_sorted = out_sorted * weights.reshape(-1)[order].unsqueeze(-1).to(out_sorted.dtype)
        routed = out_sorted.new_zeros(flat.shape)
        routed.index_add_(0, token, out_sorted)
        return routed, dropped.reshape(experts.shape)
