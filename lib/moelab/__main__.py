"""moelab's command line: ``moelab COMMAND [ARGS]``, the same as ``python -m moelab COMMAND [ARGS]``.

Commands (``moelab COMMAND --help`` for each):
  info       the environment, the presets and the trained runs (the default)
  runs       every run on disk as a table (status, settings, size, validation bits per byte)
  prepare    a dataset from the Machado corpus, a folder of .txt files or a CSV/parquet table
  train      train a model on a prepared dataset
  evaluate   bits per byte of text files under a checkpoint
  sweep      variants × seeds with confidence intervals (a spec file or a built-in study)
  forecast   train and score a forecaster on a CSV series or a built-in one
  bench      the side-by-side performance benchmark
  run        the notebooks in order with papermill, then the report (what `make run` calls)

Examples:
  moelab prepare mytexts/
  moelab train --dataset mytexts --run-name mine --preset cpu
  moelab evaluate --checkpoint data/checkpoints/mine/ckpt_0001000.pt some.txt
  moelab sweep window-schedule-quick
  moelab runs

Each command is also ``python -m moelab.<command>`` (train, evaluate, sweep, forecast, bench).
"""

from __future__ import annotations

import importlib
import sys

import pandas as pd
import torch

from moelab import __version__
from moelab.config.presets import presets_table
from moelab.runs.files import list_runs
from moelab.runs.registry import runs_table

# command -> the module whose main(argv) runs it
COMMANDS = {
    "prepare": "moelab.data.cli",
    "train": "moelab.train.cli",
    "evaluate": "moelab.evaluate.cli",
    "sweep": "moelab.sweep.runner",
    "forecast": "moelab.forecast.cli",
    "bench": "moelab.bench.cli",
    "run": "moelab.views.pipeline",
}


def info() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"moelab {__version__} · torch {torch.__version__} · device {device} · {torch.get_num_threads()} threads\n")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        print(presets_table().drop(columns="description").to_string(), "\n")
    runs = list_runs()
    print("trained runs (newest first): " + (", ".join(runs) if runs else "none yet (notebook 02 or moelab train)"))
    print("moelab runs: a table of every run; moelab --help: every command")
    return 0


def runs() -> int:
    table = runs_table().round({"wall_s": 1, "tokens_per_s": 0, "final_val_bpb": 4, "best_val_bpb": 4})
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        print(table.to_string() if len(table) else "no runs yet (notebook 02 or moelab train)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else ("info", [])
    if command in ("-h", "--help", "help"):
        print(__doc__.replace("``", "`"))
        return 0
    if command == "--version":
        print(f"moelab {__version__}")
        return 0
    if command in ("info", "runs"):
        if rest:
            print(f"error: moelab {command} takes no arguments (got {' '.join(rest)})", file=sys.stderr)
            return 2
        return info() if command == "info" else runs()
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: info, runs, {', '.join(COMMANDS)} (moelab --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    return importlib.import_module(COMMANDS[command]).main(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
