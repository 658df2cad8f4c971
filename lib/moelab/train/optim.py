"""The optimizers, by ``TrainConfig.optimizer``.

- ``"adamw"``: AdamW over two groups, the decayed matrices and the rest (the model's
  weight-decay rule, :func:`moelab.nn.model.decay_groups`).
- ``"muon"``: Muon (Keller Jordan et al. 2024) for the hidden matrices, AdamW as above for
  everything else, stepped as one optimizer (:class:`MuonWithAdamW`). The hidden matrices
  are those of attention (q, k, v, output projection) and of the experts (common and
  routed): :func:`hidden_matrices`. AdamW keeps the embeddings and the output head (the
  input and output layers, which Muon's authors leave to AdamW), norm gains, biases, and the
  router: its gate is a small classifier over the experts (one row per expert) tuned by the
  load-balancing and z-losses, and Muon would give each of its few directions an update of
  the same size however small that direction's gradient.

``torch.optim.Muon`` (torch 2.13) takes 2-D parameters only. :class:`Muon` here is its
update for stacks of matrices: the routed experts' (E, d, h) weights are E matrices, and
the fused (3d, d) qkv weight is three (modded-nanogpt, too, orthogonalizes its stacked q,
k, v weights one by one). The tests check it against ``torch.optim.Muon`` on each matrix.
Its Newton–Schulz iteration runs in bf16, as torch's does, where the device multiplies bf16
natively, and in float32 elsewhere (:func:`newton_schulz_dtype`).
Muon's step is scaled as torch's ``adjust_lr_fn="match_rms_adamw"`` (Moonlight, Liu et al.
2025), so the Trainer's one learning rate, schedule and weight decay drive both parts.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from moelab.nn.attention import CausalSelfAttention
from moelab.config.train import TrainConfig
from moelab.nn.moe.experts import Experts
from moelab.nn.model import Transformer, decay_groups, is_matrix
from moelab.nn.moe.layer import FeedForward
from moelab.train.precision import bf16_support

HIDDEN_MODULES = (CausalSelfAttention, FeedForward, Experts)  # whose matrices Muon trains
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic Newton–Schulz iteration (torch's too)
NS_STEPS = 5
MUON_MOMENTUM = 0.95  # Keller Jordan's and torch's default, with Nesterov momentum
MATCH_ADAMW_RMS = 0.2  # step lr · 0.2 · sqrt(max(rows, cols)): an update RMS like AdamW's (Moonlight)


def make_optimizer(model: Transformer, train: TrainConfig, device: torch.device):
    """AdamW (``train.optimizer == "adamw"``) or :class:`MuonWithAdamW` (``"muon"``), at ``train.lr``."""
    decay, keep = decay_groups(model)
    if train.optimizer == "adamw":
        return _adamw(decay, keep, train)
    hidden = hidden_matrices(model)
    decayed = {id(p) for _, p in decay}  # the decay rule still decides which parameters decay
    groups: dict[tuple[int, float], list[nn.Parameter]] = {}  # (row_blocks, weight decay) -> matrices
    for _, p, blocks in hidden:
        groups.setdefault((blocks, train.weight_decay if id(p) in decayed else 0.0), []).append(p)
    muon = Muon([{"params": ps, "row_blocks": b, "weight_decay": wd} for (b, wd), ps in groups.items()], lr=train.lr)
    taken = {id(p) for _, p, _ in hidden}
    rest = [[(name, p) for name, p in part if id(p) not in taken] for part in (decay, keep)]
    return MuonWithAdamW(_adamw(*rest, train), muon)


def _adamw(decay, keep, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over two groups: the decayed (name, parameter) pairs, then the others (weight decay 0)."""
    groups = [
        {"params": [p for _, p in decay], "weight_decay": train.weight_decay},
        {"params": [p for _, p in keep], "weight_decay": 0.0},
    ]
    try:  # the fused kernel is one op for all parameters (CPU and CUDA)
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def hidden_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """(name, matrix, row blocks) for Muon, in ``named_parameters`` order: the attention and expert matrices.

    ``row blocks``: how many matrices the parameter stacks along its rows (3 for the fused
    qkv, from the modules' ``fused_matrices()``; else 1). A routed expert weight is a stack
    of matrices along its leading expert dimension.
    """
    fused = {id(p): n for m in model.modules() if hasattr(m, "fused_matrices") for p, n in m.fused_matrices()}
    inside = {id(p) for m in model.modules() if isinstance(m, HIDDEN_MODULES) for p in m.parameters()}
    return [
        (f"{prefix}.{local}", p, fused.get(id(p), 1))
        for prefix, module in model.named_modules()
        for local, p in module.named_parameters(recurse=False)
        if id(p) in inside and is_matrix(p, module)
    ]


# ---------------------------------------------------------------------------- Muon


