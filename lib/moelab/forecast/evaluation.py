"""Scoring forecasts, and the baselines forecasters compare against.

A :class:`Forecast` is a point forecast with an 80% band. The metrics are the M4
competition's: MASE (mean absolute error scaled by the in-sample seasonal-naive error,
Hyndman & Koehler 2006), sMAPE (in percent), and the coverage of the band (the share of
actual values inside it; 0.8 is calibrated). The baselines are naive (the last value),
seasonal naive (the value one season back), both with the normal prediction intervals of
Hyndman & Athanasopoulos, *Forecasting: Principles and Practice* (3rd ed., table 5.2),
ETS from statsmodels (additive errors, trend chosen by AICc, additive season), and
statsforecast's AutoETS and AutoTheta, what practitioners run first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.8  # the prediction band: from the 10% to the 90% quantile


@dataclass
class Forecast:
    point: np.ndarray  # (H,)
    low: np.ndarray  # (H,) the band's lower edge
    high: np.ndarray  # (H,)
    paths: np.ndarray | None = None  # (n_paths, H) sampled futures, where the method samples


# ----------------------------------------------------------------------------- metrics
def seasonal_error(insample: np.ndarray, season: int) -> float:
    """MASE's denominator: the mean absolute in-sample error of the seasonal naive forecast."""
    insample = np.asarray(insample, dtype=float)
    if len(insample) <= season:
        raise ValueError(f"MASE needs more than one season ({season}) of history, got {len(insample)} points")
    scale = float(np.mean(np.abs(insample[season:] - insample[:-season])))
    if scale == 0:
        raise ValueError("MASE is undefined: the history repeats exactly every season (seasonal naive error 0)")
    return scale


def mase(actual: np.ndarray, point: np.ndarray, insample: np.ndarray, season: int) -> float:
    return float(np.mean(np.abs(np.asarray(actual) - np.asarray(point)))) / seasonal_error(insample, season)


def smape(actual: np.ndarray, point: np.ndarray) -> float:
    """Symmetric MAPE in percent (0–200); a term whose actual and forecast are both 0 counts 0."""
    a, f = np.asarray(actual, dtype=float), np.asarray(point, dtype=float)
    denominator = np.abs(a) + np.abs(f)
    terms = np.divide(2 * np.abs(a - f), denominator, out=np.zeros_like(a), where=denominator > 0)
    return float(100 * terms.mean())


