"""Figures of a sweep: means over seeds with their intervals, and curves over seeds."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


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
            said = row.verdict if row.n_paired >= 2 else "one seed: no interval, no verdict"
            if getattr(row, "verdict_holm", row.verdict) != row.verdict:
                said += f" (after Holm: {row.verdict_holm})"
            right.annotate(f"{row.diff:+.3f}: {said}", (row.diff, i), xytext=(0, 8), textcoords="offset points",
                           ha="center", fontsize=8)  # fmt: skip
    right.axvline(0, color="black", lw=1)
    left.set_yticks(y, summary["variant"])
    left.set_ylim(len(summary) - 0.4, -0.6)
    seeds = "one seed each: values only" if summary["n"].max() < 2 else "mean over seeds, 95% CI"
    left.set(title=f"{title}: {seeds}", xlabel=metric)
    right.set(title=f"difference from {summary['variant'].iloc[0]!r}, paired by seed" + (", 95% CI" if summary["n"].max() >= 2 else ""),
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
