"""The grouped expert kernel: every expert in one ``grouped_mm`` over an aligned layout of rows.

CUDA's ``grouped_mm`` wants each expert's block of rows, and the widths d and h, aligned to
16 bytes (8 bf16 values). The layout (:func:`aligned_layout`) pads every block with rows to a
multiple of :data:`ALIGN_ROWS`, in a buffer whose size depends on the shapes only, so nothing is
read back to the host and CUDA graphs can capture it; the widths are padded with zero weights
(:func:`pad_widths`). Padding rows add nothing to any output or gradient.

Two entries, one arithmetic (:func:`grouped_mlp`, :func:`grouped_mlp_backward`):

- :class:`~moelab.nn.moe.experts.ExpertMLP` with ``grouped=True`` runs rows already sorted by
  expert (the :class:`~moelab.nn.moe.experts.Experts` module's interface);
- :func:`dispatch_grouped` is the MoE layer's steps 7-9 straight into the layout: each padded
  row knows its token and its gate (0 on padding rows, which read a zero row), so the tokens
  are gathered into the layout once and the gate-weighted outputs scatter-added back once,
  with no sorted copy in between (the token dispatch of torchtitan, with the alignment
  padding CUDA's kernel needs). Its backward is written by hand and gives the gates their
  gradient, the dot product of each slot's output with the gradient of its token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moelab.nn.moe.activations import ACTIVATION_FUNCTIONS
from moelab.nn.moe.metrics import slot_counts

ALIGN_ROWS = 8  # grouped_mm on CUDA wants every group's rows to span a multiple of 16 bytes (8 bf16 values)


def grouped_mm_fits(x: Tensor) -> bool:
    """Whether ``auto`` takes grouped_mm: on CUDA in bf16 (its widths are padded to fit, see pad_widths)."""
    return x.is_cuda and x.dtype == torch.bfloat16 and hasattr(F, "grouped_mm")


def padded_rows(n_rows: int, n_experts: int) -> int:
    """Rows of the aligned layout: room for every block padded to ``ALIGN_ROWS``, itself a multiple of it.

    It depends on the shapes only, never on the counts, so the step's buffers have a fixed size.
    """
    return -(-(n_rows + n_experts * (ALIGN_ROWS - 1)) // ALIGN_ROWS) * ALIGN_ROWS


def aligned_layout(counts: Tensor, n_rows: int):
    """Each expert's block of rows padded with zero rows to a multiple of ``ALIGN_ROWS``, on the device.

    ``counts`` (n,): rows per expert, ``n_rows`` their sum (known from the shapes, so nothing
    is read back to the host). Returns where each real row goes in the padded layout,
    grouped_mm's offsets (the end row of each padded block; the last block also takes the
    spare rows up to :func:`padded_rows`) and each padded row's expert. The weight gradients
    contract over the rows, so CUDA's grouped_mm needs every block aligned; zero rows add
    nothing to them.
    """
    n, total = counts.shape[0], padded_rows(n_rows, counts.shape[0])
    padded = (counts + ALIGN_ROWS - 1) // ALIGN_ROWS * ALIGN_ROWS
    ends = padded.cumsum(0)
    shift = (ends - padded) - (counts.cumsum(0) - counts)  # padded start - real start, per expert
    experts = torch.arange(n, device=counts.device)
    row_expert = torch.repeat_interleave(experts, counts, output_size=n_rows)
    position = torch.arange(n_rows, device=counts.device) + shift[row_expert]
    ends[-1:].fill_(total)  # (fill_, not item assignment: assigning a number copies it from the host)
    padded_expert = torch.bucketize(torch.arange(total, device=counts.device), ends, right=True)
    return position, ends.to(torch.int32), padded_expert


def pad_widths(w1, b1, w2, b2):
    """Zero-pad the expert widths d and h to multiples of ``ALIGN_ROWS`` (16-byte rows in bf16: grouped_mm
    on CUDA needs them; n_embd 1028, the seed's, becomes 1032). Zero weights add nothing to the outputs."""
    pd, ph = -w1.shape[1] % ALIGN_ROWS, -w1.shape[2] % ALIGN_ROWS
    if not (pd or ph):
        return w1, b1, w2, b2
    pad = lambda t, *widths: None if t is None else F.pad(t, widths)  # noqa: E731
    return pad(w1, 0, ph, 0, pd), pad(b1, 0, ph), pad(w2, 0, pd, 0, ph), pad(b2, 0, pd)


def grouped_mlp(x_padded, w1, b1, w2, b2, offsets, padded_expert, activation):
    """act(x w1 + b1) w2 + b2 of every padded row with its block's expert: (pre, act, out)."""
    pre = F.grouped_mm(x_padded, w1, offs=offsets)
    if b1 is not None:
        pre += b1[padded_expert]
    act = ACTIVATION_FUNCTIONS[activation][0](pre)
    out = F.grouped_mm(act, w2, offs=offsets)
    if b2 is not None:
        out += b2[padded_expert]
    return pre, act, out


def grouped_mlp_backward(grad_out, x_padded, w1, w2, pre, act, offsets, padded_expert, d, h, has_bias, activation):
    """Gradients of the padded rows (grad_out 0 on padding rows) and of the true (unpadded) weights and
    biases; w1, w2 arrive padded."""
    g_act = F.grouped_mm(grad_out, w2.transpose(1, 2).contiguous(), offs=offsets)
    g_pre = ACTIVATION_FUNCTIONS[activation][1](g_act, pre)
    # weight gradients: (n, ·, ·) from row-partitioned 2D operands; zeros for an expert without rows
    grad_w2 = F.grouped_mm(act.t().contiguous(), grad_out, offs=offsets)[:, :h, :d]
    grad_w1 = F.grouped_mm(x_padded.t().contiguous(), g_pre, offs=offsets)[:, :d, :h]
    grad_x_padded = F.grouped_mm(g_pre, w1.transpose(1, 2).contiguous(), offs=offsets)
    n = w1.shape[0]
    grad_b1 = x_padded.new_zeros(n, pre.shape[1]).index_add_(0, padded_expert, g_pre)[:, :h] if has_bias[0] else None
    grad_b2 = x_padded.new_zeros(n, grad_out.shape[1]).index_add_(0, padded_expert, grad_out)[:, :d] if has_bias[1] else None
    return grad_x_padded, grad_w1, grad_b1, grad_w2, grad_b2


def dispatch_grouped(flat: Tensor, experts: Tensor, gates: Tensor, weights: tuple, activation: str) -> Tensor:
    """The routed experts' gate-weighted sum for every token: flat (T, d), experts and gates (T, k),
    ``weights`` (w1, b1, w2, b2) stacked over the experts, in flat's dtype -> (T, d)."""
    n_tokens, k = experts.shape
    slot_expert = experts.reshape(-1)
    order = torch.argsort(slot_expert, stable=True)  # token order within an expert, as the general path
    counts = slot_counts(slot_expert, weights[0].shape[0])
    position, offsets, padded_expert = aligned_layout(counts, slot_expert.shape[0])
    slot_row = torch.empty_like(position).index_copy_(0, order, position)  # each slot's padded row
    slots = torch.arange(slot_expert.shape[0], device=flat.device)
    row_token = torch.full_like(padded_expert, n_tokens).index_copy_(0, slot_row, slots // k)  # padding: the zero row
    return GroupedDispatch.apply(flat, gates.reshape(-1), *weights, row_token, slot_row, offsets, padded_expert,
                                 activation)  # fmt: skip


class GroupedDispatch(torch.autograd.Function):
    """:func:`dispatch_grouped`'s gather, grouped MLP and gate-weighted scatter-add, with their backward."""

    @staticmethod
    def forward(ctx, flat, gates, w1, b1, w2, b2, row_token, slot_row, offsets, padded_expert, activation):
        d, h = w1.shape[1], w1.shape[2]
        with torch.autocast(flat.device.type, enabled=False):
            w1, b1, w2, b2 = pad_widths(w1, b1, w2, b2)
            x_padded = F.pad(flat, (0, w1.shape[1] - d, 0, 1))[row_token]  # the appended zero row for padding
            row_gate = gates.new_zeros(row_token.shape[0]).index_copy_(0, slot_row, gates).to(flat.dtype)
            pre, act, out = grouped_mlp(x_padded, w1, b1, w2, b2, offsets, padded_expert, activation)
            routed = out.new_zeros(flat.shape[0] + 1, out.shape[1]).index_add_(0, row_token, out * row_gate.unsqueeze(1))
        ctx.save_for_backward(x_padded, w1, w2, pre, act, out, row_gate, row_token, slot_row, offsets, padded_expert)
        ctx.shape, ctx.has_bias, ctx.activation = (d, h, gates.dtype), (b1 is not None, b2 is not None), activation
        return routed[:-1, :d]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_routed):
        x_padded, w1, w2, pre, act, out, row_gate, row_token, slot_row, offsets, padded_expert = ctx.saved_tensors
        d, h, gate_dtype = ctx.shape
        with torch.autocast(grad_routed.device.type, enabled=False):
            grad_rows = F.pad(grad_routed, (0, out.shape[1] - d, 0, 1))[row_token]  # 0 on padding rows
            grad_gates = (grad_rows * out).sum(-1, dtype=torch.float32)[slot_row].to(gate_dtype)
            grad_x_padded, *grad_weights = grouped_mlp_backward(
                grad_rows * row_gate.unsqueeze(1), x_padded, w1, w2, pre, act, offsets, padded_expert, d, h,
                ctx.has_bias, ctx.activation,
            )  # fmt: skip
            grad_flat = x_padded.new_zeros(grad_routed.shape[0] + 1, x_padded.shape[1])
            grad_flat = grad_flat.index_add_(0, row_token, grad_x_padded)[:-1, :d]
        return (grad_flat, grad_gates, *grad_weights, None, None, None, None, None)
