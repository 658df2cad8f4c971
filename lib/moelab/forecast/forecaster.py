"""Time-series forecasting with moelab's Transformer, scored against the forecasters' baselines.

The series is tokenized the way Chronos does (:mod:`moelab.forecast.series`): every window of
``context + horizon`` points is divided by the mean absolute value of its first ``context``
points and quantized into 256 bins, so the same byte-sized vocabulary and the same
``Transformer`` (MoE or dense) learn to predict the next bin. A forecast samples
``n_paths`` futures of ``horizon`` bins from the last ``context`` points and maps them
back to values: the median is the point forecast, the 10–90% quantiles the 80% band.

The evaluation is rolling-origin (Tashman 2000): ``n_origins`` back-to-back blocks of
``horizon`` points at the end of the series, the last one the plain hold-out. The model
trains once, on the points before the first origin, so it never sees a value it is scored
on; at each origin it conditions on the actual history up to there, and naive, seasonal
naive and ETS (:mod:`moelab.forecast.evaluation`) are fitted to that same history. With several
training seeds, the comparison with a baseline is paired by origin: the per-origin MASE
difference (moelab's mean over seeds minus the baseline's) gets a t-interval.

The command line is :mod:`moelab.forecast.cli` (``python -m moelab.forecast``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from moelab import stats
from moelab.config.model import ModelConfig
from moelab.forecast.evaluation import LEVEL, Forecast, ets, naive, rolling_origins, scores, seasonal_error, seasonal_naive
from moelab.nn.model import Transformer
from moelab.device import resolve_device
from moelab.forecast.training import FitSettings, fit
from moelab.forecast.series import BUILTIN, MeanScaleQuantizer, mean_scale, sliding_windows
from moelab.generate.loop import generate

METHODS = ("moelab", "naive", "seasonal naive", "ETS")
MIN_PATHS = 20  # fewer sampled futures make the 10% and 90% quantiles meaningless
WARMUP_STEPS = 20  # linear learning-rate warmup (at most a fifth of a step budget)
METRICS = ("MASE", "sMAPE", "coverage")
SMALL_MODEL = {  # a few hundred windows of one series: a small model, with dropout
    "n_layers": 2, "n_heads": 4, "n_embd": 64, "n_experts": 8, "top_k": 2,
    "n_common_experts": 1, "expert_hidden": 128, "dropout": 0.1, "pos_encoding": "rope",
}  # fmt: skip


@dataclass
class ForecastConfig:
    """What to forecast and how to train; ``model`` holds ModelConfig fields (vocabulary and window are set here)."""

    horizon: int
    season: int
    context: int = 48
    n_origins: int = 5
    val_blocks: int = 2  # blocks of horizon points before the first origin that pick the best weights; 0 = none
    eval_every: int = 25  # steps between validation losses
    n_bins: int = 256
    max_steps: int | None = 600
    max_minutes: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    n_paths: int = 100  # sampled futures per forecast (at least MIN_PATHS: the band is their 10–90% quantiles)
    seed: int = 1
    model: dict[str, Any] = field(default_factory=lambda: dict(SMALL_MODEL))

    def __post_init__(self) -> None:
        for name, least in (("horizon", 1), ("season", 1), ("context", 2), ("n_origins", 1), ("val_blocks", 0),
                            ("eval_every", 1), ("batch_size", 1), ("n_paths", MIN_PATHS)):  # fmt: skip
            _check_int(name, getattr(self, name), least)
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give a training budget: max_steps (--steps) or max_minutes (--minutes)")
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1)
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        fixed = {"vocab_size", "context_window"} & set(self.model)
        if fixed:
            raise ValueError(f"model: {', '.join(sorted(fixed))} follow from n_bins, context and horizon; do not set them")
        self.model_config()  # ModelConfig validates the rest and names a bad field

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.n_bins, context_window=self.context + self.horizon, **self.model)

    def check_series(self, values: np.ndarray, name: str = "the series") -> None:
        """Everything the evaluation needs from the series, checked before any training: enough points for
        one training window, the validation and evaluation blocks, and a usable MASE scale."""
        gap = self.horizon - 1 if self.val_blocks else 0  # validation targets never appear in a training window
        need = self.context + self.horizon + gap + (self.val_blocks + self.n_origins) * self.horizon
        if len(values) < need:
            raise ValueError(
                f"{name} has {len(values)} points; context {self.context} + horizon {self.horizon} for one training "
                f"window, {gap} more between training and validation windows, then {self.val_blocks} validation and "
                f"{self.n_origins} evaluation block(s) of {self.horizon}: need at least {need}. "
                "Use a shorter context, a shorter horizon or fewer origins"
            )
        first_history = np.asarray(values[: rolling_origins(len(values), self.horizon, self.n_origins)[0]], dtype=float)
        try:
            seasonal_error(first_history, self.season)
        except ValueError as exc:
            raise ValueError(f"{name}, season {self.season}: {exc}") from None


def _check_int(name: str, value: Any, least: int) -> None:
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least):
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass
class Forecaster:
    """A Transformer trained on one series, with the quantizer it was trained with."""

    model: Transformer
    quantizer: MeanScaleQuantizer
    config: ForecastConfig
    losses: pd.DataFrame  # step, loss (cross-entropy in nats), lr, val_loss (at step 0 and every eval_every steps)
    train_seconds: float
    best_step: int  # the step whose weights the model holds (lowest validation loss; the last without validation)

    def forecast(self, history: np.ndarray, seed: int = 0) -> Forecast:
        """``n_paths`` sampled futures after the last ``context`` points of history: their median and 80% band."""
        c = self.config
        if len(history) < c.context:
            raise ValueError(f"history has {len(history)} points, fewer than the context of {c.context}")
        window = np.asarray(history[-c.context :], dtype=float)
        scale = mean_scale(window)
        tokens = torch.from_numpy(self.quantizer.encode(window, scale)).unsqueeze(0)
        device = next(self.model.parameters()).device
        ids = generate(self.model, tokens.repeat(c.n_paths, 1).to(device), c.horizon, seed=seed)
        values = self.quantizer.decode(ids[:, c.context :].cpu().numpy(), scale)
        tail = (1 - LEVEL) / 2
        low, median, high = np.quantile(values, [tail, 0.5, 1 - tail], axis=0)
        return Forecast(median, low, high, values)


def train_forecaster(train: np.ndarray, config: ForecastConfig, device: str = "cpu", progress: bool = True) -> Forecaster:
    """Train on the windows of ``context + horizon`` points of ``train`` (next-bin cross-entropy at every position).

    The windows whose last point falls in the final ``val_blocks × horizon`` points validate:
    before training and every ``eval_every`` steps their loss over the horizon positions (the
    forecast's own task) is measured, and the model keeps the weights of the step where it
    was lowest. Training windows end ``horizon`` points before the first validation target,
    so none contains one; the quantizer's range is fitted to the training windows only.
    """
    length = config.context + config.horizon
    held_out = config.val_blocks * config.horizon + config.horizon - 1 if config.val_blocks else 0
    if len(train) < length + held_out:
        raise ValueError(f"{len(train)} training points are too few: one training window of {length} "
                         f"and the validation windows need {length + held_out}")
    windows, held_windows = split_windows(sliding_windows(train, length), config.val_blocks * config.horizon, config.horizon)
    quantizer = MeanScaleQuantizer.fit(windows, config.context, config.n_bins)
    fit_tokens, held = (None if w is None else torch.from_numpy(quantizer.encode(w, mean_scale(w[:, : config.context])))
                        for w in (windows, held_windows))  # fmt: skip
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    model = Transformer(config.model_config()).to(device)
    warmup = min(WARMUP_STEPS, config.max_steps // 5) if config.max_steps else WARMUP_STEPS
    settings = FitSettings(config.lr, config.max_steps, config.max_minutes, warmup, config.eval_every)
    generator = torch.Generator().manual_seed(config.seed)
    fit_windows = fit_tokens.to(device)  # the windows move to the device once, not every step
    held = None if held is None else held.to(device)
    draw = lambda: fit_windows[torch.randint(len(fit_windows), (config.batch_size,), generator=generator).to(device)]  # noqa: E731
    result = fit(model, draw, held, config.horizon, settings, progress)
    return Forecaster(model, quantizer, config, result.losses, result.seconds, result.best_step)


def split_windows(windows, n_val: int, horizon: int):
    """(training, validation) windows, in time order: the last ``n_val`` windows validate, and the
    ``horizon − 1`` before them are dropped, since they hold the first validation targets."""
    if n_val == 0:
        return windows, None
    return windows[: -(n_val + horizon - 1)], windows[-n_val:]


# ------------------------------------------------------------------------- evaluation
@dataclass
class ForecastEvaluation:
    """Every method's forecast at every origin, scored; moelab once per training seed."""

    name: str
    series: pd.Series
    config: ForecastConfig
    origins: list[int]
    forecasters: dict[int, Forecaster]  # by training seed
    forecasts: dict[tuple[str, int], Forecast]  # (method, origin) -> forecast; moelab's of the first seed
    results: pd.DataFrame  # method, seed (moelab only), origin, MASE, sMAPE, coverage

    def summary(self, holdout: bool = False) -> pd.DataFrame:
        """Mean MASE, sMAPE and coverage per method, over the origins (or the last one: ``holdout``) and seeds."""
        rows = self.results if not holdout else self.results[self.results["origin"] == self.origins[-1]]
        by_method = rows.groupby("method", observed=True)
        table = by_method[list(METRICS)].mean().reindex(list(METHODS))
        table.index = pd.Index(list(METHODS), name="method")
        table["origins"] = by_method["origin"].nunique().reindex(list(METHODS)).to_numpy()
        table["seeds"] = [len(self.forecasters) if m == "moelab" else 1 for m in table.index]
        return table

    def comparison(self, baseline: str, confidence: float = 0.95) -> dict[str, Any]:
        """moelab's MASE minus the baseline's, paired by origin (moelab averaged over seeds), with a t-interval."""
        per_origin = self.results.groupby(["method", "origin"], observed=True)["MASE"].mean().unstack("origin")
        d = (per_origin.loc["moelab"] - per_origin.loc[baseline]).to_numpy()
        diff, _, low, high = stats.t_interval(d, confidence)
        return {"baseline": baseline, "diff": diff, "ci_low": low, "ci_high": high, "origins": len(d),
                "verdict": stats.verdict(low, high)}  # fmt: skip

    def headline(self) -> str:
        mase = self.summary()["MASE"]
        return f"moelab MASE {mase['moelab']:.3f}, seasonal naive MASE {mase['seasonal naive']:.3f}, ETS MASE {mase['ETS']:.3f}"

    def comparisons(self) -> pd.DataFrame:
        """:meth:`comparison` against seasonal naive and ETS, one row each."""
        return pd.DataFrame([self.comparison(b) for b in ("seasonal naive", "ETS")]).set_index("baseline")

    def verdict(self) -> str:
        """The comparison in words, from the numbers: never better or worse unless the interval excludes 0.

        The interval treats the origins as independent; they are adjacent blocks forecast by the
        same trained models, so it is, if anything, too narrow (said in the text)."""
        mase = self.summary()["MASE"]
        seeds = len(self.forecasters)
        lines = [
            f"{self.name}: moelab's MASE is {mase['moelab']:.3f} (mean over {len(self.origins)} origins"
            + (f" and {seeds} training seeds)" if seeds > 1 else ", one training seed)")
            + f"; seasonal naive {mase['seasonal naive']:.3f}, ETS {mase['ETS']:.3f}, naive {mase['naive']:.3f}."
        ]
        for baseline in ("seasonal naive", "ETS"):
            c = self.comparison(baseline)
            if math.isnan(c["ci_low"]):
                lines.append(f"Against {baseline}: one origin gives no interval, so no conclusion.")
                continue
            word = {stats.BETTER: "better than", stats.WORSE: "worse than"}.get(c["verdict"])
            text = f"moelab is {word} {baseline}" if word else f"no detectable difference from {baseline}"
            lines.append(
                f"Against {baseline}: {text} (MASE difference {c['diff']:+.3f}, "
                f"95% CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f} over {c['origins']} origins)."
            )
        lines.append("(The origins are adjacent blocks forecast by the same models: the intervals are optimistic.)")
        ratio = mase["moelab"] / mase["ETS"]
        goal = "within" if ratio <= 1.10 else "not within"
        lines.append(f"Point estimates: moelab's MASE is {ratio:.2f}× ETS's, {goal} the goal of 10%.")
        return " ".join(lines)


def evaluate(
    series: pd.Series,
    config: ForecastConfig,
    seeds: list[int] | None = None,
    name: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> ForecastEvaluation:
    """Train on the points before the first origin (once per seed), then score every method at every origin."""
    values = series.to_numpy(dtype=float)
    name = name or str(series.name or "series")
    config.check_series(values, name)
    origins = rolling_origins(len(values), config.horizon, config.n_origins)
    h, rows, forecasts = config.horizon, [], {}
    for origin in origins:  # the baselines first: a series they cannot handle fails before any training
        history, actual = values[:origin], values[origin : origin + h]
        for method, fc in (("naive", naive(history, h)), ("seasonal naive", seasonal_naive(history, h, config.season)),
                           ("ETS", ets(history, h, config.season))):  # fmt: skip
            forecasts[(method, origin)] = fc
            rows.append({"method": method, "seed": None, "origin": origin, **scores(fc, actual, history, config.season)})
    seeds = list(seeds) if seeds is not None else [config.seed]
    forecasters = {seed: train_forecaster(values[: origins[0]], replace(config, seed=seed), device, progress) for seed in seeds}
    for origin in origins:
        history, actual = values[:origin], values[origin : origin + h]
        for seed, forecaster in forecasters.items():
            fc = forecaster.forecast(history, seed=sampling_seed(seed, origin))
            forecasts.setdefault(("moelab", origin), fc)
            rows.append({"method": "moelab", "seed": seed, "origin": origin, **scores(fc, actual, history, config.season)})
    results = pd.DataFrame(rows)
    results["method"] = pd.Categorical(results["method"], list(METHODS))
    results = results.sort_values(["origin", "method"], kind="stable").reset_index(drop=True)
    return ForecastEvaluation(name, series, config, origins, forecasters, forecasts, results)


def sampling_seed(seed: int, origin: int) -> int:
    """The seed of the paths sampled at one origin by the model of one training seed (distinct pairs, distinct seeds)."""
    return int(np.random.SeedSequence([seed, origin]).generate_state(1)[0])


def series_config(source: str, horizon: int | None = None, season: int | None = None, **fields: Any) -> ForecastConfig:
    """A ForecastConfig for one series: a built-in series brings its own horizon and season."""
    builtin = BUILTIN.get(str(source))
    horizon = horizon if horizon is not None else (builtin.horizon if builtin else None)
    season = season if season is not None else (builtin.season if builtin else None)
    if horizon is None or season is None:
        raise ValueError(f"{source}: a CSV series needs a horizon and a season (--horizon, --season; season 1 for none)")
    return ForecastConfig(horizon=horizon, season=season, **fields)

