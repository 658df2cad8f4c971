"""Figures of a training run: training curves, a live loss plot, load balance over training."""

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
    window_axis.set_ylabel("context window (tokens)", color="tab:gray")
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


def plot_balance_over_training(metrics: pd.DataFrame, title: str) -> plt.Figure:
    """Each layer's MaxVio, (max − mean) / mean expert load, at every logged step (0 = balanced)."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    columns = sorted((c for c in metrics.columns if c.startswith("maxvio_l")), key=lambda c: int(c.removeprefix("maxvio_l")))
    for column in columns:
        logged = metrics.dropna(subset=[column])
        ax.plot(logged["tokens"] / 1e6, logged[column], lw=1.2, label=f"layer {column.removeprefix('maxvio_l')}")
    ax.set(title=title, xlabel="tokens seen (millions)", ylabel="MaxVio of the training batch")
    ax.set_ylim(bottom=0)
    if columns:
        ax.legend(fontsize=8, ncol=min(len(columns), 6))
    fig.tight_layout()
    return fig


