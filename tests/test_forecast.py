"""Forecasting: Chronos tokenization, metrics, baselines, training, the CLI and its bad input."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import torch

from moelab.forecast import cli
from moelab.forecast import forecaster as forecast
from moelab.forecast import training
from moelab.forecast.forecaster import ForecastConfig, evaluate, split_windows, train_forecaster
from moelab.forecast.evaluation import coverage, ets, mase, naive, rolling_origins, seasonal_naive, smape
from moelab.forecast.series import MeanScaleQuantizer, load_series, mean_scale, sliding_windows

TINY_MODEL = {"n_layers": 1, "n_heads": 2, "n_embd": 32, "n_experts": 4, "top_k": 2, "n_common_experts": 1,
              "expert_hidden": 64, "dropout": 0.0, "pos_encoding": "rope"}  # fmt: skip


def sine_series(n=240, seed=0):
    t = np.arange(n)
    noise = 0.1 * np.random.default_rng(seed).standard_normal(n)
    return pd.Series(10 + 3 * np.sin(2 * np.pi * t / 12) + 0.02 * t + noise, name="sine")


def tiny_config(**changes):
    values = dict(horizon=12, season=12, context=24, n_origins=2, max_steps=200, n_paths=20, n_bins=64, model=TINY_MODEL)
    return ForecastConfig(**{**values, **changes})


# ------------------------------------------------------------------------ tokenization
def test_quantizer_picks_the_nearest_center_like_a_brute_force_search():
    q = MeanScaleQuantizer(n_bins=17, low=-2.0, high=3.0)
    values = np.random.default_rng(1).uniform(-10, 10, size=(4, 50))
    scale = np.array([0.5, 1.0, 2.0, 7.0])
    tokens = q.encode(values, scale)
    scaled = values / scale[:, None]
    nearest = np.abs(scaled[..., None] - q.centers).argmin(-1)  # outside the range: the end bin
    np.testing.assert_array_equal(tokens, nearest)
    inside = (scaled >= -2.0) & (scaled <= 3.0)
    error = np.abs(q.decode(tokens, scale) - values)
    assert (error[inside] <= (q.centers[1] - q.centers[0]) / 2 * np.broadcast_to(scale[:, None], values.shape)[inside] + 1e-12).all()


def test_mean_scale_is_the_mean_absolute_value_and_one_for_an_all_zero_context():
    np.testing.assert_allclose(mean_scale(np.array([[1.0, -3.0], [0.0, 0.0]])), [2.0, 1.0])


def test_fitted_range_covers_every_scaled_training_window():
    series = sine_series().to_numpy()
    windows = np.array([series[s : s + 36] for s in range(len(series) - 35)])  # the windows, by a loop
    q = MeanScaleQuantizer.fit(windows, context=24, n_bins=256)
    scaled = windows / np.abs(windows[:, :24]).mean(1, keepdims=True)
    assert q.low < scaled.min() and scaled.max() < q.high
    np.testing.assert_array_equal(sliding_windows(series, 36), windows)


def test_quantizer_rejects_a_bad_range():
    with pytest.raises(ValueError, match="low must be below high"):
        MeanScaleQuantizer(16, 1.0, 1.0)


# ----------------------------------------------------------------------------- metrics
def test_metrics_against_their_definitions():
    rng = np.random.default_rng(2)
    insample, actual, point = rng.normal(50, 5, 40), rng.normal(50, 5, 6), rng.normal(50, 5, 6)
    season = 4
    denominator = sum(abs(insample[t] - insample[t - season]) for t in range(season, 40)) / (40 - season)
    expected = sum(abs(a - f) for a, f in zip(actual, point)) / 6 / denominator
    assert mase(actual, point, insample, season) == pytest.approx(expected)
    assert smape(actual, point) == pytest.approx(np.mean([200 * abs(a - f) / (abs(a) + abs(f)) for a, f in zip(actual, point)]))
    assert smape([0.0, 2.0], [0.0, 2.0]) == 0.0
    assert coverage([1, 2, 3, 4], np.array([0, 0, 0, 5]), np.array([2, 2, 2, 6])) == 0.5
    with pytest.raises(ValueError, match="repeats exactly"):
        mase(actual, point, np.tile([1.0, 2.0], 10), 2)


def test_naive_and_seasonal_naive_points_and_calibrated_bands():
    history = np.arange(30.0)
    np.testing.assert_array_equal(naive(history, 3).point, [29, 29, 29])
    np.testing.assert_array_equal(seasonal_naive(history, 7, 5).point, [25, 26, 27, 28, 29, 25, 26])
    # on random walks (naive) and seasonal random walks the 80% bands hold ~80% of the futures
    rng = np.random.default_rng(3)
    hits = {"naive": [], "seasonal": []}
    for _ in range(400):
        walk = np.cumsum(rng.standard_normal(160))
        hits["naive"].append(coverage(walk[150:], *_band(naive(walk[:150], 10))))
        seasonal = np.zeros(160)
        seasonal[:4] = rng.standard_normal(4)
        for t in range(4, 160):
            seasonal[t] = seasonal[t - 4] + rng.standard_normal()
        hits["seasonal"].append(coverage(seasonal[150:], *_band(seasonal_naive(seasonal[:150], 10, 4))))
    assert np.mean(hits["naive"]) == pytest.approx(0.8, abs=0.04)
    assert np.mean(hits["seasonal"]) == pytest.approx(0.8, abs=0.04)


def _band(fc):
    return fc.low, fc.high


def test_ets_continues_trend_and_season():
    t = np.arange(120)
    truth = 20 + 0.3 * t + 4 * np.sin(2 * np.pi * t / 12)
    noisy = truth + 0.05 * np.random.default_rng(4).standard_normal(120)
    fc = ets(noisy[:108], 12, 12)
    assert np.abs(fc.point - truth[108:]).max() < 0.5
    assert (fc.low < fc.point).all() and (fc.point < fc.high).all()


def test_rolling_origins_end_at_the_series_end():
    assert rolling_origins(100, 12, 3) == [64, 76, 88]
    with pytest.raises(ValueError, match="horizon must be a positive"):
        rolling_origins(100, 0, 3)


# -------------------------------------------------------------------------- the series
def test_builtin_series_are_complete():
    co2 = load_series("co2")
    assert len(co2) == 526 and not co2.isna().any() and co2.index.freqstr == "MS"
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    assert co2["1960-01-01"] == pytest.approx(weekly["1960-01"].mean())
    sunspots = load_series("sunspots")
    assert len(sunspots) == 309 and sunspots.iloc[0] == 5.0


def write_csv(tmp_path, text):
    path = tmp_path / "series.csv"
    path.write_text(text)
    return path


def test_blank_lines_keep_line_numbers_and_uneven_dates_warn(tmp_path):
    with pytest.raises(ValueError, match="line 3: the value in 'value' is missing"):
        load_series(write_csv(tmp_path, "date,value\n2020-01-01,1\n\n2020-03-01,2\n"), "value", "date")
    with pytest.warns(UserWarning, match="not evenly spaced"):
        load_series(write_csv(tmp_path, "date,value\n2020-01-01,1\n2020-01-02,2\n2020-03-01,2\n"), "value", "date")


def test_csv_series_with_dates(tmp_path):
    path = write_csv(tmp_path, "date,value\n2020-01-01,1.5\n2020-02-01, 2\n2020-03-01,-3e1\n")
    series = load_series(path, "value", "date")
    assert series.tolist() == [1.5, 2.0, -30.0]
    assert series.index[1] == pd.Timestamp("2020-02-01")


@pytest.mark.parametrize(
    "text, columns, message",
    [
        ("date,value\n2020-01-01,1\n2020-02-01,\n", ("value", "date"), r"line 3: the value in 'value' is missing"),
        ("date,value\n2020-01-01,1\n2020-02-01,abc\n", ("value", "date"), r"line 3: the value 'abc' in 'value' is not a finite"),
        ("date,value\n2020-01-01,1\n", ("sales", "date"), r"no value column 'sales'; the file's columns are \['date', 'value'\]"),
        ("date,value\n2020-01-01,1\n", ("value", "day"), r"no date column 'day'"),
        ("date,value\n2020-02-01,1\n2020-01-01,2\n", ("value", "date"), r"line 3: the dates in 'date' must increase"),
        ("date,value\n2020-02-01,1\nsoon,2\n", ("value", "date"), r"line 3: 'soon' in 'date' is not a date"),
        ("date,value\n2020-02-01,1\n", (None, "date"), r"name the value column"),
    ],
)
def test_bad_csv_input_is_named(tmp_path, text, columns, message):
    with pytest.raises(ValueError, match=message):
        load_series(write_csv(tmp_path, text), *columns)


def test_unknown_series_is_named():
    with pytest.raises(FileNotFoundError, match="not a built-in series"):
        load_series("no-such.csv", "value")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"horizon": 0}, "horizon must be an integer >= 1"),
        ({"season": -1}, "season must be an integer >= 1"),
        ({"n_paths": 5}, "n_paths must be an integer >= 20"),
        ({"max_steps": 2.5}, "max_steps must be an integer >= 1"),
        ({"max_steps": None, "max_minutes": None}, "give a training budget"),
        ({"model": {**TINY_MODEL, "context_window": 9}}, "follow from n_bins, context and horizon"),
        ({"model": {**TINY_MODEL, "n_heads": 3}}, "n_embd"),
    ],
)
def test_bad_config_is_named(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_a_series_too_short_or_a_season_too_long_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(forecast, "train_forecaster", lambda *a, **k: pytest.fail("trained on bad input"))
    with pytest.raises(ValueError, match="has 40 points.*11 more between training and validation.*need at least 95"):
        evaluate(sine_series(40), tiny_config())
    with pytest.raises(ValueError, match="season 300: MASE needs more than one season"):
        evaluate(sine_series(), tiny_config(season=300))


# ------------------------------------------------------------------ training, forecasting
def test_the_transformer_learns_a_seasonal_series_and_samples_reproducibly():
    result = evaluate(sine_series(), tiny_config(), progress=False)
    table = result.summary()
    assert table.loc["moelab", "MASE"] < 0.5 * table.loc["naive", "MASE"]
    losses = result.forecasters[1].losses["loss"]
    assert losses.iloc[-20:].mean() < 0.5 * losses.iloc[:5].mean()
    # scores are recomputed from the stored forecasts by the metric functions
    origin = result.origins[-1]
    values = sine_series().to_numpy()
    fc = result.forecasts[("moelab", origin)]
    row = result.results.query("method == 'moelab' and origin == @origin").iloc[0]
    assert row["MASE"] == pytest.approx(mase(values[origin:origin + 12], fc.point, values[:origin], 12))
    assert fc.paths.shape == (20, 12) and (fc.low <= fc.point).all() and (fc.point <= fc.high).all()
    again = result.forecasters[1].forecast(values[:origin], seed=forecast.sampling_seed(1, origin))
    np.testing.assert_array_equal(again.paths, fc.paths)
    assert result.headline().startswith("moelab MASE ")
    assert "ETS" in result.verdict()


def test_paired_comparison_is_per_origin():
    result = evaluate(sine_series(), tiny_config(max_steps=3, n_origins=3), seeds=[1, 2], progress=False)
    per = result.results.groupby(["method", "origin"])["MASE"].mean().unstack()
    d = per.loc["moelab"] - per.loc["ETS"]
    c = result.comparison("ETS")
    assert c["diff"] == pytest.approx(d.mean()) and c["origins"] == 3
    assert result.summary().loc["moelab", "seeds"] == 2


# --------------------------------------------------------------------------------- CLI
def test_cli_prints_the_table_and_the_headline(tmp_path, capsys):
    values = sine_series(120).to_numpy()
    path = write_csv(tmp_path, "t,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    assert cli.main([str(path), "--value-column", "y", "--horizon", "12", "--season", "12",
                          "--context", "24", "--origins", "2", "--steps", "3", "--paths", "20"]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    origins = rolling_origins(120, 12, 2)
    snaive = np.mean([mase(values[o:o + 12], seasonal_naive(values[:o], 12, 12).point, values[:o], 12) for o in origins])
    assert out[-1].startswith("moelab MASE ")
    assert f"seasonal naive MASE {snaive:.3f}, ETS MASE " in out[-1]
    assert any(line.startswith("ETS") for line in out)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--value-column", "nope", "--horizon", "12", "--season", "12"], "no value column 'nope'"),
        (["--value-column", "y", "--horizon", "0", "--season", "12"], "horizon must be an integer >= 1"),
        (["--value-column", "y", "--horizon", "6", "--season", "100"], "season 100: MASE needs more than one season"),
        (["--value-column", "y", "--season", "12"], "needs a horizon and a season"),
        (["--value-column", "y", "--horizon", "12", "--season", "12", "--context", "100"], "has 120 points"),
    ],
)
def test_cli_bad_input_fails_before_training(tmp_path, capsys, monkeypatch, args, message):
    path = write_csv(tmp_path, "t,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(sine_series(120))))
    monkeypatch.setattr(forecast, "train_forecaster", lambda *a, **k: pytest.fail("trained on bad input"))
    assert cli.main([str(path), *args]) == 2
    assert message in capsys.readouterr().err


def test_validation_windows_are_disjoint_from_training_and_pick_the_best_step(monkeypatch):
    values = sine_series().to_numpy()[:120]
    config = tiny_config(max_steps=60, eval_every=20, n_origins=1)  # horizon 12, 2 validation blocks
    seen = {}
    real_loss = training.horizon_loss

    def spy(model, windows, horizon):
        seen.setdefault("held", windows.clone())
        return real_loss(model, windows, horizon)

    monkeypatch.setattr(training, "horizon_loss", spy)
    f = train_forecaster(values[:108], config, progress=False)
    assert seen["held"].shape == (24, 36)  # the windows ending in the last 24 points
    val = f.losses.dropna(subset=["val_loss"])
    assert val["step"].tolist() == [0, 20, 40, 60]  # the untrained model is a candidate too
    assert f.best_step == int(val.loc[val["val_loss"].idxmin(), "step"])
    assert real_loss(f.model, seen["held"], 12) == pytest.approx(val["val_loss"].min(), rel=1e-5)


def test_no_validation_target_is_in_a_training_window():
    points = torch.arange(108).unfold(0, 36, 1)  # window i holds points i .. i + 35
    fit, held = split_windows(points, 24, 12)
    targets = set(held[:, -12:].flatten().tolist())
    assert held[:, -1].tolist() == list(range(84, 108)) and not targets & set(fit.flatten().tolist())
    assert fit[-1, -1] == 72 == min(targets) - 1  # and nothing more is dropped
    assert split_windows(points, 0, 12)[0] is points


def test_train_forecaster_checks_its_own_length():
    values = sine_series().to_numpy()
    with pytest.raises(ValueError, match="too few: one training window of 36 and the validation windows need 71"):
        train_forecaster(values[:70], tiny_config(), progress=False)
    f = train_forecaster(values[:36], tiny_config(val_blocks=0, max_steps=2), progress=False)  # one window, no validation
    assert f.best_step == 2 and f.losses["val_loss"].isna().all()


def test_training_budget_in_minutes_stops():
    values = sine_series().to_numpy()
    f = train_forecaster(values[:200], tiny_config(max_steps=None, max_minutes=0.02), progress=False)
    assert 1 <= len(f.losses) and f.train_seconds < 5
