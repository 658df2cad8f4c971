"""Decoding one token with the fewest operations: generation's fast path at batch 1 on a CPU.

A token of a small model at batch 1 costs the fixed price of each operation it runs, a few µs
each on a CPU, more than their arithmetic (``tools/cpu_profile.py``). The model's forward
pays for its generality there: module calls, views rebuilt per call, the routing record, the
casts for autocast. :class:`TokenDecoder` runs one position of a
:class:`~moelab.nn.model.Transformer` with the same arithmetic and fewer operations:

- the weights are gathered once per generation: the matrices of the linear layers transposed
  to the x·W layout, in which single-row products are faster (``make bench``'s GEMV rows),
  the routed experts split into one set of tensors each;
- RoPE, a linear map, is one product with the position's rotation matrix for q and k together;
  both are written in place into the same :class:`~moelab.nn.kv_cache.KVCache` the model fills;
- the router's choice and gates are read to the host once, the chosen experts run by index,
  and each gate-weighted output is added in one call.

It computes what the model's forward computes with a KV cache, to rounding: the tests compare
the logits and the routing for every model option. Where it does not apply
(:meth:`TokenDecoder.applies`: batch > 1, not a CPU, autocast, a capacity limit),
generation uses the model's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moelab.nn.kv_cache import KVCache
from moelab.nn.positions import apply_rope
from moelab.nn.moe.activations import ACTIVATION_FUNCTIONS, affine
from moelab.nn.model import soft_cap
from moelab.nn.moe.router import RoutingRecord, select_experts


def _xw(linear) -> tuple[Tensor, Tensor | None]:
    """A linear layer's (weight in the x·W layout, bias), for :func:`moelab.nn.moe.experts.affine`."""
    return linear.weight.detach().T.contiguous(), None if linear.bias is None else linear.bias.detach()


def _norm(layer_norm) -> tuple:
    """A LayerNorm's arguments for ``F.layer_norm`` after the input: shape, weight, bias, eps."""
    bias = None if layer_norm.bias is None else layer_norm.bias.detach()
    return layer_norm.normalized_shape, layer_norm.weight.detach(), bias, layer_norm.eps


