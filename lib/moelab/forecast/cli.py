"""The forecasting command line, ``moelab forecast`` (or ``python -m moelab.forecast``).

    moelab forecast pretrain                       # one forecaster for every series (about 12 minutes)
    moelab forecast SERIES.csv --value-column value --date-column date --horizon 12 --season 12
    moelab forecast SERIES.csv ... --fine-tune     # fine-tuned on the series, if that scores better
    moelab forecast benchmark                      # the held-out benchmark's table
    moelab forecast co2 --from-scratch --steps 800 # a model trained on this series alone

With a pretrained forecaster (``moelab forecast pretrain`` writes one) a series is forecast
zero-shot; without one, or with ``--from-scratch``, a model is trained on the series alone.
Either way the forecasts are scored against the baselines at rolling origins, and the
output says which method to use when moelab is not the best.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moelab.device import resolve_device
from moelab.forecast.forecaster import MIN_PATHS, ForecastConfig, evaluate, series_config
from moelab.forecast.pretrain import FINE_TUNE_STEPS, PretrainConfig, PretrainedForecaster, default_path
from moelab.forecast.series import BUILTIN, load_series


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moelab forecast",
        description="Forecast one series with moelab's Transformer (pretrained, fine-tuned, or trained on the series "
        "alone) and score it against seasonal naive, ETS, AutoETS and AutoTheta over a rolling-origin evaluation. "
        "Subcommands: `moelab forecast pretrain --help`, `moelab forecast benchmark --help`.",
    )
    p.add_argument("series", help=f"a CSV file, or a built-in series: {', '.join(BUILTIN)}")
    p.add_argument("--value-column", help="the CSV column holding the values")
    p.add_argument("--date-column", help="the CSV column holding the dates (optional; must increase)")
    p.add_argument("--horizon", type=int, help="points to forecast (built-in series: one season)")
    p.add_argument("--season", type=int, help="the seasonal period, 1 for none (built-in series: their own)")
    p.add_argument("--origins", type=int, default=5, help="rolling-origin blocks of horizon points (default 5)")
    p.add_argument("--pretrained", type=Path, help=f"the pretrained forecaster (default {default_path()}, if it exists)")
    p.add_argument("--fine-tune", nargs="?", const=FINE_TUNE_STEPS, type=int, metavar="STEPS",
                   help=f"fine-tune the pretrained forecaster on the series (default {FINE_TUNE_STEPS} steps); kept only if it "
                   "scores better on held-out windows of the series")  # fmt: skip
    p.add_argument("--from-scratch", action="store_true", help="train a model on this series alone")
    p.add_argument("--context", type=int, default=48, help="from scratch: points the model conditions on (default 48)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"from scratch: training steps (default {ForecastConfig.max_steps})")
    budget.add_argument("--minutes", type=float, help="from scratch: training time instead of steps")
    p.add_argument("--seed", type=int, default=1, help="training and sampling seed (default 1)")
    p.add_argument("--paths", type=int, default=100, help=f"sampled futures per forecast (default 100, at least {MIN_PATHS})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        return pretrain_main(argv[1:])
    if argv[:1] == ["benchmark"]:
        from moelab.forecast.report import benchmark_main

        return benchmark_main(argv[1:])
    args = _parser().parse_args(argv)
    path = args.pretrained or default_path()
    pretrained = not args.from_scratch and (args.pretrained is not None or path.is_file())
    try:  # every check on the input happens here, before any training
        series = load_series(args.series, args.value_column, args.date_column)
        budget = {"max_steps": args.steps, "max_minutes": args.minutes} if args.steps or args.minutes else {}
        config = series_config(args.series, args.horizon, args.season, context=args.context, n_origins=args.origins,
                               seed=args.seed, n_paths=args.paths, **budget)  # fmt: skip
        resolve_device(args.device)
        forecaster = PretrainedForecaster.load(path, args.device) if pretrained else None
        if not pretrained:
            config.check_series(series.to_numpy(dtype=float), repr(args.series))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.series}: {len(series)} points; horizon {config.horizon}, season {config.season}, {config.n_origins} origins")
    if pretrained:
        from moelab.forecast.report import forecast_series

        if args.series in BUILTIN:  # statsmodels' co2 and sunspots are among the pretraining series
            print(f"note: {args.series} is one of the series the forecaster was pretrained on, so these scores are not "
                  "held out (`moelab forecast benchmark` scores series it never saw)")  # fmt: skip

        return forecast_series(series, config, forecaster, args.fine_tune, args.series)
    print(f"no pretrained forecaster at {path}: training on this series alone "
          "(`moelab forecast pretrain` makes one for every series)" if not args.from_scratch else "training on this series alone")  # fmt: skip
    return _from_scratch(series, config, args)


def _from_scratch(series, config: ForecastConfig, args) -> int:
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


def pretrain_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="moelab forecast pretrain",
                                description="Pretrain one forecaster on KernelSynth, TSMixup and public series shipped "
                                "in installed packages (the benchmark's series excluded).")  # fmt: skip
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=PretrainConfig.max_minutes,
                        help=f"pretraining time (default {PretrainConfig.max_minutes:g})")  # fmt: skip
    budget.add_argument("--steps", type=int, help="pretraining steps instead of minutes")
    p.add_argument("--out", type=Path, default=default_path(), help=f"where to save it (default {default_path()})")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = p.parse_args(argv)
    from moelab.forecast.pretrain import pretrain

    config = PretrainConfig(max_minutes=None if args.steps else args.minutes, max_steps=args.steps, seed=args.seed)
    forecaster = pretrain(config, args.device, progress=sys.stderr.isatty())
    saved = forecaster.save(args.out)
    val = forecaster.losses.dropna(subset=["val_loss"])
    print(f"pretrained {int(forecaster.losses['step'].iloc[-1])} steps in {forecaster.train_seconds / 60:.1f} min "
          f"on {forecaster.cpu}; kept step {forecaster.best_step} (validation loss {val['val_loss'].min():.3f} nats)")  # fmt: skip
    print(f"saved: {saved}")
    return 0
