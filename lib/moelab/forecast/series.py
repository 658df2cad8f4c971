"""Real-valued series for forecasting: loading them, and tokenizing them the way Chronos does.

:func:`load_series` reads a built-in series (statsmodels ships them inside its wheel, so
nothing is downloaded) or a CSV file with a value column and an optional date column, and
refuses bad input (a missing or non-numeric value, an unknown column, dates out of order)
with an error that names the row or the column.

:class:`MeanScaleQuantizer` is Chronos' tokenizer (Ansari et al. 2024, "Chronos: Learning
the Language of Time Series", section 3.1): divide a window by the mean absolute value of
its context, then quantize into ``n_bins`` uniform bins whose centers span ``[low, high]``
(bin edges halfway between centers, values outside clamp to the end bins). Chronos fixes the
range at [−15, 15] with 4094 bins for a model trained on thousands of series; one series
and 256 bins need a range fitted to the series (:meth:`MeanScaleQuantizer.fit`), or a
level-heavy series such as CO₂ (scaled values near 1) would fall into two or three bins.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BuiltinSeries:
    description: str
    season: int  # the seasonal period used by seasonal naive, ETS and MASE
    horizon: int  # a natural forecast horizon: one season
    load: Callable[[], pd.Series]
    unit: str  # the values' quantity and unit, for axis labels


def _co2() -> pd.Series:
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    # 59 of the 2284 weekly readings are missing; monthly means of the others leave 5 months
    # empty, filled by linear interpolation between their neighbours
    return weekly.resample("MS").mean().interpolate().rename("co2")


def _sunspots() -> pd.Series:
    import statsmodels.api as sm

    frame = sm.datasets.sunspots.load_pandas().data
    index = pd.to_datetime(frame["YEAR"].astype(int).astype(str), format="%Y")
    return pd.Series(frame["SUNACTIVITY"].to_numpy(float), index=index, name="sunspots")


BUILTIN: dict[str, BuiltinSeries] = {
    "co2": BuiltinSeries(
        "Mauna Loa CO₂ in ppm, monthly means of statsmodels' weekly readings, 1958–2001 (526 months)",
        season=12,
        horizon=12,
        load=_co2,
        unit="CO₂ (ppm)",
    ),
    "sunspots": BuiltinSeries(
        "Yearly mean sunspot numbers, 1700–2008 (309 years); the ~11-year solar cycle as the season",
        season=11,
        horizon=11,
        load=_sunspots,
        unit="sunspot number (yearly mean)",
    ),
}


def load_series(source: str | Path, value_column: str | None = None, date_column: str | None = None) -> pd.Series:
    """A float series: a built-in name (``co2``, ``sunspots``) or a CSV file's value column.

    With ``date_column`` the index is the parsed dates (strictly increasing), else 0..n−1.
    """
    if isinstance(source, str) and source in BUILTIN:
        if value_column is not None or date_column is not None:
            raise ValueError(f"{source!r} is a built-in series: it takes no value_column or date_column")
        return BUILTIN[source].load()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"series {str(source)!r}: no such file, and not a built-in series ({', '.join(BUILTIN)})"
        )
    try:
        # blank lines stay rows (reported as missing values), so row i is line i + 2
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    if value_column is None:
        raise ValueError(f"{path}: name the value column (value_column / --value-column); the file has {list(frame.columns)}")
    for role, name in (("value column", value_column), ("date column", date_column)):
        if name is not None and name not in frame.columns:
            raise ValueError(f"{path}: no {role} {name!r}; the file's columns are {list(frame.columns)}")
    values = _parse_values(frame[value_column], path, value_column)
    index = pd.RangeIndex(len(values)) if date_column is None else _parse_dates(frame[date_column], path, date_column)
    return pd.Series(values, index=index, name=value_column)


def _parse_values(column: pd.Series, path: Path, name: str) -> np.ndarray:
    text = column.str.strip()
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(float)
    for row, (raw, value) in enumerate(zip(text, numbers)):
        line = row + 2  # the header is line 1
        if raw == "" or raw.lower() in ("nan", "na", "null"):
            raise ValueError(f"{path}, line {line}: the value in {name!r} is missing; fill or drop that row first")
        if not np.isfinite(value):
            raise ValueError(f"{path}, line {line}: the value {raw!r} in {name!r} is not a finite number")
    return numbers


def _parse_dates(column: pd.Series, path: Path, name: str) -> pd.DatetimeIndex:
    dates = pd.to_datetime(column.str.strip(), errors="coerce", format="mixed")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        raise ValueError(f"{path}, line {bad[0] + 2}: {column.iloc[bad[0]]!r} in {name!r} is not a date")
    order = np.diff(dates.to_numpy().astype("datetime64[ns]").astype(np.int64))
    if (order <= 0).any():
        row = int(np.flatnonzero(order <= 0)[0]) + 1
        raise ValueError(
            f"{path}, line {row + 2}: the dates in {name!r} must increase strictly "
            f"({column.iloc[row - 1]!r} is followed by {column.iloc[row]!r}); sort the file or drop duplicates"
        )
    index = pd.DatetimeIndex(dates)
    with warnings.catch_warnings():  # pandas 3 announces a change of infer_freq's return type
        warnings.simplefilter("ignore")
        uneven = len(index) >= 3 and pd.infer_freq(index) is None
    if uneven:
        warnings.warn(f"{path}: the dates in {name!r} are not evenly spaced; the season and horizon count rows, not time")
    return index


# ------------------------------------------------------------------- Chronos tokenizer
def mean_scale(context: np.ndarray) -> np.ndarray:
    """Chronos' scale: the mean absolute value over the last axis (1 where that is 0)."""
    scale = np.abs(np.asarray(context, dtype=float)).mean(axis=-1)
    return np.where(scale > 0, scale, 1.0)


@dataclass(frozen=True)
class MeanScaleQuantizer:
    """Mean scaling, then ``n_bins`` uniform bins with centers from ``low`` to ``high``."""

    n_bins: int = 256
    low: float = -15.0
    high: float = 15.0

    def __post_init__(self) -> None:
        if not (isinstance(self.n_bins, int) and self.n_bins >= 2):
            raise ValueError(f"n_bins must be an integer >= 2, got {self.n_bins!r}")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got [{self.low}, {self.high}]")

    @property
    def centers(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.n_bins)

    @property
    def edges(self) -> np.ndarray:
        """The n_bins − 1 boundaries, halfway between neighbouring centers."""
        c = self.centers
        return (c[1:] + c[:-1]) / 2

    def encode(self, values: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
        """Token ids (int64) of values / scale; ``scale`` broadcasts over the last axis."""
        scaled = np.asarray(values, dtype=float) / np.expand_dims(np.asarray(scale, dtype=float), -1)
        return np.searchsorted(self.edges, scaled, side="right").astype(np.int64)

    def decode(self, tokens: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
        """The bin centers of the tokens, times scale (broadcast over the last axis)."""
        return self.centers[np.asarray(tokens)] * np.expand_dims(np.asarray(scale, dtype=float), -1)

    @classmethod
    def fit(cls, windows: np.ndarray, context: int, n_bins: int = 256, margin: float = 0.25) -> "MeanScaleQuantizer":
        """A range covering the training ``windows`` (n, length), each scaled by its first ``context``
        points, widened by ``margin`` of its span on both sides (room for the future)."""
        scaled = scaled_windows(windows, context)
        low, high = float(scaled.min()), float(scaled.max())
        span = max(high - low, 1e-6)
        return cls(n_bins, low - margin * span, high + margin * span)


def scaled_windows(windows: np.ndarray, context: int) -> np.ndarray:
    """Each window (row) divided by the mean absolute value of its first ``context`` points."""
    windows = np.asarray(windows, dtype=float)
    return windows / mean_scale(windows[:, :context])[:, None]


def sliding_windows(series: np.ndarray, length: int) -> np.ndarray:
    """Every window of ``length`` consecutive points, as a (n − length + 1, length) array."""
    series = np.asarray(series, dtype=float)
    if len(series) < length:
        raise ValueError(f"need at least {length} points for one window, got {len(series)}")
    return np.lib.stride_tricks.sliding_window_view(series, length)
