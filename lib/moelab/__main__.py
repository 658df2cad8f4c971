"""`python -m moelab`: the environment, the presets and the runs; `python -m moelab runs`: the runs table."""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from moelab import __version__
from moelab.config.presets import presets_table
from moelab.runs.registry import runs_table
from moelab.runs.files import list_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moelab", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["runs"], help="runs: every run on disk as a table")
    args = parser.parse_args(argv)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        if args.command == "runs":
            table = runs_table().round({"wall_s": 1, "tokens_per_s": 0, "final_val_bpb": 4, "best_val_bpb": 4})
            print(table.to_string() if len(table) else "no runs yet (notebook 02 or python -m moelab.train)")
            return 0
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"moelab {__version__} · torch {torch.__version__} · device {device} · {torch.get_num_threads()} threads\n")
        print(presets_table().drop(columns="description").to_string(), "\n")
    runs = list_runs()
    print("trained runs (newest first): " + (", ".join(runs) if runs else "none yet (notebook 02 or python -m moelab.train)"))
    print("python -m moelab runs: a table of every run (status, settings, size, validation bits per byte)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
