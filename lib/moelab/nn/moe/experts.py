"""The routed experts and their fast kernels.

:class:`Experts` holds ``n`` MLPs with stacked weights, w1 (n, d, h) and w2 (n, h, d); their
nonlinearity is ``activation``, GELU or ReLU² (relu(x)², :data:`ACTIVATION_FUNCTIONS`).
The MoE layer (:mod:`moelab.nn.moe.layer`) sorts token slots by expert and calls
``experts(x_sorted, counts)`` once: expert ``e`` runs on its contiguous slice of
``counts[e]`` rows (``counts`` a tensor on the activations' device). Which kernel computes
that is the module's ``kernel`` attribute:

- ``"plain"``: autograd through one :func:`mlp` per expert (the readable reference);
- ``"loop"``: one matmul per expert into preallocated buffers, with a hand-written
  backward (:class:`ExpertMLP`) that writes each expert's weight gradient in place into
  one (n, ·, ·) tensor (autograd through slices of stacked weights would build a
  zero-filled full-size gradient per expert). In bf16 each expert's block of rows is
  padded with zero rows to a multiple of 64 (:data:`ROW_BUCKETS`, :func:`bucketed_loop`):
  the block sizes change every step, and on a CPU a bf16 matmul of a new shape sets up a
  new oneDNN kernel, while a handful of bucketed shapes recur (a training step of the
  ``cpu`` preset ran 1.4× faster in bf16 with them; fp32's BLAS has no such set-up and
  ran 0.9× with them, so fp32 blocks stay as they come). Zero rows change no output and add
  nothing to any gradient;
- ``"grouped"``: the same backward, but ``torch.nn.functional.grouped_mm`` runs all
  experts in one call. It reads ``counts`` on the device and its buffers have a size fixed
  by the number of rows, so a step never waits for the GPU to tell the host the counts
  (CUDA graphs can capture it, :mod:`moelab.train.cuda_graph`);
- ``"auto"`` (default): ``grouped`` on CUDA in bf16, else ``loop``. CUDA's grouped_mm
  wants 16-byte aligned blocks: the kernel pads each expert's rows and the widths d and h
  to multiples of 8 with zeros, which change nothing. If the GPU refuses
  grouped_mm (its kernels have layout limits that differ by GPU), this module warns and
  uses ``loop`` from then on.

Decoding one token skips the sort: :meth:`Experts.one_token` runs the token's k experts
by index. All paths compute the same function; tests check each against ``plain``.
"""

from __future__ import annotations

import itertools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.nn.moe.activations import ACTIVATION_FUNCTIONS, mlp
from moelab.nn.moe.grouped import (
    aligned_layout,
    dispatch_grouped,
    grouped_mlp,
    grouped_mlp_backward,
    grouped_mm_fits,
    pad_widths,
)

KERNELS = ("auto", "plain", "loop", "grouped")
# the loop kernel pads each expert's rows to a multiple of this, by the activations' dtype (1: no padding)
ROW_BUCKETS = {torch.bfloat16: 64, torch.float16: 64, torch.float32: 1, torch.float64: 1}


