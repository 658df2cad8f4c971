"""Bits per byte of text files under a trained model (the command line of :mod:`moelab.evaluate.scoring`).

``python -m moelab.evaluate --checkpoint PATH FILE... [--stride N] [--clean] [--save-cleaned DIR]``

Every byte is scored exactly once with sliding windows (see :func:`moelab.evaluate.scoring.score_bytes`);
from Python use :func:`moelab.evaluate.scoring.score_text`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from moelab.runs.checkpoint import CheckpointError, load_model, load_tokenizer
from moelab.data import clean_text
from moelab.data.stats import LN2
from moelab.evaluate.scoring import score_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moelab evaluate", description="Bits per byte of text files.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a moelab checkpoint (.pt)")
    parser.add_argument("files", nargs="+", type=Path, help="text files to score")
    parser.add_argument("--stride", type=int, default=None, help="window stride (default: half the context window)")
    parser.add_argument("--clean", action="store_true", help="apply the training data's cleaning (moelab.data.clean_text) first")
    parser.add_argument("--save-cleaned", type=Path, metavar="DIR", help="write the exact bytes scored, one file per input")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU; the default), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    if args.save_cleaned and not args.clean:
        parser.error("--save-cleaned needs --clean")
    try:
        model = load_model(args.checkpoint, map_location=args.device)
        tokenizer = load_tokenizer(args.checkpoint)
    except (CheckpointError, ValueError) as err:
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
        result = score_bytes(model, data, args.stride, tokenizer=tokenizer)
        rows.append({"file": str(path), "bytes": result.bytes, "tokens": result.tokens, "nats": result.nats,
                     "bits_per_byte": result.bits_per_byte})  # fmt: skip
    table = pd.DataFrame(rows)
    total_bytes = table["bytes"].sum()
    overall = table["nats"].sum() / LN2 / total_bytes if total_bytes else math.nan
    window, stride = result.context_window, result.stride  # the stride score_bytes used (its default: window / 2)
    print(
        f"checkpoint {args.checkpoint} on {next(model.parameters()).device} · {tokenizer.name} tokenizer · context {window} "
        f"tokens, stride {stride}: every token scored once, the first after a newline"
        f"{' · cleaned as the training data' if args.clean else ''}"
    )
    print(table[["file", "bytes", "bits_per_byte"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"overall: {overall:.4f} bits per byte over {total_bytes:,} bytes")
    return 0