def coverage(actual: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    a = np.asarray(actual, dtype=float)
    return float(np.mean((a >= low) & (a <= high)))


def scores(forecast: Forecast, actual: np.ndarray, insample: np.ndarray, season: int) -> dict[str, float]:
    return {
        "MASE": mase(actual, forecast.point, insample, season),
        "sMAPE": smape(actual, forecast.point),
        "coverage": coverage(actual, forecast.low, forecast.high),
    }


QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the weighted quantile loss's, as Chronos scores


def quantiles(forecast: Forecast, levels: tuple[float, ...] = QUANTILE_LEVELS) -> np.ndarray:
    """(len(levels), H) quantiles: of the sampled paths where there are some, else of the normal
    distribution whose median is the point forecast and whose 80% interval is the band."""
    if forecast.paths is not None:
        return np.quantile(forecast.paths, levels, axis=0)
    sigma = (np.asarray(forecast.high) - np.asarray(forecast.low)) / (2 * stats.norm.ppf(0.5 + LEVEL / 2))
    return np.asarray(forecast.point)[None] + stats.norm.ppf(levels)[:, None] * sigma[None]


def weighted_quantile_loss(actual: np.ndarray, forecast: Forecast, levels: tuple[float, ...] = QUANTILE_LEVELS) -> float:
    """Mean over the levels q of 2 Σ_t ρ_q(y_t − ŷ_t^q) / Σ_t |y_t| (ρ_q: the pinball loss), as Chronos defines it."""
    a = np.asarray(actual, dtype=float)
    predicted = quantiles(forecast, levels)
    q = np.asarray(levels)[:, None]
    error = a[None] - predicted
    pinball = np.maximum(q * error, (q - 1) * error).sum(axis=1)
    return float(np.mean(2 * pinball / np.abs(a).sum()))


# --------------------------------------------------------------------------- baselines
def _normal_band(point: np.ndarray, sigma_h: np.ndarray, level: float) -> Forecast:
    z = stats.norm.ppf(0.5 + level / 2)
    return Forecast(point, point - z * sigma_h, point + z * sigma_h)


def naive(history: np.ndarray, horizon: int, level: float = LEVEL) -> Forecast:
    """The last value, with σ_h = σ·√h (σ: the RMS of the one-step naive residuals)."""
    history = np.asarray(history, dtype=float)
    sigma = np.sqrt(np.mean(np.diff(history) ** 2))
    h = np.arange(1, horizon + 1)
    return _normal_band(np.full(horizon, history[-1]), sigma * np.sqrt(h), level)


def seasonal_naive(history: np.ndarray, horizon: int, season: int, level: float = LEVEL) -> Forecast:
    """The value one season back, with σ_h = σ·√(k + 1), k = ⌊(h − 1) / season⌋."""
    history = np.asarray(history, dtype=float)
    if len(history) < season:
        raise ValueError(f"seasonal naive needs one season ({season}) of history, got {len(history)} points")
    h = np.arange(1, horizon + 1)
    point = history[len(history) - season + (h - 1) % season]
    residuals = history[season:] - history[:-season]
    sigma = np.sqrt(np.mean(residuals**2)) if len(residuals) else 0.0
    return _normal_band(point, sigma * np.sqrt((h - 1) // season + 1), level)


def ets(history: np.ndarray, horizon: int, season: int, level: float = LEVEL) -> Forecast:
    """statsmodels' ETSModel: additive error, additive season (when two seasons of history
    allow it), and the trend (none, additive, damped additive) with the lowest AICc."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    history = pd.Series(np.asarray(history, dtype=float))  # statsmodels 0.15 predicts from arrays only with an index
    seasonal = season > 1 and len(history) >= 2 * season + 2
    best = None
    for trend, damped in ((None, False), ("add", False), ("add", True)):
        model = ETSModel(
            history,
            error="add",
            trend=trend,
            damped_trend=damped,
            seasonal="add" if seasonal else None,
            seasonal_periods=season if seasonal else None,
        )
        with warnings.catch_warnings():  # convergence chatter from the optimizer
            warnings.simplefilter("ignore")
            try:
                fit = model.fit(disp=False)
            except (np.linalg.LinAlgError, ValueError):  # this candidate fails; the others may not
                continue
        if np.isfinite(fit.aicc) and (best is None or fit.aicc < best.aicc):
            best = fit
    if best is None:
        raise RuntimeError("ETS: no model could be fitted to this history")
    frame = best.get_prediction(start=len(history), end=len(history) + horizon - 1).summary_frame(alpha=1 - level)
    return Forecast(frame["mean"].to_numpy(), frame["pi_lower"].to_numpy(), frame["pi_upper"].to_numpy())


def auto_ets(history: np.ndarray, horizon: int, season: int, level: float = LEVEL) -> Forecast:
    """statsforecast's AutoETS (error, trend and season chosen by AICc among all ETS models)."""
    from statsforecast.models import AutoETS

    return _statsforecast(AutoETS(season_length=_usable_season(history, season)), history, horizon, level)


def auto_theta(history: np.ndarray, horizon: int, season: int, level: float = LEVEL) -> Forecast:
    """statsforecast's AutoTheta (the theta variant chosen by in-sample MSE, seasonally adjusted when tested seasonal)."""
    from statsforecast.models import AutoTheta

    return _statsforecast(AutoTheta(season_length=_usable_season(history, season)), history, horizon, level)


def _usable_season(history: np.ndarray, season: int) -> int:
    return season if len(history) >= 2 * season + 2 else 1  # too short to estimate a season: none, as ets() does


def _statsforecast(model, history: np.ndarray, horizon: int, level: float) -> Forecast:
    percent = round(100 * level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.forecast(y=np.asarray(history, dtype=float), h=horizon, level=[percent])
    return Forecast(out["mean"], out[f"lo-{percent}"], out[f"hi-{percent}"])


def rolling_origins(n_points: int, horizon: int, n_origins: int) -> list[int]:
    """The forecast origins of a rolling-origin evaluation: ``n_origins`` back-to-back blocks of
    ``horizon`` points ending at the series' end; the last origin is the plain hold-out."""
    if horizon <= 0:
        raise ValueError(f"horizon must be a positive number of points, got {horizon}")
    if n_origins < 1:
        raise ValueError(f"n_origins must be at least 1, got {n_origins}")
    first = n_points - n_origins * horizon
    if first <= 0:
        raise ValueError(f"{n_origins} origins × horizon {horizon} need more than {n_points} points")
    return [first + k * horizon for k in range(n_origins)]
