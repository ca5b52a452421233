"""The calibration stage through the production detect path, with the scoring defaults a user gets.

The stage's behaviour is shown with ``mad`` (a model whose own band is not calibrated);
``default`` brings its own calibrated band (``calibrated = True``): the stage only ranks
the points inside it.
"""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.calibration import lookbacks
from openanomaly.config import CalibrationConfig, Pipeline
from openanomaly.detect import backtest, detect
from openanomaly.models.neural import NHITSForecaster
from openanomaly.models.registry import load_forecaster
from openanomaly.series import SeriesMatrix

STEP_MS = 300_000  # 5 minutes: a day is 288 points
DAY = 288
SEASONAL_NAIVE = {"spec": "statsforecast:SeasonalNaive", "params": {"season_length": DAY}}


def pipeline(
    model: str | dict = "mad", *, infer_every: str = "5m", context: str = "7d", **scoring
) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "p",
            "query": "m",
            "step": "5m",
            "model": model,
            "schedule": {"infer_every": infer_every, "context": context},
            "scoring": scoring,
        }
    )


def scores(values: np.ndarray, model: str | dict = "mad", *, first: int = 0, **kwargs) -> np.ndarray:
    """``anomaly_score`` ``(n, t)`` by column, of every point after column ``first`` (NaN before)."""
    values = np.atleast_2d(values)
    grid = STEP_MS * np.arange(values.shape[1], dtype=np.int64)
    series = SeriesMatrix(tuple({"i": str(i)} for i in range(len(values))), grid, values)
    p = pipeline(model, **kwargs)
    forecaster = load_forecaster(p.model.spec, **p.model.params)
    result = backtest(series, p, forecaster, start_ms=int(grid[first]), end_ms=int(grid[-1]))
    out = np.full(values.shape, np.nan)
    out[:, first + 1 :] = result.anomaly_score
    return out


def noise(n: int = 3000, seed: int = 0) -> np.ndarray:
    return 10 + np.random.default_rng(seed).standard_normal(n)


def test_defaults_are_on_and_fit_the_context() -> None:
    assert pipeline().scoring.calibration.enabled
    look = lookbacks(CalibrationConfig(), context=2016, step_s=300)
    assert look.periods == ((DAY, 3),)  # 3 days fit beside the history; a week does not fit twice
    assert look.cooldown + look.history + look.short_window - 1 + DAY * 3 + look.level_window <= 2016
    # The record spans at least a day: 864 points are 14.4 hours at 1 minute.
    assert look.history == 864 and lookbacks(CalibrationConfig(), context=8064, step_s=60).history == 1440
    assert lookbacks(CalibrationConfig(history_days=0), context=8064, step_s=60).history == 864
    tiny = lookbacks(CalibrationConfig(), context=12, step_s=60)
    assert tiny.history + tiny.short_window - 1 + tiny.cooldown + tiny.level_window <= 12
    assert tiny.periods == ()


def test_flat_series_never_alerts_and_any_departure_does() -> None:
    flat = np.full(2500, 7.0)
    quiet = scores(flat, first=100)
    assert np.all(np.isfinite(quiet[:, 101:])) and not (quiet > 1).any()
    flat[2000] = 7.5
    moved = scores(flat, first=100)
    assert np.flatnonzero(moved[0] > 1).tolist() == [2000]


def test_a_spike_alerts_at_that_point_only() -> None:
    x = noise()
    x[2500] += 12
    s = scores(x, first=500)[0]
    assert s[2500] > 2
    assert np.count_nonzero(s > 1) == 1


def test_a_level_shift_alerts_once() -> None:
    x = noise()
    x[2500:] += 8
    alerts = np.flatnonzero(scores(x, first=500)[0] > 1)
    assert alerts.tolist() == [2500]


def test_a_slow_drift_alerts_when_it_leaves_the_range() -> None:
    # One-step residuals of a slow ramp are tiny: only the range cap sees it.
    x = noise(seed=1)
    x[2400:] += np.linspace(0, 12, 600)
    capped = scores(x, first=500)[0]
    uncapped = scores(x, first=500, calibration={"range_margin": None})[0]
    # Pure noise leaves a young range now and then; the drift does so for sure.
    assert np.mean(capped[501:2400] > 1) < 0.003
    in_drift = np.flatnonzero(capped[2400:] > 1)
    assert in_drift.size
    assert not (uncapped[2400 : 2400 + in_drift[0] + 1] > 1).any()  # the range saw it first


