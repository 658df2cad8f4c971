"""`python -m moelab`: the environment, the presets, and the runs this workspace has."""

from __future__ import annotations

import pandas as pd
import torch

from . import __version__
from .presets import presets_table
from .sampling import list_runs


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"moelab {__version__} · torch {torch.__version__} · device {device} · {torch.get_num_threads()} threads\n")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(presets_table().drop(columns="description").to_string(), "\n")
    runs = list_runs()
    print("trained runs (newest first): " + (", ".join(runs) if runs else "none yet (notebook 02 or python -m moelab.train)"))


if __name__ == "__main__":
    main()
