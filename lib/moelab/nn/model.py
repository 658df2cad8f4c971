"""The transformer: embeddings, pre-LN blocks, the parameter rules.

Read top to bottom: the block (attention from :mod:`moelab.nn.attention` + the MoE
feed-forward of :mod:`moelab.nn.moe.layer`), the initialization and weight-decay rules, the model
with its output dataclass. Generation is :mod:`moelab.generate.loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moelab.nn.aligned import Linear
from moelab.nn.attention import CausalSelfAttention
from moelab.nn.kv_cache import KVCache
from moelab.nn.positions import rope_tables, sinusoidal_table
from moelab.config.model import ModelConfig
from moelab.nn.moe.layer import MoE
from moelab.nn.moe.losses import moe_losses
from moelab.nn.moe.router import RouterOutput, RoutingRecord

@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block of code with ``module`` in eval mode, then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


# ---------------------------------------------------------------------------- block


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + moe(ln(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.moe = MoE(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache: KVCache | None, layer: int) -> tuple[Tensor, RouterOutput | None]:
        start = cache.length if cache is not None else 0
        counts = cache.expert_counts[layer] if cache is not None and cache.expert_counts is not None else None
        x = x + self.dropout(self.attn(self.ln1(x), rope, cache, layer))
        y, router = self.moe(self.ln2(x), start=start, expert_counts=counts)
        return x + self.dropout(y), router


# ---------------------------------------------------------------------------- parameters


def _own_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module]]:
    """(name, parameter, the module that holds it), in ``named_parameters`` order (a tied weight once)."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for local, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield (f"{prefix}.{local}" if prefix else local), p, module


def _marked(model: nn.Module, marker: str) -> set[int]:
    """Ids of the parameters that modules list through a marker method (``residual_projections``, ...)."""
    return {id(p) for m in model.modules() if hasattr(m, marker) for p in getattr(m, marker)()}


def is_matrix(p: Tensor, module: nn.Module) -> bool:
    """A weight matrix (or embedding table); the stacked experts count their leading expert dim out."""
    return p.dim() - getattr(module, "stacked_dims", 0) >= 2


@torch.no_grad()
def init_parameters(model: nn.Module, n_layers: int) -> None:
    """The initialization rule (GPT-2), by tensor rank and the residual-projection markers.

    Matrices N(0, 0.02); matrices a module lists in ``residual_projections()`` (attention
    output, common experts' output, routed experts' w2: they add into the residual
    stream) N(0, 0.02 / sqrt(2 n_layers)); norm gains (LayerNorm, the QK-norm's RMSNorm) 1;
    every other vector (biases, stacked expert biases) 0. Parameters are drawn in
    ``named_parameters`` order.
    """
    residual = _marked(model, "residual_projections")
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    for _, p, module in _own_parameters(model):
        if is_matrix(p, module):
            nn.init.normal_(p, std=residual_std if id(p) in residual else 0.02)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and p is module.weight:
            nn.init.ones_(p)
        else:
            nn.init.zeros_(p)


