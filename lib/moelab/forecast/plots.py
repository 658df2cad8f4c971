"""Figures of notebook 06: what pretraining reads, how it trained, and how it scores on held-out series."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, NullFormatter, StrMethodFormatter

from moelab.forecast.benchmark import REFERENCE, BenchmarkResult
from moelab.forecast.pretrain import PretrainedForecaster
from moelab.forecast.synthetic import random_kernel, sample_gp, ts_mixup


def plot_synthetic(pool: dict[str, list[np.ndarray]], length: int, n: int = 4, seed: int = 0) -> plt.Figure:
    """Top row: KernelSynth draws, titled with their kernel; bottom row: TSMixup mixtures of ``pool``'s series."""
    rng = np.random.default_rng(seed)
    series = [s for group in pool.values() for s in group]
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 5.2), squeeze=False)
    for ax in axes[0]:
        name, kernel = random_kernel(rng, length)
        ax.plot(sample_gp(rng, kernel, length), lw=1, color="C0")
        ax.set_title(name if len(name) < 48 else name[:45] + "…", fontsize=7)
    for ax in axes[1]:
        ax.plot(ts_mixup(rng, series, length), lw=1, color="C1")
        ax.set_title("TSMixup of public series", fontsize=8)
    for ax in axes.flat:
        ax.set(xlabel="point", yticks=[])
    axes[0][0].set_ylabel("KernelSynth")
    axes[1][0].set_ylabel("TSMixup")
    fig.suptitle(f"What pretraining reads: windows of {length} points, drawn afresh for every batch")
    fig.tight_layout()
    return fig


def plot_pretraining(forecaster: PretrainedForecaster) -> plt.Figure:
    """Training loss (50-step mean) and the held-out windows' loss over the horizon positions, per step."""
    losses = forecaster.losses
    val = losses.dropna(subset=["val_loss"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(losses["step"], losses["loss"].rolling(50, min_periods=1).mean(), lw=1, label="training (50-step mean)")
    ax.plot(val["step"], val["val_loss"], "o-", ms=3, lw=1, label="held-out windows, horizon positions")
    ax.axvline(forecaster.best_step, color="grey", lw=0.8, ls="--", label=f"kept: step {forecaster.best_step}")
    seconds = forecaster.train_seconds
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    ax.set(title=f"Pretraining: {int(losses['step'].iloc[-1])} steps in {took} on {forecaster.cpu}",
           xlabel="step", ylabel="next-bin cross-entropy (nats)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    return fig


def plot_benchmark(result: BenchmarkResult, metric: str = "MASE") -> plt.Figure:
    """Left: each series' ``metric`` relative to seasonal naive, one marker per method (log scale);
    right: each method's geometric mean over the series with its 95% interval."""
    relative = result.relative(metric)
    order = relative[[m for m in result.methods if m.startswith("moelab")][0]].sort_values().index
    methods = [m for m in result.methods if m != REFERENCE]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.28 * len(order) + 2), width_ratios=[2, 1])
    for i, method in enumerate(methods):
        left.scatter(relative.loc[order, method], range(len(order)), s=18, color=f"C{i}", label=method, zorder=3)
    left.axvline(1, color="grey", lw=1)
    _ratio_axis(left)
    left.set_yticks(range(len(order)), order, fontsize=7)
    left.set(title=f"{metric} relative to seasonal naive, per held-out series", xlabel=f"relative {metric} (log scale; below 1: better)")
    left.legend(fontsize=8)
    summary = result.aggregate()
    for i, method in enumerate(methods):
        mean, low, high = (summary.loc[method, f"relative {metric}{s}"] for s in ("", " low", " high"))
        right.errorbar(mean, i, xerr=[[mean - low], [high - mean]], fmt="o", color=f"C{i}", capsize=4)
    right.axvline(1, color="grey", lw=1)
    _ratio_axis(right)
    right.set_yticks(range(len(methods)), methods)
    right.invert_yaxis()
    right.set(title=f"Geometric mean over {len(order)} series\n(95% CI)", xlabel=f"relative {metric} (log scale)")
    fig.tight_layout()
    return fig


# ratio ticks far enough apart on a log axis: coarse ones for a wide span, fine ones for a narrow one
COARSE_RATIOS, FINE_RATIOS = (0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10), (0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.5, 2)


def _ratio_axis(ax: plt.Axes) -> None:
    """A log-scaled x axis of ratios labelled as plain numbers (0.5, 1, 2), so that its labels never
    run into each other as ``3×10⁻¹`` beside ``4×10⁻¹`` did."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ticks = COARSE_RATIOS if high / low > 3 else FINE_RATIOS
    ax.xaxis.set_major_locator(FixedLocator([t for t in ticks if low <= t <= high]))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_forecasts(result: BenchmarkResult, values: dict[str, np.ndarray], show: int = 36) -> plt.Figure:
    """One panel per series of ``values`` (its values by name): the last ``show`` points before the
    benchmark's last origin, the actual future, and each method's point forecast there (moelab's with
    its 80% band)."""
    fig, axes = plt.subplots(len(values), 1, figsize=(10, 3.0 * len(values)), squeeze=False)
    for ax, (name, series) in zip(axes[:, 0], values.items()):
        origin = int(result.scores.loc[result.scores["series"] == name, "origin"].max())
        horizon = len(result.forecasts[(name, REFERENCE, origin)].point)
        past, future = np.arange(max(0, origin - show), origin), np.arange(origin, origin + horizon)
        ax.plot(past, series[past], color="black", lw=1.2, label="history")
        ax.plot(future, series[future], color="black", lw=1.2, ls=":", label="actual")
        for i, method in enumerate(result.methods):
            fc, ours = result.forecasts[(name, method, origin)], method.startswith("moelab")
            if ours:
                ax.fill_between(future, fc.low, fc.high, color=f"C{i}", alpha=0.2, lw=0)
            ax.plot(future, fc.point, color=f"C{i}", lw=1.5 if ours else 1, ls="-" if ours else "--", label=method)
        ax.set(title=f"{name}: forecasts from the last origin", xlabel="point", ylabel="value")
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    return fig
