"""Bits per byte of any text under a trained model.

``python -m moelab.evaluate --checkpoint PATH FILE... [--stride N] [--clean] [--save-cleaned DIR]``

Every byte is scored exactly once. Windows of the model's context length slide by
``stride`` (default: half the window); the first window scores all its positions,
each later one only the bytes the previous windows did not reach, so every byte
after the first window is predicted from at least ``context - stride`` bytes of
context. The first byte is predicted after a newline (the start of a paragraph).
This is the number to compare with compressors and n-gram models on the same bytes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_model
from .data import clean_text
from .model import Transformer, eval_mode

LN2 = math.log(2.0)
START = b"\n"  # the context of the first byte


@dataclass
class EvalResult:
    bytes: int
    nats: float  # total over all bytes
    stride: int
    context_window: int

    @property
    def bits_per_byte(self) -> float:
        return self.nats / LN2 / self.bytes if self.bytes else math.nan


@torch.no_grad()
def score_bytes(model: Transformer, data: bytes, stride: int | None = None, batch_size: int = 16) -> EvalResult:
    """Total negative log-likelihood (nats) of data, every byte scored once (see module docs)."""
    window = model.config.context_window
    stride = stride or max(1, window // 2)
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in 1..context_window={window}, got {stride}")
    if not data:
        return EvalResult(0, 0.0, stride, window)
    device = next(model.parameters()).device
    sequence = torch.frombuffer(bytearray(START + data), dtype=torch.uint8).long()
    n_targets = len(data)

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
    return EvalResult(n_targets, total, stride, window)


def evaluate(
    checkpoint: str | os.PathLike | Transformer,
    text: str | bytes,
    *,
    stride: int | None = None,
    clean: bool = False,
    device: str | None = None,
) -> EvalResult:
    """Bits per byte of ``text`` (str is encoded as UTF-8) under a checkpoint or model.

    ``clean=True`` applies :func:`moelab.data.clean_text` first, as for the training data.
    """
    model = checkpoint if isinstance(checkpoint, Transformer) else load_model(checkpoint, map_location=device or "cpu")
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if clean:
        data = clean_text(data.decode("utf-8", errors="replace")).encode("utf-8")
    return score_bytes(model, data, stride)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moelab.evaluate", description="Bits per byte of text files.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a moelab checkpoint (.pt)")
    parser.add_argument("files", nargs="+", type=Path, help="text files to score")
    parser.add_argument("--stride", type=int, default=None, help="window stride (default: half the context window)")
    parser.add_argument("--clean", action="store_true", help="apply the training data's cleaning (moelab.data.clean_text) first")
    parser.add_argument("--save-cleaned", type=Path, metavar="DIR", help="write the exact bytes scored, one file per input")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.save_cleaned and not args.clean:
        parser.error("--save-cleaned needs --clean")
    try:
        model = load_model(args.checkpoint, map_location=args.device or "cpu")
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for path in args.files:
        try:
            data = path.read_bytes()
        except OSError as err:
            print(f"error: cannot read {path}: {err.strerror}", file=sys.stderr)
            return 2
        if args.clean:
            data = clean_text(data.decode("utf-8", errors="replace")).encode("utf-8")
            if args.save_cleaned:
                args.save_cleaned.mkdir(parents=True, exist_ok=True)
                (args.save_cleaned / path.name).write_bytes(data)
        result = score_bytes(model, data, args.stride)
        rows.append({"file": str(path), "bytes": result.bytes, "nats": result.nats, "bits_per_byte": result.bits_per_byte})
    table = pd.DataFrame(rows)
    total_bytes = table["bytes"].sum()
    overall = table["nats"].sum() / LN2 / total_bytes if total_bytes else math.nan
    window = model.config.context_window
    stride = args.stride or max(1, window // 2)
    print(
        f"checkpoint {args.checkpoint} · context {window} bytes, stride {stride}: every byte scored once, "
        f"the first after a newline{' · cleaned as the training data' if args.clean else ''}"
    )
    print(table[["file", "bytes", "bits_per_byte"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"overall: {overall:.4f} bits per byte over {total_bytes:,} bytes")
    return 0


class _CallableModule(types.ModuleType):
    """`moelab.evaluate(checkpoint, text)` calls the function even though `moelab.evaluate` is this module."""

    def __call__(self, *args, **kwargs) -> EvalResult:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
