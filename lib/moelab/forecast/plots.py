"""Figures of notebook 06: the series, their tokenization, training, and fan charts of the forecasts."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from moelab.forecast.forecaster import ForecastEvaluation
from moelab.forecast.series import axis_labels, mean_scale, scaled_windows, sliding_windows


def plot_series(evaluations: list[ForecastEvaluation]) -> plt.Figure:
    """Each series in full, the evaluated blocks shaded (the model trains on what lies before them)."""
    fig, axes = plt.subplots(len(evaluations), 1, figsize=(10, 2.8 * len(evaluations)), squeeze=False)
    for ax, ev in zip(axes[:, 0], evaluations):
        ax.plot(ev.series.index, ev.series.to_numpy(), lw=1, color="C0")
        ax.axvspan(ev.series.index[ev.origins[0]], ev.series.index[-1], color="C1", alpha=0.15,
                   label=f"evaluated: {len(ev.origins)} origins × {ev.config.horizon} points")  # fmt: skip
        xlabel, ylabel = axis_labels(ev.name, ev.series)
        ax.set(title=ev.name, xlabel=xlabel, ylabel=ylabel)
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_tokenization(ev: ForecastEvaluation) -> plt.Figure:
    """Left: the scaled training values and the bins' range; right: one window, its tokens' values."""
    forecaster = ev.forecasters[next(iter(ev.forecasters))]
    q, c = forecaster.quantizer, ev.config
    values = ev.series.to_numpy(dtype=float)
    window = values[ev.origins[0] - c.context : ev.origins[0]]
    scale = mean_scale(window)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4))
    scaled = scaled_windows(sliding_windows(values[: ev.origins[0]], c.context + c.horizon), c.context)
    left.hist(scaled.ravel(), bins=80, color="C0")
    for edge in (q.low, q.high):
        left.axvline(edge, color="C3", ls="--")
    left.set(title=f"{ev.name}: scaled windows before the first origin; bin centers {q.low:.3g} … {q.high:.3g} (dashed)",
             xlabel="value / mean |context|", ylabel="count")  # fmt: skip
    left.title.set_fontsize(9)
    tokens = q.encode(window, scale)
    right.plot(window, color="C0", lw=1.5, label="values")
    right.step(np.arange(len(window)), q.decode(tokens, scale), where="mid", color="C1", lw=1, label="bin centers × scale")
    right.set(title=f"the last context before the first origin: {len(set(tokens.tolist()))} distinct tokens of {q.n_bins}",
              xlabel="position in the context", ylabel=axis_labels(ev.name, ev.series)[1])  # fmt: skip
    right.title.set_fontsize(9)
    right.legend()
    fig.tight_layout()
    return fig


def plot_losses(evaluations: list[ForecastEvaluation]) -> plt.Figure:
    """Training loss (20-step mean) and validation loss over the horizon, one color per series, a line per seed."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, ev in enumerate(evaluations):
        for j, f in enumerate(ev.forecasters.values()):
            first = j == 0
            smooth = f.losses["loss"].rolling(20, min_periods=1).mean()
            ax.plot(f.losses["step"], smooth, color=f"C{i}", alpha=1 if first else 0.4, lw=1,
                    label=f"{ev.name}: training" if first else None)  # fmt: skip
            val = f.losses.dropna(subset=["val_loss"])
            ax.plot(val["step"], val["val_loss"], color=f"C{i}", ls="--", alpha=1 if first else 0.4, lw=1,
                    label=f"{ev.name}: validation (horizon positions)" if first else None)  # fmt: skip
            ax.axvline(f.best_step, color=f"C{i}", lw=0.5, alpha=0.5)
    ax.set(title="Loss per step (next-bin cross-entropy); thin lines: the steps whose weights were kept",
           xlabel="step", ylabel="nats")  # fmt: skip
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_forecasts(evaluations: list[ForecastEvaluation]) -> plt.Figure:
    """Fan charts: at every origin, moelab's median and 80% band (first seed) beside ETS and seasonal naive."""
    fig, axes = plt.subplots(len(evaluations), 1, figsize=(11, 3.2 * len(evaluations)), squeeze=False)
    for ax, ev in zip(axes[:, 0], evaluations):
        c, index, values = ev.config, ev.series.index, ev.series.to_numpy(dtype=float)
        start = max(0, ev.origins[0] - c.context)
        ax.plot(index[start:], values[start:], color="black", lw=1.2, label="actual")
        for k, origin in enumerate(ev.origins):
            when = index[origin : origin + c.horizon]
            fc = ev.forecasts[("moelab", origin)]
            ax.fill_between(when, fc.low, fc.high, color="C0", alpha=0.25, lw=0, label="moelab 10–90%" if k == 0 else None)
            ax.plot(when, fc.point, color="C0", lw=1.5, label="moelab median" if k == 0 else None)
            for method, color in (("ETS", "C2"), ("seasonal naive", "C3")):
                ax.plot(when, ev.forecasts[(method, origin)].point, color=color, lw=1, ls="--",
                        label=method if k == 0 else None)  # fmt: skip
            ax.axvline(index[origin], color="grey", lw=0.5)
        xlabel, ylabel = axis_labels(ev.name, ev.series)
        ax.set(title=f"{ev.name}: forecasts from {len(ev.origins)} origins (grey lines), {c.horizon} points each",
               xlabel=xlabel, ylabel=ylabel)  # fmt: skip
        ax.legend(loc="upper left", fontsize=8, ncol=5)
    fig.tight_layout()
    return fig
