"""The held-out benchmark: the pretrained forecaster against the baselines on series it never saw.

Every series of :data:`~moelab.forecast.corpus.BENCHMARK` is forecast at ``n_origins``
rolling origins (back-to-back blocks of its horizon at the end; each method sees only the
history before the origin). Each forecast gets its MASE and its weighted quantile loss
(WQL, over the quantiles 0.1 … 0.9). As in the Chronos paper, a method's score on a
series is divided by seasonal naive's on the same series, and the ratios are aggregated
by their geometric mean over the series; its 95% interval is the t-interval of the mean
log ratio over the series (the series are the units, so the interval says how much the
aggregate would move with another draw of series of this kind). Two methods are compared
the same way, paired by series: the geometric mean of their ratio, with its interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from moelab import stats
from moelab.forecast.corpus import PublicSeries, benchmark_series
from moelab.forecast.evaluation import Forecast, auto_ets, auto_theta, ets, mase, rolling_origins, seasonal_naive
from moelab.forecast.evaluation import weighted_quantile_loss
from moelab.forecast.pretrain import PretrainedForecaster, fine_tune

REFERENCE = "seasonal naive"
BASELINES: dict[str, Callable[[np.ndarray, int, int], Forecast]] = {
    REFERENCE: seasonal_naive,
    "ETS": ets,
    "AutoETS": auto_ets,
    "AutoTheta": auto_theta,
}
METRICS = ("MASE", "WQL")


@dataclass
class BenchmarkResult:
    scores: pd.DataFrame  # series, frequency, method, origin, MASE, WQL
    forecasts: dict[tuple[str, str, int], Forecast] = field(default_factory=dict, repr=False)  # (series, method, origin)
    # per series: the fine-tuning step kept (0: the pretrained weights; None: too short to fine-tune)
    fine_tuned_steps: dict[str, int | None] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.scores["method"]))

    def per_series(self, metric: str = "MASE") -> pd.DataFrame:
        """Series × method: the metric's mean over the origins."""
        table = self.scores.pivot_table(index="series", columns="method", values=metric, aggfunc="mean", sort=False)
        return table[self.methods]

    def relative(self, metric: str = "MASE") -> pd.DataFrame:
        """Series × method: the metric divided by seasonal naive's on the same series."""
        table = self.per_series(metric)
        return table.div(table[REFERENCE], axis=0)

    def aggregate(self, confidence: float = 0.95) -> pd.DataFrame:
        """Per method: the geometric mean over series of its relative MASE and WQL, with intervals."""
        rows = []
        for method in self.methods:
            row = {"method": method, "series": len(self.per_series())}
            for metric in METRICS:
                row.update(_geometric(self.relative(metric)[method], f"relative {metric}", confidence))
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")

    def paired(self, method: str, other: str, metric: str = "MASE", confidence: float = 0.95) -> dict:
        """The geometric mean over series of ``method``'s metric divided by ``other``'s, with its
        interval and verdict (better: below 1 beyond the interval)."""
        table = self.per_series(metric)
        out = _geometric(table[method] / table[other], "ratio", confidence)
        verdict = stats.verdict(np.log(out["ratio low"]), np.log(out["ratio high"]))  # 0 on the log scale: no change
        return {"method": method, "other": other, "metric": metric, **out, "verdict": verdict}


def _geometric(ratios: pd.Series, name: str, confidence: float) -> dict:
    """The geometric mean of ``ratios`` and the t-interval of their mean log, back on the ratio scale."""
    mean, _, low, high = stats.t_interval(np.log(ratios.to_numpy(dtype=float)), confidence)
    return {name: float(np.exp(mean)), f"{name} low": float(np.exp(low)), f"{name} high": float(np.exp(high))}