def decay_groups(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """The weight-decay rule: (decayed, not decayed) (name, parameter) pairs, in ``named_parameters`` order.

    Every matrix decays, embeddings and an untied output head included (nanoGPT's rule:
    every >= 2-D tensor); vectors (biases, norm gains) do not, nor the matrices a module lists in
    ``undecayed_weights()`` (the router-noise weights: see :meth:`moelab.nn.moe.layer.MoE.undecayed_weights`).
    """
    undecayed = _marked(model, "undecayed_weights")
    decay, keep = [], []
    for name, p, module in _own_parameters(model):
        (decay if is_matrix(p, module) and id(p) not in undecayed else keep).append((name, p))
    return decay, keep


# ---------------------------------------------------------------------------- model


def soft_cap(logits: Tensor, cap: float) -> Tensor:
    """cap · tanh(logits / cap), in at least float32: about the identity for |logits| << cap, never beyond ±cap.

    Logit soft-capping (Gemma 2, Gemma Team 2024; modded-nanogpt caps at 15 to 30) keeps the
    output logits, and so the loss's pull on them, bounded without clipping their gradient.
    """
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # as the loss reads them under autocast
    return cap * torch.tanh(wide / cap)


@dataclass
class ModelOutput:
    """logits (B, T, V); loss = ce_loss + aux_loss_weight * aux_loss + z_loss_coef * z_loss.

    aux_loss_weight is the config's aux_loss_coef with balance="aux_loss", else 0 (the
    aux_loss is still reported, as a balance measure). aux_loss and z_loss are the
    unweighted means over MoE layers (0 for a dense model, and
    0 when they are not needed: no targets and eval mode, as in generation);
    ce_loss and loss are None when no targets were given. routing holds one record per
    layer when requested. The logits are soft-capped (:func:`soft_cap`) when the config
    sets ``logit_softcap``.
    """

    logits: Tensor
    loss: Tensor | None
    ce_loss: Tensor | None
    aux_loss: Tensor
    z_loss: Tensor
    routing: list[RoutingRecord] | None = None


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = (
            nn.Embedding(config.context_window, config.n_embd) if config.pos_encoding == "learned" else None
        )
        if config.pos_encoding == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.context_window, config.n_embd), persistent=False)
        if config.pos_encoding == "rope":
            cos, sin = rope_tables(config.context_window, config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = Linear(config.n_embd, config.vocab_size, bias=config.bias)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw every parameter by the initialization rule (:func:`init_parameters`)."""
        init_parameters(self, self.config.n_layers)

    # ------------------------------------------------------------------ counts
    def num_parameters(self) -> dict[str, int]:
        """Counted from the module: total and active per token (the "all" row of :meth:`parameter_table`)."""
        counts = self.parameter_table().loc["all"]
        return {"total": int(counts["total"]), "active": int(counts["active"])}

    def parameter_table(self):
        """Parameters by component as a DataFrame: total, and active per token (routed experts × k / N)."""
        import pandas as pd

        component_of = {
            "tok_emb": "token embedding",
            "pos_emb": "position embedding",
            "attn": "attention",
            "gate": "router",
            "noise": "router",
            "experts": "routed experts",
            "common": "common experts",
            "ln1": "layer norms",
            "ln2": "layer norms",
            "ln_f": "layer norms",
            "head": "output head",
        }
        rows = dict.fromkeys(dict.fromkeys(component_of.values()), 0)
        for name, p in self.named_parameters():
            rows[next(component_of[part] for part in name.split(".") if part in component_of)] += p.numel()
        table = pd.DataFrame({"total": rows}).query("total > 0")
        share = self.config.routed_top_k / self.config.routed_experts if self.config.is_moe else 1.0
        table["active"] = table["total"]
        if "routed experts" in table.index:
            table.loc["routed experts", "active"] = round(table.loc["routed experts", "total"] * share)
        table.loc["all"] = table.sum()
        return table.astype(int)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        record_routing: bool = False,
    ) -> ModelOutput:
        """idx (B, T) byte ids; targets (B, T) with -1 for positions to ignore."""
        if idx.dtype != torch.long or idx.ndim != 2:
            raise ValueError(f"idx must be a (batch, time) LongTensor, got {tuple(idx.shape)} {idx.dtype}")
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.context_window:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds context_window={self.config.context_window}; "
                "crop the input to the last context_window tokens (generate() does this)"
            )
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pos_table[start : start + T].to(x.dtype)
        else:
            rope = (self.rope_cos[start : start + T].to(x.dtype), self.rope_sin[start : start + T].to(x.dtype))
        x = self.dropout(x)

        routers = []
        for layer, block in enumerate(self.blocks):
            x, router = block(x, rope, kv_cache, layer)
            routers.append(router)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.head(self.ln_f(x))
        if self.config.logit_softcap is not None:  # for the loss and for generation alike
            logits = soft_cap(logits, self.config.logit_softcap)

        if targets is not None or self.training:
            aux_loss, z_loss = moe_losses(routers, self.config.routed_experts, like=x)
        else:  # decoding and plain inference do not pay for the losses
            aux_loss = z_loss = x.new_zeros((), dtype=torch.promote_types(x.dtype, torch.float32))
        routing = [None if r is None else r.record() for r in routers] if record_routing else None
        ce_loss = loss = None
        if targets is not None:
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32 under autocast
            ce_loss = F.cross_entropy(wide.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            loss = ce_loss + self.config.aux_loss_weight * aux_loss + self.config.z_loss_coef * z_loss
        return ModelOutput(logits, loss, ce_loss, aux_loss, z_loss, routing)

    def set_padding(self, *, widths: bool = True, head_dim: bool | None = None) -> Transformer:
        """How the CUDA kernels' alignment padding applies (the results are the same either way).

        ``widths``: pad linear layers' widths to 16-byte rows on CUDA (:mod:`moelab.nn.aligned`);
        ``head_dim``: pad the head size to a multiple of 8 inside attention (None: on CUDA when
        needed; True / False: always / never, also on the CPU).
        """
        for module in self.modules():
            if isinstance(module, Linear):
                module.pad_on_cuda = widths
            elif isinstance(module, CausalSelfAttention):
                module.pad_head_dim = head_dim
        return self

    @torch.no_grad()
    def update_balance_biases(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """With ``balance="bias"``: move every MoE layer's selection bias after an optimizer step.

        Call it right after ``optimizer.step()``: each layer counted the routed slots of the
        step's training forwards (all micro-batches); ``reduce`` sums the (layers, N) counts
        over ranks under DDP (:func:`moelab.train.distributed.all_reduce`), so every rank applies
        the same update. Then each layer applies :meth:`moelab.nn.moe.router.Router.update_balance_bias`
        and restarts its count. Nothing happens for the other balance choices.
        """
        routers = [block.moe.router for block in self.blocks if block.moe.router is not None]
        routers = [router for router in routers if router.balance_bias is not None]
        if not routers:
            return
        slots = torch.stack([router.step_slots for router in routers])
        if reduce is not None:
            slots = reduce(slots)
        for router, layer_slots in zip(routers, slots):
            router.update_balance_bias(layer_slots)