class TokenDecoder:
    """One-token steps of ``model`` at batch 1, reading and extending a :class:`KVCache`.

    Build it once per generation (it copies the linear layers' weights, transposed: they
    must not change while it is used); ``decoder(token, cache)`` returns the next-token
    logits (1, V) and, with ``record_routing``, one :class:`RoutingRecord` per layer (B=1, ·).
    Its weights are detached: it builds no autograd graph.
    """

    def __init__(self, model) -> None:
        config = model.config
        self.config = config
        self.activation = ACTIVATION_FUNCTIONS[config.activation][0]
        self.routing = config.gate, config.routed_top_k  # select_experts' score and k
        self.tok_emb = model.tok_emb.weight.detach()
        self.positions = None  # a table of position rows added to the embedding (learned or sinusoidal)
        if model.pos_emb is not None:
            self.positions = model.pos_emb.weight.detach()
        elif config.pos_encoding == "sinusoidal":
            self.positions = model.pos_table.to(self.tok_emb.dtype)
        self.rotations = None
        if config.pos_encoding == "rope":  # RoPE is linear: per position, one (head, head) matrix, q @ R
            identity = torch.eye(config.head_dim, dtype=self.tok_emb.dtype).expand(config.context_window, -1, -1)
            cos, sin = (t.to(self.tok_emb.dtype).unsqueeze(1) for t in (model.rope_cos, model.rope_sin))
            self.rotations = apply_rope(identity, cos, sin)  # (W, head, head): row i is e_i rotated
        self.layers = [self._layer(block) for block in model.blocks]
        self.ln_f = _norm(model.ln_f)
        self.head = _xw(model.head)

    @staticmethod
    def applies(model, idx: Tensor) -> bool:
        """Whether the decoder computes ``model``'s next token for ``idx`` (B, T): one row, on the
        CPU, without autocast or a capacity limit (those keep the model's forward)."""
        return (
            idx.shape[0] == 1
            and idx.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and model.config.capacity_factor is None
        )

    def _layer(self, block) -> dict:
        attn, moe = block.attn, block.moe
        layer = {"ln1": _norm(block.ln1), "ln2": _norm(block.ln2), "qkv": _xw(attn.qkv), "proj": _xw(attn.proj)}
        if attn.q_norm is not None:  # F.rms_norm's arguments after the input, for q and for k
            layer["qk_norm"] = [(n.normalized_shape, n.weight.detach(), n.eps) for n in (attn.q_norm, attn.k_norm)]
        else:
            layer["qk_norm"] = None
        layer["common"] = None if moe.common is None else (_xw(moe.common.fc), _xw(moe.common.proj))
        if moe.n_experts:
            router = moe.router  # the x·W weights give its logits; select_experts chooses
            layer["router"] = _xw(router.gate)[0], router.balance_bias
            # per expert (w1, b1, w2, b2), split once: no indexing per token
            parts = [p.detach().unbind(0) if p is not None else [None] * moe.n_experts
                     for p in (moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2)]  # fmt: skip
            layer["experts"] = list(zip(*parts))
        return layer

    def __call__(self, token: int, cache: KVCache, record_routing: bool = False) -> tuple[Tensor, list | None]:
        pos = cache.length
        if pos >= self.config.context_window:
            raise ValueError(f"the KV cache is full ({pos} of context_window={self.config.context_window} positions)")
        x = self.tok_emb[token : token + 1]
        if self.positions is not None:
            x = x + self.positions[pos]
        records = []
        for i, layer in enumerate(self.layers):
            x = x + self._attention(F.layer_norm(x, *layer["ln1"]), layer, cache, i, pos)
            y, record = self._feed_forward(F.layer_norm(x, *layer["ln2"]), layer, record_routing)
            x = x + y
            records.append(record)
        cache.length = pos + 1
        logits = affine(F.layer_norm(x, *self.ln_f), *self.head)
        if self.config.logit_softcap is not None:
            logits = soft_cap(logits, self.config.logit_softcap)
        return logits, records if record_routing else None

    def _attention(self, h: Tensor, layer: dict, cache: KVCache, i: int, pos: int) -> Tensor:
        """Causal self-attention of one position over the cached ones (h (1, C) -> (1, C))."""
        qkv = affine(h, *layer["qkv"]).view(3, 1, self.config.n_heads, 1, -1)  # (q k v, B=1, H, T=1, head size)
        qk, v = qkv[:2], qkv[2]
        if layer["qk_norm"] is not None:
            q_norm, k_norm = layer["qk_norm"]
            qk = torch.stack([F.rms_norm(qk[0], *q_norm), F.rms_norm(qk[1], *k_norm)])
        if self.rotations is not None:
            qk = qk @ self.rotations[pos]
        keys, values = cache.layers[i]  # (B=1, H, W, head size)
        keys.narrow(2, pos, 1).copy_(qk[1])
        values.narrow(2, pos, 1).copy_(v)
        y = F.scaled_dot_product_attention(qk[0], keys.narrow(2, 0, pos + 1), values.narrow(2, 0, pos + 1))
        return affine(y.reshape(1, -1), *layer["proj"])

    def _feed_forward(self, h: Tensor, layer: dict, record_routing: bool) -> tuple[Tensor, RoutingRecord | None]:
        """Common experts plus the router's k experts, gate-weighted (h (1, C) -> (1, C))."""
        out = None
        if layer["common"] is not None:
            fc, proj = layer["common"]
            out = affine(self.activation(affine(h, *fc)), *proj)
        if "router" not in layer:
            return out, None
        gate_weight, balance_bias = layer["router"]
        probs, indices, weights = select_experts(h @ gate_weight, *self.routing, balance_bias)
        experts, gates = indices[0].tolist(), weights[0].tolist()  # on the host: the loop below needs them there
        for e, gate in zip(experts, gates):
            w1, b1, w2, b2 = layer["experts"][e]
            y = affine(self.activation(affine(h, w1, b1)), w2, b2)
            out = y * gate if out is None else torch.add(out, y, alpha=gate)
        if not record_routing:
            return out, None
        return out, RoutingRecord(indices, weights, probs, torch.zeros_like(indices, dtype=torch.bool))