@pytest.mark.parametrize("model", ["mad", "default"])
def test_a_ramp_out_of_the_range_pages_once_not_at_each_new_high(model: str) -> None:
    # Each point of the ramp is a new high, more than 5 % of the range above the last.
    # Leaving the range starts an incident, as an alert does: the cap stays off while a
    # recent point lies outside it. Before, the stage and ``default`` paged 12 times here.
    x = noise(seed=5)
    x[2500:2560] += 0.3 * np.arange(1, 61)
    x[2560:] += 18
    alerts = np.flatnonzero(scores(x, model, first=500)[0][2400:] > 1) + 2400
    assert alerts.size == 1 and 2500 <= alerts[0] < 2560


@pytest.mark.parametrize("model", ["mad", "default"])
def test_a_young_series_is_not_paged_for_leaving_its_short_range(model: str) -> None:
    # Five days of noise: a range of a day or two has not seen its usual extremes yet;
    # the cap waits for ``range_days`` (5) of samples. With it off, the noise pages.
    off = {"range_days": 0}  # the stage's knob for mad; default's own param of the same name
    eager_model = model if model == "mad" else {"spec": model, "params": off}
    eager_stage = {"calibration": off} if model == "mad" else {}
    for seed in (0, 1, 2):
        x = noise(n=1440, seed=seed)
        assert not (scores(x, model, first=100)[0] > 1).any()
        assert (scores(x, eager_model, first=100, **eager_stage)[0] > 1).any()


def test_a_seasonal_series_is_quiet_until_its_pattern_breaks() -> None:
    model = "default"  # its seasonal forecast; under the stage mad/SeasonalNaive miss the stall
    t = np.arange(DAY * 12)
    x = 50 + 20 * np.sin(2 * np.pi * t / DAY) + np.random.default_rng(2).standard_normal(t.size)
    quiet = scores(x, model, first=DAY * 7)[0]
    assert not (quiet > 1).any()
    broken = x.copy()
    broken[DAY * 10 : DAY * 10 + 48] = broken[DAY * 10]  # the cycle stops for 4 hours
    alerts = np.flatnonzero(scores(broken, model, first=DAY * 7)[0] > 1)
    # The stall is followed by the level correction (one-step residuals stay small);
    # the restart of the cycle is the alert.
    assert alerts.tolist() and DAY * 10 <= alerts[0] <= DAY * 10 + 48


def test_nan_gaps_are_not_scored_and_do_not_alert() -> None:
    x = noise(seed=3)
    x[1500:1560] = np.nan  # a 5-hour gap
    x[2200:2202] = np.nan
    s = scores(x, first=500)[0, 501:]
    missing = np.isnan(x[501:])
    assert np.isnan(s[missing]).all() and np.isfinite(s[~missing]).all()
    assert np.mean(s > 1) < 0.003
    assert not (s[1560 - 501 : 1580 - 501] > 1).any()  # no alert as the samples come back


@pytest.mark.parametrize("model", ["mad", "default"])
def test_rank_inside_the_band_follows_a_sustained_shift(model: str) -> None:
    # The alert fires once, but the score stays high (if below 1) while the shift lasts;
    # default's own band decides its alerts, the stage ranks the rest for it too.
    x = noise(seed=4)
    x[2500:2600] += 6
    s = scores(x, model, first=500)[0]
    during, before = s[2505:2600], s[1500:2490]
    assert np.median(during) > np.quantile(before, 0.99)
    assert (during <= 1).all()


def test_rank_inside_the_band_follows_the_direction() -> None:
    x = noise(seed=4)
    x[2500:2600] -= 6  # a drop: a metric that only pages on rises ranks it as nothing
    s = scores(x, first=500, direction="above")[0]
    assert np.nanmax(s[2505:2600]) <= np.quantile(s[1500:2490], 0.99) + 1e-12


def test_a_one_minute_pipeline_gets_a_day_long_record() -> None:
    # The window path tells default the step: at 1 minute its 864-point record becomes 1440.
    x = noise(4000, seed=7)
    x[1500] += 8
    grid = 60_000 * np.arange(x.size, dtype=np.int64)
    series = SeriesMatrix(({"i": "0"},), grid, x[None, :])

    def run(params: dict) -> np.ndarray:
        p = Pipeline.model_validate(
            {
                "name": "p",
                "query": "m",
                "step": "1m",
                "model": {"spec": "default", "params": params},
                "schedule": {"infer_every": "1m", "context": "2d"},
            }
        )
        model = load_forecaster(p.model.spec, **p.model.params)
        return backtest(series, p, model, start_ms=int(grid[600]), end_ms=int(grid[-1])).anomaly_score

    day = run({})
    np.testing.assert_array_equal(day, run({"history": 1440, "history_days": 0}))
    assert not np.array_equal(day, run({"history_days": 0}))