class Experts(nn.Module):
    """``n`` feed-forward experts with stacked weights: w1 (n, d, h), w2 (n, h, d), b1 (n, h), b2 (n, d)."""

    stacked_dims = 1  # every parameter has a leading expert dimension (the init, decay and Muon rules read this)

    def __init__(
        self, n: int, n_embd: int, hidden: int, bias: bool, kernel: str = "auto", activation: str = "gelu"
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if activation not in ACTIVATION_FUNCTIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATION_FUNCTIONS)}, got {activation!r}")
        self.kernel = kernel
        self.activation = activation
        self.row_bucket: int | None = None  # None: ROW_BUCKETS by dtype; an int: that bucket in every dtype
        self.w1 = nn.Parameter(torch.empty(n, n_embd, hidden))
        self.w2 = nn.Parameter(torch.empty(n, hidden, n_embd))
        self.b1 = nn.Parameter(torch.zeros(n, hidden)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(n, n_embd)) if bias else None
        # GPT-2's N(0, 0.02), so a layer used on its own is initialized too (Transformer re-initializes)
        nn.init.normal_(self.w1, std=0.02)
        nn.init.normal_(self.w2, std=0.02)

    def residual_projections(self) -> list[Tensor]:
        """The weights that write into the residual stream (the init rule scales them down)."""
        return [self.w2]

    def forward(self, x_sorted: Tensor, counts: Tensor) -> Tensor:
        """Run expert e on its contiguous slice of ``x_sorted`` (``counts[e]`` rows; ``counts`` (n,) int).

        Weights are cast once to the activations' dtype (bf16 under autocast). The loop and
        plain kernels read ``counts`` on the host, the grouped kernel on the device.
        """
        weights = self._weights(x_sorted.dtype)
        if self.kernel == "plain":
            return plain_experts(x_sorted, *weights, counts.tolist(), self.activation)
        bucket = ROW_BUCKETS.get(x_sorted.dtype, 1) if self.row_bucket is None else self.row_bucket
        if self.runs_grouped(x_sorted):
            try:
                return ExpertMLP.apply(x_sorted, *weights, counts, True, self.activation)
            except RuntimeError as err:
                self._grouped_refused(err, x_sorted)
        return bucketed_loop(x_sorted, *weights, counts, bucket, self.activation)

    def runs_grouped(self, x: Tensor) -> bool:
        """Whether rows of ``x``'s dtype and device go through the grouped kernel."""
        return self.kernel == "grouped" or (self.kernel == "auto" and grouped_mm_fits(x))

    def dispatch(self, flat: Tensor, experts: Tensor, gates: Tensor) -> Tensor | None:
        """The MoE layer's steps 7-9 straight into the grouped layout (:func:`dispatch_grouped`):
        (T, d) rows, their experts and gates (T, k) -> the gate-weighted sum (T, d). None where
        grouped_mm refused (it warned; the layer then dispatches through :meth:`forward`)."""
        try:
            return dispatch_grouped(flat, experts, gates, self._weights(flat.dtype), self.activation)
        except RuntimeError as err:
            self._grouped_refused(err, flat)
            return None

    def _weights(self, dtype: torch.dtype) -> list:
        return [None if p is None else p.to(dtype) for p in (self.w1, self.b1, self.w2, self.b2)]

    def _grouped_refused(self, err: RuntimeError, x: Tensor) -> None:
        """Under ``auto``, a GPU whose grouped_mm refuses the layout: warn and use the loop from now
        on; anything else (an explicit kernel, CUDA graph capture, out of memory) is raised."""
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if self.kernel != "auto" or capturing or isinstance(err, torch.OutOfMemoryError):
            raise err
        warnings.warn(f"grouped_mm refused ({err}); using one matmul per expert instead", stacklevel=3)
        self.kernel = "loop"

    def one_token(self, row: Tensor, experts: list[int], gates: Tensor) -> Tensor:
        """The gate-weighted sum of the chosen experts on one token row (1, d), run by index (decoding)."""
        device = row.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else row.dtype
        b1, b2 = self.b1, self.b2
        out = None
        for e, gate in zip(experts, gates.to(dtype).unbind(0)):
            y = mlp(
                row.to(dtype),
                self.w1[e].to(dtype),
                None if b1 is None else b1[e].to(dtype),
                self.w2[e].to(dtype),
                None if b2 is None else b2[e].to(dtype),
                self.activation,
            )
            out = y * gate if out is None else out + y * gate
        return torch.zeros_like(row, dtype=dtype) if out is None else out  # None: capacity dropped every slot