@functools.cache
def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where ``device`` multiplies bf16 natively (as torch.optim.Muon iterates), else float32.

    A CPU without AMX or AVX512-BF16 emulates bf16 products: on a 2-core AMD EPYC with AVX2
    only, the pretrained forecaster's Newton–Schulz steps took 3.07 s in bf16 against 0.068 s
    in float32, five times its forward and backward pass.
    """
    return torch.bfloat16 if bf16_support(device)[0] else torch.float32


def orthogonalize(g: Tensor, steps: int = NS_STEPS, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    """Each matrix of g (..., m, n) mapped near the U V^T of its SVD U S V^T, batched over the leading dims.

    torch.optim.Muon's Newton–Schulz iteration (Keller Jordan's): scaled to Frobenius norm
    1 (so every singular value is <= 1), then X <- a X + (b A + c A²) X with A = X X^T
    pushes every singular value towards 1 (to roughly 0.5 to 1.5, which is all Muon needs:
    torch's and Keller Jordan's notes), on the wide orientation (the smaller Gram matrix A).
    It runs in ``dtype``, by default :func:`newton_schulz_dtype` of g's device.
    """
    a, b, c = NS_COEFFICIENTS
    m, n = g.shape[-2:]
    x = g.reshape(-1, m, n).to(dtype or newton_schulz_dtype(g.device))
    if m > n:
        x = x.mT
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if m > n:
        x = x.mT
    return x.reshape(g.shape)


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update (nesterov, adjust_lr_fn="match_rms_adamw") for parameters that stack matrices.

    A parameter of shape (..., R, C) in a group with ``row_blocks`` r holds the matrices of
    shape (R / r, C) of its leading dims and row blocks (the routed experts: (E, d, h) is E
    matrices; the fused qkv (3d, d) with r = 3 is q, k, v). For each matrix M with gradient G
    and momentum buffer B, as torch.optim.Muon does for a 2-D parameter:

        B <- mu B + (1 - mu) G;  O = orthogonalize((1 - mu) G + mu B)
        M <- M (1 - lr wd) - lr 0.2 sqrt(max(rows, cols)) O

    The 0.2 sqrt(max(rows, cols)) gives the update about AdamW's RMS, so AdamW's learning rate
    and weight decay carry over (Moonlight, Liu et al. 2025); it is symmetric in rows and
    columns, so an expert's (in, out) storage and a Linear's (out, in) step alike.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = MUON_MOMENTUM,
                 ns_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "row_blocks": 1})
        self.ns_dtype = ns_dtype  # the Newton–Schulz iteration's; None: newton_schulz_dtype of each parameter's device

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, mu, blocks = group["lr"], group["weight_decay"], group["momentum"], group["row_blocks"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - mu)
                rows, cols = p.shape[-2] // blocks, p.shape[-1]
                matrices = p.grad.lerp(buffer, mu).reshape(*p.shape[:-2], blocks, rows, cols)
                update = orthogonalize(matrices, dtype=self.ns_dtype).reshape(p.shape)
                scale = MATCH_ADAMW_RMS * math.sqrt(max(rows, cols))
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-(lr * scale))
        return loss


class MuonWithAdamW:
    """Muon for the hidden matrices and AdamW for the other parameters, used as one optimizer.

    What the Trainer needs of an optimizer: ``param_groups`` (it sets the learning rate of
    every group each step, so one schedule drives both), ``step``, ``zero_grad``, and the
    checkpoint's ``state_dict`` / ``load_state_dict`` ({"adamw": ..., "muon": ...}).
    """

    def __init__(self, adamw: torch.optim.AdamW, muon: Muon) -> None:
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none)
        self.muon.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])


# ---------------------------------------------------------------------------- checkpoints


def load_optimizer_state(optimizer, model: Transformer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state, also one saved before the decay rule excluded the router noise.

    A state of the other optimizer (``adamw`` vs ``muon``) is refused. Until moelab 0.1.0's
    redesign every matrix decayed, the router-noise weights included, so such a checkpoint's
    two AdamW groups are (all matrices, the rest). Its per-parameter moments are moved to
    where the same parameters sit in today's groups.
    """
    saved = "muon" if "muon" in state else "adamw"
    wanted = "muon" if isinstance(optimizer, MuonWithAdamW) else "adamw"
    if saved != wanted:
        raise ValueError(
            f"the checkpoint holds the state of optimizer={saved!r}, this run trains with optimizer={wanted!r}; "
            f"resume with optimizer={saved!r} or start a new run"
        )
    try:
        optimizer.load_state_dict(state)
        return
    except ValueError:
        if saved == "muon" or len(state["param_groups"]) != 2:
            raise
    decay, keep = decay_groups(model)
    undecayed = {id(p) for m in model.modules() if hasattr(m, "undecayed_weights") for p in m.undecayed_weights()}
    position = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    old_decay = sorted([n for n, _ in decay] + [n for n, p in keep if id(p) in undecayed], key=position.__getitem__)
    old_order = old_decay + [n for n, p in keep if id(p) not in undecayed]
    new_index = {name: i for i, (name, _) in enumerate(decay + keep)}
    old_ids = state["param_groups"][0]["params"] + state["param_groups"][1]["params"]
    if len(old_ids) != len(old_order):
        raise ValueError(f"the checkpoint's optimizer holds {len(old_ids)} parameters, the model {len(old_order)}")
    remapped = optimizer.state_dict()
    remapped["state"] = {new_index[name]: state["state"][i] for name, i in zip(old_order, old_ids) if i in state["state"]}
    optimizer.load_state_dict(remapped)
