"""What the forecasting commands print: one series against the baselines, and the held-out benchmark.

A user should never take a forecast worse than a baseline without being told: the table
is followed by the method to use for this series, in words that follow from the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from moelab import stats
from moelab.forecast.benchmark import REFERENCE, BenchmarkResult, run_benchmark, score_series
from moelab.forecast.corpus import BENCHMARK
from moelab.forecast.evaluation import rolling_origins
from moelab.forecast.forecaster import ForecastConfig
from moelab.forecast.pretrain import PretrainedForecaster, default_path, fine_tune


def forecast_series(series: pd.Series, config: ForecastConfig, forecaster: PretrainedForecaster,
                    fine_tune_steps: int | None, name: str) -> int:  # fmt: skip
    """Score the pretrained forecaster (fine-tuned first with ``fine_tune_steps``) on one series; print the verdict."""
    values = series.to_numpy(dtype=float)
    try:
        first = rolling_origins(len(values), config.horizon, config.n_origins)[0]
        model, label = forecaster, "moelab (zero-shot)"
        if fine_tune_steps:
            model = fine_tune(forecaster, values[:first], config.horizon, fine_tune_steps, seed=config.seed,
                              progress=sys.stderr.isatty())  # fmt: skip
            kept = "the pretrained weights" if model.best_step == 0 else f"fine-tuning step {model.best_step}"
            print(f"fine-tuned {fine_tune_steps} steps on the points before the first origin; held-out windows kept {kept}")
            label = "moelab (fine-tuned)" if model.best_step else label
        scores, _ = score_series(values, config.horizon, config.season, {label: model}, config.n_origins, config.n_paths)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = scores.groupby("method", sort=False)[["MASE", "WQL"]].mean()
    print(f"\nrolling origin ({config.n_origins} × {config.horizon} points; mean over origins; lower is better):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    print(advice(scores, label, name, suggest_fine_tune=not fine_tune_steps))
    return 0


def advice(scores: pd.DataFrame, moelab: str, name: str, suggest_fine_tune: bool = False) -> str:
    """Which method to use for this series, from the mean MASE over origins (with moelab's paired interval);
    ``suggest_fine_tune``: when moelab is worse than seasonal naive, point to ``--fine-tune``."""
    table = scores.groupby("method", sort=False)["MASE"].mean()
    best, runner_up = table.idxmin(), table.drop(moelab).idxmin()
    if best == moelab:
        lines = [f"{name}: {moelab} has the lowest mean MASE ({table[moelab]:.3f}; next {runner_up} {table[runner_up]:.3f})."]
    else:
        lines = [f"{name}: use {best} for this series: its mean MASE {table[best]:.3f} is lower than {moelab}'s {table[moelab]:.3f}."]
    if table[moelab] > table[REFERENCE]:
        lines.append(f"{moelab} is worse here than repeating the last season (seasonal naive, {table[REFERENCE]:.3f}): "
                     "do not use its forecast for this series.")  # fmt: skip
        if suggest_fine_tune:
            lines.append("`--fine-tune` fine-tunes it on this series first, and keeps that only if it scores better on "
                         "held-out windows of the series.")  # fmt: skip
    other = best if best != moelab else runner_up
    per_origin = scores.pivot_table(index="origin", columns="method", values="MASE")
    diff, _, low, high = stats.t_interval((per_origin[moelab] - per_origin[other]).to_numpy())
    if np.isfinite(low):
        lines.append(f"(Against {other}, paired over {len(per_origin)} origins, the MASE difference is {diff:+.3f}, "
                     f"95% CI {low:+.3f} to {high:+.3f}; adjacent origins make this interval optimistic.)")  # fmt: skip
    return " ".join(lines)


def benchmark_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="moelab forecast benchmark",
                                description="Score the pretrained forecaster and the baselines on the held-out series.")
    p.add_argument("--pretrained", type=Path, default=default_path(), help=f"the forecaster (default {default_path()})")
    p.add_argument("--origins", type=int, default=3, help="rolling origins per series (default 3)")
    p.add_argument("--fine-tune", type=int, default=0, metavar="STEPS", help="also score it fine-tuned on each series")
    p.add_argument("--frequency", choices=sorted({s.frequency for s, _ in BENCHMARK.values()}),
                   help="only the held-out series of this frequency")
    p.add_argument("--horizon", type=int, help="forecast this many points at each origin (default: each series' "
                   "frequency's M4 horizon: monthly 18, quarterly 8, weekly 13, daily 14)")  # fmt: skip
    p.add_argument("--last", type=int, metavar="N", help="keep only each series' last N points, as a shorter CSV would hold")
    p.add_argument("--out", type=Path, help="a folder for scores.csv and summary.csv")
    args = p.parse_args(argv)
    names = [n for n, (s, _) in BENCHMARK.items() if s.frequency == args.frequency] if args.frequency else None
    try:
        forecaster = PretrainedForecaster.load(args.pretrained)
        result = run_benchmark(forecaster, names, args.origins, fine_tune_steps=args.fine_tune,
                               progress=sys.stderr.isatty(), horizon=args.horizon, last=args.last)  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.aggregate()
    horizon = f"{args.horizon} points" if args.horizon else "each frequency's horizon"
    cut = f", at most the last {args.last} points of each" if args.last else ""
    print(f"{summary['series'].iloc[0]} held-out series{cut}, {args.origins} origins × {horizon}; "
          "geometric means relative to seasonal naive:")  # fmt: skip
    print(summary.drop(columns="series").to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    print("\n".join(benchmark_findings(result)))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result.scores.to_csv(args.out / "scores.csv", index=False)
        summary.to_csv(args.out / "summary.csv")
        print(f"written: {args.out}")
    return 0


def benchmark_findings(result: BenchmarkResult) -> list[str]:
    """The benchmark in sentences that follow from its intervals: each method against seasonal naive,
    moelab against AutoETS (and fine-tuned against zero-shot), and the method to use."""
    summary, lines = result.aggregate(), []
    for method in [m for m in result.methods if m != REFERENCE]:
        mean, low, high = (summary.loc[method, f"relative MASE{s}"] for s in ("", " low", " high"))
        if high < 1 or low > 1:
            relation = f"{'below' if high < 1 else 'above'} seasonal naive beyond its interval"
        else:
            relation = "no detectable difference from seasonal naive"
        lines.append(f"{method}: relative MASE {mean:.3f} (95% CI {low:.3f} to {high:.3f} over "
                     f"{summary.loc[method, 'series']} series): {relation}.")  # fmt: skip
    ours = [m for m in result.methods if m.startswith("moelab")]
    relative = result.relative()
    for method in ours:
        below = int((relative[method] < 1).sum())
        lines.append(f"{method}: below seasonal naive's mean MASE on {below} of {len(relative)} series.")
    pairs = [(m, "AutoETS") for m in ours if "AutoETS" in result.methods] + [(m, ours[0]) for m in ours[1:]]
    for method, other in pairs:
        c = result.paired(method, other)
        lines.append(f"{method} / {other}, MASE paired by series: {c['ratio']:.3f} (95% CI {c['ratio low']:.3f} to "
                     f"{c['ratio high']:.3f}): {c['verdict']}.")  # fmt: skip
    if result.fine_tuned_steps:
        steps = list(result.fine_tuned_steps.values())
        kept, short = sum(bool(s) for s in steps), sum(s is None for s in steps)
        line = f"Fine-tuning kept a fine-tuned step on {kept} of {len(steps)} series"
        if kept + short < len(steps):
            line += f"; on {len(steps) - kept - short} no fine-tuned step scored better on their held-out windows"
        if short:
            line += f"; {short} had too little history to fine-tune"
        lines.append(line + " (those keep the pretrained weights)." if kept < len(steps) else line + ".")
    best = summary["relative MASE"].idxmin()
    lines.append(f"Lowest aggregate relative MASE: {best} ({summary.loc[best, 'relative MASE']:.3f}). Per series, "
                 "`moelab forecast your.csv ...` names the method to use.")  # fmt: skip
    return lines