def bucketed_loop(x, w1, b1, w2, b2, counts: Tensor, bucket: int, activation: str) -> Tensor:
    """The loop kernel on blocks padded with zero rows to multiples of ``bucket`` (1: as they come).

    The padded rows' outputs are dropped and their gradient is zero, so they change nothing.
    """
    sizes = counts.tolist()
    if bucket <= 1:
        return ExpertMLP.apply(x, w1, b1, w2, b2, tuple(sizes), False, activation)
    padded = [-(-c // bucket) * bucket for c in sizes]
    starts = itertools.accumulate(padded[:-1], initial=0)  # each padded block's first row
    position = torch.cat([torch.arange(start, start + c) for start, c in zip(starts, sizes)]).to(x.device)
    x_padded = x.new_zeros(sum(padded), x.shape[1]).index_copy(0, position, x)
    return ExpertMLP.apply(x_padded, w1, b1, w2, b2, tuple(padded), False, activation).index_select(0, position)


def plain_experts(x, w1, b1, w2, b2, counts, activation) -> Tensor:
    """The reference kernel: autograd through one :func:`mlp` per expert slice."""
    parts = [
        mlp(x[rows], w1[e], None if b1 is None else b1[e], w2[e], None if b2 is None else b2[e], activation)
        for e, rows in _slices(counts)
    ]
    return torch.cat(parts) if parts else x.new_zeros(0, w2.shape[-1])


class ExpertMLP(torch.autograd.Function):
    """MLPs over contiguous row slices, one per expert, with a hand-written backward.

    ``apply(x, w1, b1, w2, b2, counts, grouped, activation)``: one matmul per expert
    (``grouped=False``, ``counts`` a tuple of ints) or ``grouped_mm`` over all experts at
    once (``grouped=True``, ``counts`` an int tensor on x's device); ``activation`` names the
    nonlinearity (:data:`ACTIVATION_FUNCTIONS`).
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, counts, grouped, activation):
        with torch.autocast(x.device.type, enabled=False):
            if grouped:  # the backward reuses the padded layout and weights (see _grouped_forward)
                saved, out = _grouped_forward(x, w1, b1, w2, b2, counts, activation)
            else:
                pre, act, out = _loop_forward(x, w1, b1, w2, b2, counts, activation)
                saved = (x, w1, w2, pre, act)
        ctx.save_for_backward(*saved)
        ctx.has_bias, ctx.grouped, ctx.activation = (b1 is not None, b2 is not None), grouped, activation
        ctx.shape = (None if grouped else counts, x.shape[1], w1.shape[2])  # the loop's counts; the true widths d, h
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        saved, (counts, d, h) = ctx.saved_tensors, ctx.shape
        with torch.autocast(grad_out.device.type, enabled=False):
            if ctx.grouped:
                grads = _grouped_backward(grad_out.contiguous(), *saved, d, h, ctx.has_bias, ctx.activation)
            else:
                grads = _loop_backward(grad_out.contiguous(), *saved, counts, ctx.has_bias, ctx.activation)
        return (*grads, None, None, None)


def _loop_forward(x, w1, b1, w2, b2, counts, activation):
    """:func:`mlp` per expert, written into preallocated buffers (pre-activation and
    activation are kept for the backward)."""
    act_fn = ACTIVATION_FUNCTIONS[activation][0]
    pre = x.new_empty(x.shape[0], w1.shape[-1])
    act = torch.empty_like(pre)
    out = x.new_empty(x.shape[0], w2.shape[-1])
    for e, rows in _slices(counts):
        if b1 is None:
            torch.mm(x[rows], w1[e], out=pre[rows])
        else:
            torch.addmm(b1[e], x[rows], w1[e], out=pre[rows])
        act[rows] = act_fn(pre[rows])
        if b2 is None:
            torch.mm(act[rows], w2[e], out=out[rows])
        else:
            torch.addmm(b2[e], act[rows], w2[e], out=out[rows])
    return pre, act, out


def _loop_backward(grad_out, x, w1, w2, pre, act, counts, has_bias, activation):
    act_backward = ACTIVATION_FUNCTIONS[activation][1]
    grad_x = torch.empty_like(x)
    grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
    grad_b1 = x.new_zeros(w1.shape[0], w1.shape[-1]) if has_bias[0] else None
    grad_b2 = x.new_zeros(w2.shape[0], w2.shape[-1]) if has_bias[1] else None
    for e, rows in _slices(counts):
        g = grad_out[rows]
        torch.mm(act[rows].t(), g, out=grad_w2[e])
        g_pre = act_backward(g @ w2[e].t(), pre[rows])
        torch.mm(x[rows].t(), g_pre, out=grad_w1[e])
        torch.mm(g_pre, w1[e].t(), out=grad_x[rows])
        if grad_b2 is not None:
            torch.sum(g, 0, out=grad_b2[e])
        if grad_b1 is not None:
            torch.sum(g_pre, 0, out=grad_b1[e])
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def _grouped_forward(x, w1, b1, w2, b2, counts, activation):
    """Rows sorted by expert, through the aligned layout (:mod:`moelab.nn.moe.grouped`): the output
    rows, and what the backward needs (the padded input, weights, activations and layout)."""
    d = x.shape[1]
    position, offsets, padded_expert = aligned_layout(counts, x.shape[0])
    w1, b1, w2, b2 = pad_widths(w1, b1, w2, b2)
    x_padded = _scatter_rows(F.pad(x, (0, w1.shape[1] - d)), position, padded_expert.shape[0])
    pre, act, out = grouped_mlp(x_padded, w1, b1, w2, b2, offsets, padded_expert, activation)
    return (x_padded, w1, w2, pre, act, position, offsets, padded_expert), out[position, :d]


def _grouped_backward(grad_out, x_padded, w1, w2, pre, act, position, offsets, padded_expert, d, h, has_bias, activation):
    """Gradients of the sorted rows and of the true (unpadded) weights and biases."""
    grad_out = _scatter_rows(F.pad(grad_out, (0, w2.shape[2] - d)), position, x_padded.shape[0])  # 0 on padding
    grad_x_padded, *grad_weights = grouped_mlp_backward(
        grad_out, x_padded, w1, w2, pre, act, offsets, padded_expert, d, h, has_bias, activation
    )
    return (grad_x_padded[position, :d], *grad_weights)


def _scatter_rows(t: Tensor, position: Tensor, n_rows: int) -> Tensor:
    out = t.new_zeros(n_rows, t.shape[-1])
    out[position] = t
    return out


def _slices(counts):
    """(expert, row slice) for every expert with at least one row."""
    start = 0
    for e, count in enumerate(counts):
        if count:
            yield e, slice(start, start + count)
        start += count
