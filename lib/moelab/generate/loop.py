"""The decoding loop: a model continues prompts token by token, with its KV cache.

:func:`iter_generate` yields one :class:`~moelab.generate.next_token.GenerationStep` per new
position; :func:`generate` returns the continued sequences. On a CPU at batch 1 the cached
steps go through :class:`~moelab.generate.decoder.TokenDecoder` (the same arithmetic with
fewer operations), or with ``compile_step=True`` through its compiled form
(:class:`~moelab.generate.compiled.CompiledDecoder`); everywhere else through the model's own
cached forward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from moelab.generate.compiled import CompiledDecoder
from moelab.generate.decoder import TokenDecoder
from moelab.generate.next_token import WINDOW_MODES, GenerationStep, check_sampling_args, last_position, sample_next_token
from moelab.nn.model import KVCache, Transformer, eval_mode


@torch.no_grad()
def iter_generate(
    model: Transformer,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    record_routing: bool = False,
    window: str = "slide",
    compile_step: bool = False,
) -> Iterator[GenerationStep]:
    """Yield one GenerationStep per new position (see :func:`generate`)."""
    check_sampling_args(temperature, top_k, top_p, model.config.vocab_size)
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {', '.join(map(repr, WINDOW_MODES))}, got {window!r}")
    if idx.ndim == 1:
        idx = idx.unsqueeze(0)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError("idx must be a non-empty (batch, time) tensor of byte ids; encode a prompt first")
    generator = torch.Generator(device=idx.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    W = model.config.context_window
    keep = max(1, W // 2)  # what "slide" keeps of a full window
    with eval_mode(model):
        decoder = None
        if use_cache and TokenDecoder.applies(model, idx):
            decoder = CompiledDecoder(model) if compile_step else TokenDecoder(model)
        seq = idx
        start = max(0, seq.shape[1] - W)  # the context of the next prediction is seq[:, start:]
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            n = seq.shape[1]
            if window == "slide" and n - start > W:
                start, cache = n - keep, None  # drop the oldest half, refill from the rest
            elif window == "crop" and n > W:
                start, cache = n - W, None  # positions shift every step: recompute exactly
            cached = cache is not None and cache.length == n - 1 - start  # holds all but the last token
            if cached and decoder is not None:
                logits, routing = decoder(int(seq[0, -1]), cache, record_routing)
            else:
                if not cached:  # fill a fresh cache from the context (or recompute it without one)
                    fits = use_cache and (window == "slide" or n < W)
                    cache = KVCache(model.config, seq.shape[0], seq.device, model.tok_emb.weight.dtype) if fits else None
                out = model(seq[:, -1:] if cached else seq[:, start:], kv_cache=cache, record_routing=record_routing)
                logits = out.logits[:, -1, :]
                routing = [None if r is None else last_position(r) for r in out.routing] if record_routing else None
            next_tokens = sample_next_token(logits, temperature, top_k, top_p, generator)
            seq = torch.cat([seq, next_tokens.unsqueeze(1)], dim=1)
            yield GenerationStep(next_tokens, routing)


def generate(
    model: Transformer,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    window: str = "slide",
    compile_step: bool = False,
) -> Tensor:
    """Continue each row of idx (B, T) by max_new_tokens bytes; returns (B, T + max_new_tokens).

    temperature 0 is greedy decoding; top_k keeps the k most likely bytes; top_p keeps
    the smallest set whose probability reaches p (nucleus). ``seed`` makes sampling
    reproducible. Inputs longer than the context window are cropped to its last
    ``context_window`` (W) tokens. Past the window:

    - ``window="slide"`` (default): when the window is full, the oldest half is dropped
      and the KV cache refilled from the remaining W/2 tokens in one forward; every
      token then sees between W/2 and W tokens of context, as ``evaluate`` scores with
      stride W/2, and the cache serves all other steps.
    - ``window="crop"``: every step recomputes the last W tokens, exactly what full
      recomputation gives, at the cost of a W-token forward per token.

    ``use_cache=False`` recomputes the same contexts without the cache. ``compile_step=True``
    runs the one-token steps compiled (CPU, batch 1): the same tokens, faster once the
    first step has compiled (seconds; see :mod:`moelab.generate.compiled`).
    """
    new = [
        step.tokens
        for step in iter_generate(
            model,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            use_cache=use_cache,
            window=window,
            compile_step=compile_step,
        )
    ]
    idx = idx.unsqueeze(0) if idx.ndim == 1 else idx
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx
