"""Figures: training curves, a live loss plot, run comparisons, the benchmark's throughput."""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import pandas as pd


def plot_training_curves(metrics: pd.DataFrame, title: str = "Training", ax: plt.Axes | None = None) -> plt.Figure:
    """Train and validation bits per byte against tokens seen, the context window on a second axis."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 4.5))
    else:
        fig = ax.figure
    tokens = metrics["tokens"] / 1e6
    ax.plot(tokens, metrics["train_bpb"], color="tab:blue", alpha=0.35, lw=1, label="train (batch)")
    smooth = metrics["train_bpb"].rolling(10, min_periods=1).mean()
    ax.plot(tokens, smooth, color="tab:blue", lw=2, label="train (moving mean of 10 logs)")
    val = metrics.dropna(subset=["val_bpb"])
    ax.plot(val["tokens"] / 1e6, val["val_bpb"], "o-", color="tab:red", lw=2, ms=4, label="validation")
    ax.set(title=title, xlabel="tokens seen (millions)", ylabel="bits per byte")
    window_axis = ax.twinx()
    window_axis.step(tokens, metrics["window"], where="post", color="tab:gray", ls="--", lw=1.2, label="context window")
    window_axis.set_ylabel("context window (bytes)", color="tab:gray")
    window_axis.set_ylim(0, metrics["window"].max() * 1.15)
    window_axis.grid(False)
    lines = ax.get_legend_handles_labels()
    extra = window_axis.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


class LiveLossPlot:
    """A Trainer callback that redraws the training curves in place while training runs.

    In JupyterLab the figure updates under the cell; under papermill the last
    drawing stays in the executed notebook; in a terminal nothing is drawn.
    """

    def __init__(self, title: str = "Training (live)", every_s: float = 5.0) -> None:
        self.title = title
        self.every_s = every_s
        self.rows: list[dict] = []
        self._handle = None
        self._last_draw = 0.0

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if time.monotonic() - self._last_draw >= self.every_s or row.get("val_bpb") == row.get("val_bpb"):
            self.draw()

    def draw(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None or not self.rows:
            return
        fig = plot_training_curves(pd.DataFrame(self.rows), title=self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
        self._last_draw = time.monotonic()


def plot_comparison(results: pd.DataFrame, curves: dict[str, pd.DataFrame], title: str) -> plt.Figure:
    """Validation bpb curves of several runs against tokens seen, and their final values as bars."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for name, metrics in curves.items():
        val = metrics.dropna(subset=["val_bpb"])
        left.plot(val["tokens"] / 1e6, val["val_bpb"], "o-", ms=3, label=name)
    left.set(title=f"{title}: validation curves", xlabel="tokens seen (millions)", ylabel="validation bits per byte")
    left.legend(fontsize=8)
    ordered = results.sort_values("val_bpb")
    right.barh(ordered.index, ordered["val_bpb"], color="tab:red", alpha=0.8)
    for y, value in enumerate(ordered["val_bpb"]):
        right.text(value, y, f" {value:.3f}", va="center", fontsize=9)
    right.set(title="final validation bits per byte (lower is better)", xlabel="bits per byte")
    right.set_xlim(0, ordered["val_bpb"].max() * 1.2)
    right.invert_yaxis()
    fig.tight_layout()
    return fig


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