def run_benchmark(forecaster: PretrainedForecaster, names: list[str] | None = None, n_origins: int = 3,
                  n_paths: int = 100, fine_tune_steps: int = 0, progress: bool = True,
                  horizon: int | None = None, last: int | None = None) -> BenchmarkResult:  # fmt: skip
    """Score ``forecaster`` (zero-shot, and fine-tuned on each series' history before its first
    origin when ``fine_tune_steps`` > 0) and the baselines on the held-out series. A series with
    too little history to fine-tune (``fine_tune`` needs two validation blocks and a training
    window) keeps the pretrained weights as its fine-tuned model. ``horizon`` replaces each
    series' own (its frequency's M4 horizon) and ``last`` keeps only its last points, to score
    the series as a user's shorter CSV forecast with ``moelab forecast`` would be."""
    from tqdm.auto import tqdm

    series = benchmark_protocol(forecaster, benchmark_series(names), n_origins, horizon, last)
    frames, forecasts, kept = [], {}, {}
    for spec, values, length in tqdm(series, desc="benchmark", unit="series", disable=not progress):
        models = {"moelab": forecaster}
        if fine_tune_steps:
            first = rolling_origins(len(values), length, n_origins)[0]
            try:
                tuned = fine_tune(forecaster, values[:first], length, fine_tune_steps, progress=False)
            except ValueError:  # too little history before the first origin: it keeps the pretrained weights
                tuned = None
            models["moelab fine-tuned"] = tuned or forecaster
            kept[spec.name] = tuned.best_step if tuned else None
        scores, by_origin = score_series(values, length, spec.season, models, n_origins, n_paths)
        frames.append(scores.assign(series=spec.name, frequency=spec.frequency))
        forecasts.update({(spec.name, method, origin): fc for (method, origin), fc in by_origin.items()})
    scores = pd.concat(frames, ignore_index=True)[["series", "frequency", "method", "origin", *METRICS]]
    return BenchmarkResult(scores, forecasts, kept)


def benchmark_protocol(forecaster: PretrainedForecaster, series: list[tuple[PublicSeries, np.ndarray]], n_origins: int,
                       horizon: int | None = None, last: int | None = None) -> list[tuple[PublicSeries, np.ndarray, int]]:  # fmt: skip
    """Each series (its last ``last`` points) with its horizon, checked before any forecast: the
    forecaster must reach the horizon and each series must hold its origins."""
    if last is not None and last < 2:
        raise ValueError(f"last must keep at least 2 points of each series, got {last}")
    out = []
    for spec, values in series:
        length, values = horizon or spec.horizon, values[-last:] if last else values
        if not 1 <= length <= forecaster.config.horizon:
            raise ValueError(f"horizon {length}: the forecaster was pretrained for horizons of 1 to {forecaster.config.horizon}")
        try:
            rolling_origins(len(values), length, n_origins)
        except ValueError as exc:
            raise ValueError(f"{spec.name} ({len(values)} points): {exc}") from None
        out.append((spec, values, length))
    return out


def score_series(values: np.ndarray, horizon: int, season: int, models: dict[str, PretrainedForecaster],
                 n_origins: int = 3, n_paths: int = 100) -> tuple[pd.DataFrame, dict[tuple[str, int], Forecast]]:  # fmt: skip
    """Every model's and baseline's forecast at each rolling origin of one series, and their scores
    (method, origin, MASE, WQL); the forecasts by (method, origin)."""
    rows, forecasts = [], {}
    for k, origin in enumerate(rolling_origins(len(values), horizon, n_origins)):
        history, actual = values[:origin], values[origin : origin + horizon]
        for name, model in models.items():
            forecasts[(name, origin)] = model.forecast(history, horizon, n_paths, seed=k)
        for name, method in BASELINES.items():
            forecasts[(name, origin)] = method(history, horizon, season)
        for (name, at), fc in forecasts.items():
            if at == origin:
                rows.append({"method": name, "origin": origin, "MASE": mase(actual, fc.point, history, season),
                             "WQL": weighted_quantile_loss(actual, fc)})  # fmt: skip
    return pd.DataFrame(rows), forecasts
