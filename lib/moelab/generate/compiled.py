"""A compiled one-token step: the decoder's arithmetic in shapes that never change, compiled once.

:class:`~moelab.generate.decoder.TokenDecoder` runs about 600 operations a token on the
``cpu`` model and pays a few µs of dispatch for each. :class:`CompiledDecoder` writes the
same step so that every shape is fixed: the position is a tensor, attention reads the whole
preallocated KV cache with a mask of the filled positions, and the token's k experts are
gathered from the stacked expert weights by index, without reading the router's choice to
the host. Inductor then compiles it once (C++ kernels that fuse the small operations,
called from C++ with ``cpp_wrapper``). The weights are inputs of the compiled step, not
constants baked into it: another model of the same configuration, or the same model after
more training, reuses the compiled code (and Inductor's on-disk cache serves later processes).

Compiling costs seconds; ``make bench`` reports how long, and after how many tokens the
faster steps have paid it back. It pays for small models, whose tokens cost their operations
(the ``cpu`` preset's), and not for wider ones: Inductor's fused gather-and-reduce reads the
experts' weights at about half the rate of BLAS's single-row products, which the uncompiled
decoder uses (``docs/performance.md``). Where Inductor cannot compile (no C++ compiler, an
unsupported platform), the first step warns once and the decoder hands every step to the
:class:`TokenDecoder` it wraps: the same result, at the uncompiled speed.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from moelab.generate.decoder import TokenDecoder
from moelab.nn.kv_cache import KVCache
from moelab.nn.model import soft_cap
from moelab.nn.moe.activations import affine
from moelab.nn.moe.router import RoutingRecord, select_experts

_compile_failure: str | None = None  # why Inductor could not compile in this process, once it failed
RECOMPILE_LIMIT = 64  # model configurations one process may compile the step for


def static_step(settings: tuple, weights: dict, token: Tensor, pos: Tensor, keys: list, values: list) -> tuple:
    """One position of the model at batch 1, in fixed shapes: (logits (1, V), routing per layer).

    ``settings``: (n_heads, activation, score, k, logit soft cap), plain values the trace
    specializes on; ``weights``: :meth:`CompiledDecoder._weights`; ``token``, ``pos``: (1,) int64;
    ``keys``, ``values``: each layer's cache, (1, H, W, head size), written at ``pos`` (one input per
    layer: Inductor then writes the new row in place, where views of one (L, …) tensor made it
    copy the whole cache for every layer). The routing of a MoE layer is (probs (1, N),
    experts (1, k), gates (1, k)), of a dense one None.
    """
    n_heads, activation, score, top_k, softcap = settings
    x = weights["tok_emb"][token]  # (1, C)
    if weights["positions"] is not None:
        x = x + weights["positions"][pos]
    filled = (torch.arange(keys[0].shape[2], device=pos.device) <= pos).view(1, -1)  # (1, W): positions up to pos
    routing = []
    for i, layer in enumerate(weights["layers"]):
        h = F.layer_norm(x, *layer["ln1"])
        qkv = affine(h, *layer["qkv"]).view(3, 1, n_heads, 1, -1)  # (q k v, B=1, H, T=1, head size)
        qk, v = qkv[:2], qkv[2]
        if layer["qk_norm"] is not None:
            q_norm, k_norm = layer["qk_norm"]
            qk = torch.stack([F.rms_norm(qk[0], *q_norm), F.rms_norm(qk[1], *k_norm)])
        if weights["rotations"] is not None:
            qk = qk @ weights["rotations"][pos]
        keys[i].index_copy_(2, pos, qk[1])  # each layer's cache its own input: updated in place
        values[i].index_copy_(2, pos, v)
        y = F.scaled_dot_product_attention(qk[0], keys[i], values[i], attn_mask=filled)
        x = x + affine(y.reshape(1, -1), *layer["proj"])
        y, route = _feed_forward(F.layer_norm(x, *layer["ln2"]), layer, activation, score, top_k)
        x = x + y
        routing.append(route)
    logits = affine(F.layer_norm(x, *weights["ln_f"]), *weights["head"])
    return (logits if softcap is None else soft_cap(logits, softcap)), routing


def _feed_forward(h: Tensor, layer: dict, activation, score: str, top_k: int) -> tuple[Tensor, tuple | None]:
    """Common experts plus the k routed ones gathered by index, gate-weighted (h (1, C) -> (1, C))."""
    out = torch.zeros_like(h)
    if layer["common"] is not None:
        fc, proj = layer["common"]
        out = affine(activation(affine(h, *fc)), *proj)
    if "router" not in layer:
        return out, None
    gate_weight, balance_bias = layer["router"]
    probs, experts, gates = select_experts(h @ gate_weight, score, top_k, balance_bias)
    w1, b1, w2, b2 = layer["stacked"]  # w1 (n, hidden, C), w2 (n, C, hidden): transposed
    chosen = experts[0]  # (k,)
    # one row's products as multiply-and-sum along contiguous rows of the gathered weights (stored
    # transposed): Inductor fuses the gather into the reduction (a gathered bmm measured slower)
    hidden = (w1[chosen] * h.view(1, 1, -1)).sum(-1)  # (k, hidden)
    if b1 is not None:
        hidden = hidden + b1[chosen]
    y = (w2[chosen] * activation(hidden).unsqueeze(1)).sum(-1)  # (k, C)
    if b2 is not None:
        y = y + b2[chosen]
    y = (y * gates[0].to(y.dtype).unsqueeze(1)).sum(0, keepdim=True)
    return out + y, (probs, experts, gates)


@functools.cache
def _compiled_step():
    """static_step compiled (made on first use: importing generation loads no compiler)."""
    return torch.compile(static_step, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})


class CompiledDecoder:
    """:class:`TokenDecoder`'s one-token steps through :func:`static_step` compiled by Inductor.

    The same interface and result (logits to rounding, the same routing); built once per
    generation from the model's weights, which must not change while it is used. The first
    step of a configuration in a process compiles (seconds); later ones, for any model of
    that configuration, do not.
    """

    def __init__(self, model) -> None:
        self.fallback = TokenDecoder(model)
        config = model.config
        self.settings = (config.n_heads, self.fallback.activation, *self.fallback.routing, config.logit_softcap)
        self.weights = self._weights(self.fallback)
        self.compiled_once = False  # a step has run compiled: later errors are errors, not a missing compiler

    applies = staticmethod(TokenDecoder.applies)

    @staticmethod
    def available() -> bool:
        """False once compiling failed in this process (the decoder then steps uncompiled)."""
        return _compile_failure is None

    @staticmethod
    def _weights(decoder: TokenDecoder) -> dict:
        """The decoder's weights, its experts' stacked again and transposed: "stacked" is (w1ᵀ (n, h, d),
        b1 (n, h), w2ᵀ (n, d, h), b2 (n, d)), each row of a product contiguous."""
        layers = []
        for layer in decoder.layers:
            layer = dict(layer)
            if "experts" in layer:
                w1, b1, w2, b2 = zip(*layer.pop("experts"))
                stack = lambda ps, t=False: None if ps[0] is None else torch.stack([p.T if t else p for p in ps])  # noqa: E731
                layer["stacked"] = stack(w1, True), stack(b1), stack(w2, True), stack(b2)
            layers.append(layer)
        return {
            "tok_emb": decoder.tok_emb,
            "positions": decoder.positions,
            "rotations": decoder.rotations,
            "layers": layers,
            "ln_f": decoder.ln_f,
            "head": decoder.head,
        }

    def __call__(self, token: int, cache: KVCache, record_routing: bool = False) -> tuple[Tensor, list | None]:
        pos = cache.length
        if pos >= self.fallback.config.context_window:
            raise ValueError(f"the KV cache is full ({pos} of context_window={self.fallback.config.context_window} positions)")
        if _compile_failure is not None:
            return self.fallback(token, cache, record_routing)
        args = (self.settings, self.weights, torch.tensor([token]), torch.tensor([pos]), *zip(*cache.layers))
        if self.compiled_once:
            logits, routing = _compiled_step()(*args)
        else:
            logits, routing = self._first_step(args)
            if logits is None:
                return self.fallback(token, cache, record_routing)
        cache.length = pos + 1
        if not record_routing:
            return logits, None
        return logits, [None if r is None else _record(*r) for r in routing]

    def _first_step(self, args: tuple) -> tuple:
        """The first step: it compiles when this configuration is new to the process (each
        configuration is one more specialization of the step: allow many, where Dynamo's default
        of 8 would silently run the rest uncompiled). (None, None) where compiling failed."""
        global _compile_failure
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                out = _compiled_step()(*args)
        except Exception as error:  # noqa: BLE001 - any failure to compile means: step uncompiled
            cause = getattr(error, "inner_exception", None) or error  # Dynamo wraps what the backend raised
            _compile_failure = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
            warnings.warn(
                f"torch.compile could not compile the one-token step ({_compile_failure}); "
                "generating with the uncompiled decoder (same tokens, slower). "
                "Inductor needs a working C++ compiler on the CPU (g++ or clang).",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, None
        self.compiled_once = True
        return out


def _record(probs: Tensor, experts: Tensor, gates: Tensor) -> RoutingRecord:
    return RoutingRecord(experts, gates, probs, torch.zeros_like(experts, dtype=torch.bool))


def break_even_tokens(compile_seconds: float, compiled_tok_s: float, uncompiled_tok_s: float) -> float:
    """Tokens after which compiling has paid for itself: compile time over the time saved per token
    (infinite when the compiled step is not faster)."""
    saved = 1 / uncompiled_tok_s - 1 / compiled_tok_s
    return compile_seconds / saved if saved > 0 else math.inf
