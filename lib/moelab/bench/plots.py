"""The benchmark's figure: training and generation throughput side by side."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def _variants(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    rows = table[table["measure"].str.startswith(prefix)]
    return rows.assign(variant=rows["measure"].str.removeprefix(prefix))


def plot_benchmark(table: pd.DataFrame, path) -> None:
    """The benchmark's figure (``python -m moelab.bench``): training and generation throughput."""
    import matplotlib.ticker
    import torch

    train, gen = (_variants(table, prefix) for prefix in ("train tok/s ", "generation tok/s "))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    if not train.empty:
        order = list(dict.fromkeys(train["variant"]))  # as measured: naive first
        train.pivot(index="config", columns="variant", values="value")[order].plot.bar(ax=axes[0], rot=0)
        axes[0].legend(fontsize=8)
    axes[0].set(title="Training step throughput", xlabel="config", ylabel="tokens / s")
    if not gen.empty:
        colors = ["tab:green" if "cache" in v else "tab:gray" for v in gen["variant"]]
        gen.set_index("variant")["value"].plot.barh(ax=axes[1], color=colors)
        axes[1].set_xscale("log")
        axes[1].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set(title="Generation (greedy, log scale)", xlabel="tokens / s", ylabel="")
    fig.suptitle(f"moelab benchmark · torch {torch.__version__}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