@pytest.mark.parametrize(("model", "infer_every"), [("default", "5m"), ("mad", "15m"), ("zscore", "5m")])
def test_backtest_equals_scoring_one_window_at_a_time(model: str, infer_every: str) -> None:
    # The scheduler scores one infer_every window per run; a backtest scores thousands of
    # chunks per call from shared arrays. The results must be identical.
    rng = np.random.default_rng(5)
    values = np.stack([noise(1400, seed=6), 50 + np.sin(np.arange(1400) / 20) + rng.standard_normal(1400)])
    values[0, 700:760] = np.nan
    values[1, :300] = np.nan  # starts late
    values[1, 1000] += 9
    grid = STEP_MS * np.arange(1400, dtype=np.int64)
    series = SeriesMatrix(({"i": "0"}, {"i": "1"}), grid, values)
    p = pipeline(model, infer_every=infer_every)
    forecaster = load_forecaster(model)
    start, end = int(grid[199]), int(grid[-1])
    whole = backtest(series, p, forecaster, start_ms=start, end_ms=end, batch_chunks=97)
    window = int(p.schedule.infer_every.total_seconds() * 1000)
    parts = [
        detect(series, p, forecaster, start_ms=t, end_ms=min(t + window, end))
        for t in range(start, end, window)
    ]
    for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
        one_by_one = np.concatenate([getattr(part, name) for part in parts], axis=1)
        np.testing.assert_array_equal(getattr(whole, name), one_by_one, err_msg=name)


@pytest.mark.parametrize("model", ["default", "mad", "zscore", SEASONAL_NAIVE], ids=str)
def test_pure_noise_rarely_alerts(model: str | dict) -> None:
    rates = [np.mean(scores(noise(3000, seed=s), model, first=1000) > 1) for s in range(3)]
    assert max(rates) < 0.005


@pytest.mark.parametrize(
    "model",
    [{"spec": "statsforecast:AutoETS"}, {"spec": "statsforecast:MSTL", "params": {"season_length": DAY}}],
    ids=lambda model: model["spec"],
)
def test_statsforecast_models_on_pure_noise_rarely_alert(model: dict) -> None:
    # Fitted on each window's context, in 48-point chunks as the NAB harness runs them.
    x = np.stack([noise(2500, seed=s) for s in range(3)])
    s = scores(x, model, first=1000, infer_every="4h", context="3d")
    assert np.mean(s > 1) < 0.005


def test_tiny_chronos_on_pure_noise_rarely_alerts(tiny_chronos_bolt: str) -> None:
    # Random weights: the forecasts are poor, the stage still keeps alerts rare.
    x = np.stack([noise(2500, seed=s) for s in range(4)])
    chronos = {
        "spec": f"chronos:{tiny_chronos_bolt}",
        "params": {"device": "cpu", "tail_quantiles": "normal"},
    }
    s = scores(x, chronos, first=1000, infer_every="1h")
    assert np.mean(s > 1) < 0.005


def test_nhits_on_pure_noise_rarely_alerts() -> None:
    x = np.stack([noise(2000, seed=s) for s in range(4)])
    p = pipeline("neuralforecast:NHITS", infer_every="1h", context="1d")  # a small network to train
    model = NHITSForecaster.fit(x, horizon=12, input_size=p.context_points, quantiles=[0.05, 0.5, 0.95])
    grid = STEP_MS * np.arange(x.shape[1], dtype=np.int64)
    series = SeriesMatrix(tuple({"i": str(i)} for i in range(4)), grid, x)
    result = backtest(series, p, model, start_ms=int(grid[1000]), end_ms=int(grid[-1]))
    assert np.mean(result.anomaly_score > 1) < 0.005


def test_long_chunks_are_scored_one_step_ahead() -> None:
    # Slow swings (a 77-point cycle: no daily profile follows it) scored in 64-point
    # chunks by a model whose forecast is flat over the chunk with a narrow band: the
    # stage's one-step record must be compared with one-step residuals. With the
    # reference held flat over the chunk, 41 % of points paged (8 % with 12-point chunks).
    t = np.arange(DAY * 8)
    x = 50 + 5 * np.sin(2 * np.pi * t / 77) + np.random.default_rng(3).normal(0, 0.3, t.size)
    narrow = {"spec": "mad", "params": {"window": 12}}
    rate = np.mean(scores(x, narrow, first=DAY * 4, infer_every="320m")[0, DAY * 4 + 1 :] > 1)
    assert rate < 0.005
