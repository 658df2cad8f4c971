"""Scoring text under a model: bits per byte of any text.

:func:`score_text` (a checkpoint or model, and text) and :func:`score_bytes` (a model
and bytes) score every token exactly once: windows of the model's context length slide by
``stride`` (default: half the window); the first window scores all its positions,
each later one only the tokens the previous windows did not reach, so every token
after the first window is predicted from at least ``context - stride`` tokens of
context. The first token is predicted after the last token of the separator that
precedes every work in the training data (a newline for bytes).
Bits per byte are the total nats / ln 2 / the UTF-8 bytes of the text, whatever the
model's tokenizer (bytes or BPE, :mod:`moelab.data.tokenizer`), so models with different
tokenizers are compared on the same bytes. This is the number to compare with
compressors and n-gram models (``python -m moelab.evaluate`` prints it for files).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from moelab.runs.checkpoint import load_model, load_tokenizer
from moelab.data import SEPARATOR, clean_text
from moelab.data.stats import LN2
from moelab.nn.model import Transformer, eval_mode
from moelab.data.tokenizer import model_tokenizer


@dataclass
class EvalResult:
    bytes: int  # UTF-8 bytes of the text scored
    nats: float  # total over all tokens
    stride: int  # in tokens
    context_window: int  # in tokens
    tokens: int | None = None  # tokens scored (= bytes for the bytes tokenizer)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / LN2 / self.bytes if self.bytes else math.nan

    def to_dict(self) -> dict:
        """The fields and bits per byte, for a JSON file (a run's ``val_split.json``)."""
        return {**asdict(self), "bits_per_byte": self.bits_per_byte}


@torch.no_grad()
def score_bytes(
    model: Transformer, data: bytes, stride: int | None = None, batch_size: int = 16, tokenizer=None
) -> EvalResult:
    """Total negative log-likelihood (nats) of data, every token scored once (see module docs).

    ``tokenizer``: the model's (default: bytes). With BPE, data is read as UTF-8 (bytes that
    are not become U+FFFD, as the corpus's default decoding does) and the bytes counted are
    those of the text scored.
    """
    tokenizer = model_tokenizer(tokenizer, model.config.vocab_size, "score")
    window = model.config.context_window
    stride = stride or max(1, window // 2)
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in 1..context_window={window}, got {stride}")
    start = tokenizer.encode(SEPARATOR)[-1:]  # what precedes a work in training: the context of the first token
    if tokenizer.name == "bytes":
        sequence = torch.frombuffer(bytearray(bytes(start) + data), dtype=torch.uint8).long()
    else:
        text = data.decode("utf-8", errors="replace")
        data = text.encode("utf-8")
        sequence = torch.tensor(start + tokenizer.encode(text), dtype=torch.long)
    if not data:
        return EvalResult(0, 0.0, stride, window, 0)
    device = next(model.parameters()).device
    n_targets = len(sequence) - 1

    # (begin, end, first scored target) per window; target t is sequence[t + 1]
    spans, begin, scored_until = [], 0, 0
    while True:
        end = min(begin + window, n_targets)
        spans.append((begin, end, scored_until))
        scored_until = end
        if end == n_targets:
            break
        begin += stride

    total = 0.0
    full = [s for s in spans if s[1] - s[0] == window]
    short = [s for s in spans if s[1] - s[0] != window]
    with eval_mode(model):
        for group in [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in short]:
            x = torch.stack([sequence[b:e] for b, e, _ in group]).to(device)
            y = torch.stack([sequence[b + 1 : e + 1] for b, e, _ in group]).to(device)
            logits = model(x).logits
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
            positions = torch.arange(x.shape[1], device=device)
            for row, (b, _, first) in enumerate(group):
                total += nll[row, positions + b >= first].sum().item()
    return EvalResult(len(data), total, stride, window, n_targets)


def score_text(
    checkpoint: str | os.PathLike | Transformer,
    text: str | bytes,
    *,
    stride: int | None = None,
    clean: bool = False,
    device: str | torch.device | None = "auto",
    tokenizer=None,
) -> EvalResult:
    """Bits per byte of ``text`` (str is encoded as UTF-8) under a checkpoint or model.

    ``clean=True`` applies :func:`moelab.data.clean_text` first, as for the training data.
    A checkpoint is loaded on ``device`` (``"auto"``: CUDA when present, else the CPU;
    see :func:`moelab.device.resolve_device`) with its own tokenizer; a model is scored
    where it is, with ``tokenizer`` (default: bytes).
    """
    if isinstance(checkpoint, Transformer):
        model = checkpoint
    elif tokenizer is not None:
        raise ValueError("a checkpoint is scored with its own tokenizer: pass tokenizer only with a model")
    else:
        model, tokenizer = load_model(checkpoint, map_location=device), load_tokenizer(checkpoint)
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if clean:
        data = clean_text(data.decode("utf-8", errors="replace")).encode("utf-8")
    return score_bytes(model, data, stride, tokenizer=tokenizer)


