"""Prepare a dataset from the command line: ``moelab prepare SOURCE`` (or ``python -m moelab prepare``).

SOURCE is ``machado`` (the default corpus), a folder of ``.txt`` files (one work per file;
a subfolder is its category), or a CSV/parquet table with a text column. The dataset is
named after its source unless ``--dataset`` names it, so preparing your own text never
replaces the Machado dataset. Examples::

    moelab prepare mytexts/                       # data/processed/mytexts/
    moelab prepare letters.csv --text-column body --dataset letters
    moelab prepare machado --tokenizer bpe --vocab-size 2048
"""

from __future__ import annotations

import argparse
import sys

from moelab.data.prepare import prepare_dataset
from moelab.data.sources import DECODE_POLICIES, CorpusError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="moelab prepare", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("source", help="machado, a folder of .txt files, or a .csv/.parquet table")
    parser.add_argument("--dataset", help="the dataset's name (default: the source's name)")
    parser.add_argument("--tokenizer", choices=["bytes", "bpe"], default="bytes")
    parser.add_argument("--vocab-size", type=int, help="with --tokenizer bpe: the vocabulary size (at least 257)")
    parser.add_argument("--text-column", default="text", help="a table's column holding the text (default: text)")
    parser.add_argument("--decode-errors", choices=DECODE_POLICIES, default="replace",
                        help="bytes that are not UTF-8: replace (U+FFFD), strict (an error), latin-1")  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of the works for validation")
    parser.add_argument("--test-fraction", type=float, default=0.05, help="share of the works for the test split")
    parser.add_argument("--max-works-per-category", type=int, help="keep only the smallest works of each category")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        prepared = prepare_dataset(
            args.source, args.dataset, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
            text_column=args.text_column, decode_errors=args.decode_errors, val_fraction=args.val_fraction,
            test_fraction=args.test_fraction, max_works_per_category=args.max_works_per_category,
            progress=not args.no_progress,
        )  # fmt: skip
    except (CorpusError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = prepared.catalog["split"].value_counts().to_dict()
    works = ", ".join(f"{s} {n} work{'' if n == 1 else 's'}" for s, n in splits.items())
    print(f"dataset {prepared.path.name!r} in {prepared.path}: {works}")
    print(f"train on it: moelab train --dataset {prepared.path.name} --run-name NAME")
    return 0
