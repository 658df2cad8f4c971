"""Figures: training curves, a live loss plot, sweeps (means with intervals, curves over seeds), the benchmark."""

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


def plot_sweep_summary(summary: pd.DataFrame, title: str, metric: str = "validation bits per byte") -> plt.Figure:
    """Left: each variant's mean over seeds with its 95% t-interval. Right: its difference from the
    first variant, paired by seed, with its interval and verdict (the informative panel: the
    seed moves every variant alike, which the pairing removes)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.55 * len(summary) + 1.8), sharey=True)
    y = list(range(len(summary)))
    for ax, center, low, high in ((left, "mean", "ci_low", "ci_high"), (right, "diff", "diff_ci_low", "diff_ci_high")):
        err = [(summary[center] - summary[low]).fillna(0), (summary[high] - summary[center]).fillna(0)]
        ax.errorbar(summary[center], y, xerr=err, fmt="o", color="tab:red", ecolor="tab:gray", elinewidth=2, capsize=4)
    for i, row in enumerate(summary.itertuples()):
        left.annotate(f"{row.mean:.3f} (n={row.n})", (row.mean, i), xytext=(0, 8), textcoords="offset points",
                      ha="center", fontsize=8)  # fmt: skip
        if row.verdict != "reference":
            right.annotate(f"{row.diff:+.3f}: {row.verdict}", (row.diff, i), xytext=(0, 8), textcoords="offset points",
                           ha="center", fontsize=8)  # fmt: skip
    right.axvline(0, color="black", lw=1)
    left.set_yticks(y, summary["variant"])
    left.set_ylim(len(summary) - 0.4, -0.6)
    left.set(title=f"{title}: mean over seeds, 95% CI", xlabel=metric)
    right.set(title=f"difference from {summary['variant'].iloc[0]!r}, paired by seed, 95% CI",
              xlabel=f"{metric} (positive = worse)")  # fmt: skip
    fig.tight_layout()
    return fig


def plot_sweep_curves(curves: pd.DataFrame, title: str) -> plt.Figure:
    """Validation bits per byte against tokens: each variant's mean over seeds, a band from min to max."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for variant, rows in curves.groupby("variant", sort=False):
        by_step = rows.groupby("step").agg(tokens=("tokens", "mean"), mean=("val_bpb", "mean"),
                                           low=("val_bpb", "min"), high=("val_bpb", "max"), n=("seed", "nunique"))  # fmt: skip
        line = ax.plot(by_step["tokens"] / 1e6, by_step["mean"], "o-", ms=3, label=f"{variant} ({by_step['n'].max()} seeds)")
        ax.fill_between(by_step["tokens"] / 1e6, by_step["low"], by_step["high"], color=line[0].get_color(), alpha=0.2)
    ax.set(title=f"{title}: validation curves (mean over seeds, band: min–max)", xlabel="tokens seen (millions)",
           ylabel="validation bits per byte")  # fmt: skip
    ax.legend(fontsize=8)
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
