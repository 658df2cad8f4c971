"""The forecasting command line: train on one series and score the forecasts, ``python -m moelab.forecast``.

    python -m moelab.forecast co2 --horizon 12 --season 12 --steps 800
    python -m moelab.forecast SERIES.csv --value-column value --date-column date --horizon 12 --season 12
"""

from __future__ import annotations

import argparse
import sys

from moelab.device import resolve_device
from moelab.forecast.forecaster import MIN_PATHS, ForecastConfig, evaluate, series_config
from moelab.forecast.series import BUILTIN, load_series


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moelab forecast",
        description="Train moelab's Transformer on one series (Chronos tokenization) and score its forecasts "
        "against naive, seasonal naive and ETS over a rolling-origin evaluation.",
    )
    p.add_argument("series", help=f"a CSV file, or a built-in series: {', '.join(BUILTIN)}")
    p.add_argument("--value-column", help="the CSV column holding the values")
    p.add_argument("--date-column", help="the CSV column holding the dates (optional; must increase)")
    p.add_argument("--horizon", type=int, help="points to forecast (built-in series: one season)")
    p.add_argument("--season", type=int, help="the seasonal period, 1 for none (built-in series: their own)")
    p.add_argument("--context", type=int, default=48, help="points the model conditions on (default 48)")
    p.add_argument("--origins", type=int, default=5, help="rolling-origin blocks of horizon points (default 5)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"training steps (default {ForecastConfig.max_steps})")
    budget.add_argument("--minutes", type=float, help="training time instead of steps")
    p.add_argument("--seed", type=int, default=1, help="training and sampling seed (default 1)")
    p.add_argument("--paths", type=int, default=100, help=f"sampled futures per forecast (default 100, at least {MIN_PATHS})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:  # every check on the input happens here, before any training
        series = load_series(args.series, args.value_column, args.date_column)
        budget = {"max_steps": args.steps, "max_minutes": args.minutes} if args.steps or args.minutes else {}
        config = series_config(args.series, args.horizon, args.season, context=args.context, n_origins=args.origins,
                               seed=args.seed, n_paths=args.paths, **budget)  # fmt: skip
        config.check_series(series.to_numpy(dtype=float), repr(args.series))
        resolve_device(args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.series}: {len(series)} points; horizon {config.horizon}, season {config.season}, "
          f"context {config.context}, {config.n_origins} origins")  # fmt: skip
    result = evaluate(series, config, name=str(args.series), device=args.device, progress=sys.stderr.isatty())
    forecaster = result.forecasters[config.seed]
    kept = f"kept the weights of step {forecaster.best_step}"
    if forecaster.losses["val_loss"].notna().any():
        kept += f", validation loss {forecaster.losses['val_loss'].min():.3f} nats"
    print(f"trained {forecaster.losses['step'].iloc[-1]} steps in {forecaster.train_seconds:.1f} s ({kept})")
    table = result.summary().drop(columns=["seeds"])
    print(f"\nrolling origin ({config.n_origins} × {config.horizon} points; coverage of the 80% band):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    print(result.headline())
    return 0
