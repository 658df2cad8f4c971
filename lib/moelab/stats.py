"""Telling a result from noise: means over seeds, paired differences and their t-intervals.

A sweep trains every variant with the same seeds, so variant B can be compared with the
reference variant A seed by seed: the differences d_s = B_s - A_s remove what the seed
does to both (initialization, data order, router noise). With n paired seeds,

    diff = mean(d),  95% interval = diff ± t_{0.975, n-1} · std(d) / √n

and the verdict says whether that interval excludes 0. Lower bits per byte is better, so
an interval above 0 is ``worse``, below 0 ``better``, and one containing 0 is
``no detectable difference`` (so is a single seed: it has no interval). Each variant's
own mean gets the same t-interval over its seeds.

A summary compares several variants with one reference, and with k comparisons one of them
crosses the 5% line by chance far more often than 5% of the time. Holm's step-down
correction (``p_holm``, ``verdict_holm``) keeps the chance of any false verdict among the
k at 5%: sort the p-values, multiply the i-th smallest by (k - i + 1), keep them monotone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

BETTER, WORSE, NO_DIFFERENCE, REFERENCE = "better", "worse", "no detectable difference", "reference"
SUMMARY_COLUMNS = [
    "variant", "n", "mean", "std", "ci_low", "ci_high",
    "diff", "diff_ci_low", "diff_ci_high", "n_paired", "p_value", "verdict", "p_holm", "verdict_holm",
]  # fmt: skip


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the two-sided t-interval of the mean of ``values``.

    Fewer than two values: std and interval are NaN. Identical values: the interval is the
    mean itself (zero width).
    """
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


def paired_p_value(differences) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (NaN below 2 pairs)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == d[0]):  # zero spread: the t statistic is undefined (or infinite)
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def verdict(ci_low: float, ci_high: float) -> str:
    """``worse`` if the interval of (variant - reference) lies above 0, ``better`` below, else no difference."""
    if ci_low > 0:
        return WORSE
    if ci_high < 0:
        return BETTER
    return NO_DIFFERENCE  # contains 0, or NaN (a single pair has no interval)


def holm(p_values, alpha: float = 0.05) -> np.ndarray:
    """Holm-adjusted p-values of one family of comparisons; NaN (no test) stays NaN and is not counted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = multipletests(p[tested], alpha=alpha, method="holm")[1]
    return adjusted


def summarize(
    results: pd.DataFrame,
    metric: str = "val_bpb",
    variants: list[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per variant (columns ``SUMMARY_COLUMNS``): its mean over seeds with a t-interval,
    and its difference from the first variant, paired by seed, with a t-interval and a verdict.

    ``results``: one row per run with columns ``variant``, ``seed`` and ``metric`` (lower is
    better). ``variants``: their order (the first is the reference); default: order of appearance.
    """
    missing = {"variant", "seed", metric} - set(results.columns)
    if missing:
        raise ValueError(f"summarize: results lack the column(s) {', '.join(sorted(missing))}")
    done = results.dropna(subset=[metric])
    order = list(variants) if variants is not None else list(dict.fromkeys(results["variant"]))
    by_variant = {v: done[done["variant"] == v].set_index("seed")[metric] for v in order}
    reference = by_variant[order[0]] if order else pd.Series(dtype=float)
    rows = []
    for name, values in by_variant.items():
        mean, std, low, high = t_interval(values, confidence)
        row = {"variant": name, "n": len(values), "mean": mean, "std": std, "ci_low": low, "ci_high": high}
        if name == order[0]:
            row.update(diff=0.0, diff_ci_low=math.nan, diff_ci_high=math.nan, n_paired=len(values),
                       p_value=math.nan, verdict=REFERENCE)  # fmt: skip
        else:
            seeds = values.index.intersection(reference.index)
            d = (values[seeds] - reference[seeds]).to_numpy()
            diff, _, d_low, d_high = t_interval(d, confidence)
            row.update(diff=diff, diff_ci_low=d_low, diff_ci_high=d_high, n_paired=len(d),
                       p_value=paired_p_value(d), verdict=verdict(d_low, d_high))  # fmt: skip
        rows.append(row)
    summary = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("p_holm", "verdict_holm")])
    summary["p_holm"] = holm(summary["p_value"], alpha=1 - confidence)
    summary["verdict_holm"] = [
        REFERENCE if v == REFERENCE else (BETTER if d < 0 else WORSE) if p < 1 - confidence else NO_DIFFERENCE
        for v, d, p in zip(summary["verdict"], summary["diff"], summary["p_holm"])
    ]  # NaN < alpha is False: no test, no difference
    return summary


def shown_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """A summary as a table to read: columns empty for every variant dropped; with one seed a
    variant has a value but no interval and no verdict, which the table says."""
    shown = summary.dropna(axis=1, how="all")
    if "n" in shown and len(shown) and shown["n"].max() < 2:
        keep = [c for c in ("variant", "n", "mean", "diff") if c in shown]
        shown = shown[keep].assign(verdict="one seed: no interval, no verdict")
    return shown


def conclusions(summary: pd.DataFrame, unit: str = "bits per byte", confidence: float = 0.95) -> list[str]:
    """Sentences that say what the summary supports, and no more (one per compared variant)."""
    if summary.empty:
        return ["No run has finished yet: nothing to conclude."]
    level = f"{confidence:.0%}"
    ref = summary.iloc[0]
    lines = [f"Reference: {ref['variant']!r}, {_mean_text(ref, level)}{'' if ref['n'] == 0 else ' ' + unit}."]
    for _, row in summary.iloc[1:].iterrows():
        head = f"{row['variant']!r}: {_mean_text(row, level)}{'' if row['n'] == 0 else ' ' + unit}"
        if row["n_paired"] == 0:
            lines.append(f"{head}; no seed in common with the reference yet: no comparison.")
        elif row["n_paired"] < 2:
            lines.append(f"{head}; {row['diff']:+.3f} against the reference on one seed, which has no interval: "
                         "no detectable difference (run at least 2 seeds, better 3 or more).")  # fmt: skip
        else:
            span = f"{level} CI {row['diff_ci_low']:+.3f} to {row['diff_ci_high']:+.3f}, {int(row['n_paired'])} paired seeds"
            meaning = {
                WORSE: f"worse than {ref['variant']!r} beyond seed-to-seed noise",
                BETTER: f"better than {ref['variant']!r} beyond seed-to-seed noise",
                NO_DIFFERENCE: f"no detectable difference from {ref['variant']!r}",
            }[row["verdict"]]
            lines.append(f"{head}; difference {row['diff']:+.3f} ({span}): {meaning}{_holm_text(row, len(summary) - 1)}.")
    return lines


def _holm_text(row: pd.Series, comparisons: int) -> str:
    """What Holm's correction over the summary's comparisons does to one verdict (nothing with one comparison)."""
    if comparisons < 2 or math.isnan(row["p_holm"]):
        return ""
    if row["verdict"] == NO_DIFFERENCE:
        return ""
    if row["verdict_holm"] == row["verdict"]:
        return f"; it survives Holm's correction over {comparisons} comparisons (adjusted p {row['p_holm']:.3g})"
    return f"; not after Holm's correction over {comparisons} comparisons (adjusted p {row['p_holm']:.3g}): no detectable difference"


def _mean_text(row: pd.Series, level: str) -> str:
    if row["n"] == 0:
        return "no finished run yet"
    if row["n"] < 2:
        return f"{row['mean']:.3f} (one seed)"
    return f"{row['mean']:.3f} ({level} CI {row['ci_low']:.3f}–{row['ci_high']:.3f}, {int(row['n'])} seeds)"
