"""The calibration stage (the one alert policy) through the production detect path, at the user's defaults.

Every model goes through it, ``default`` (the reference forecaster) included, so the
behaviour tests run ``default`` and ``mad`` alike.
"""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.core.calibration import AlertPolicy, lookback
from openanomaly.core.config import Pipeline
from openanomaly.core.detect import score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.models.neural import NHITSForecaster
from openanomaly.models.reference import LEVEL_WINDOW
from openanomaly.models.registry import load_forecaster

STEP_MS = 300_000  # 5 minutes: a day is 288 points
DAY = 288
WEEK = 7 * DAY
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
    result = score_range(series, p, forecaster, start_ms=int(grid[first]), end_ms=int(grid[-1]))
    out = np.full(values.shape, np.nan)
    out[:, first + 1 :] = result.anomaly_score
    return out


def noise(n: int = 3000, seed: int = 0) -> np.ndarray:
    return 10 + np.random.default_rng(seed).standard_normal(n)


def pages(score: np.ndarray) -> np.ndarray:
    """The first column of each run of alerting points."""
    alert = np.nan_to_num(score) > 1
    return np.flatnonzero(alert & ~np.concatenate([[False], alert[:-1]]))


def test_defaults_fit_the_context() -> None:
    assert pipeline().scoring.calibration.enabled
    for context, step_s in ((2016, 300), (8064, 300), (8064, 60), (12, 60)):
        look = lookback(AlertPolicy(), context=context, step_s=step_s)
        seasons = max((period * count for period, count in look.periods), default=0)
        reach = look.cooldown + look.refit + look.sustained - 1 + look.record + LEVEL_WINDOW + seasons
        assert reach <= context
    assert lookback(AlertPolicy(), context=2016, step_s=300).periods == ((DAY, 3),)
    assert lookback(AlertPolicy(), context=12, step_s=60).periods == ()
    # The budget is a rate per point: one a week is one in 2016 points at 5 minutes, half
    # of it for each of the two tests.
    assert lookback(AlertPolicy(), context=2016, step_s=300).rate == pytest.approx(1 / WEEK / 2)


@pytest.mark.parametrize("budget", [1.0, 4.0])
def test_pure_noise_pages_at_the_budgeted_rate(budget: float) -> None:
    # Gaussian noise, six weeks, one page per alert run (no cooldown to merge them): the
    # pages per week match the user's budget within a factor of two.
    x = np.stack([noise(6 * WEEK, seed=s) for s in range(4)])
    s = scores(
        x,
        "default",
        first=WEEK,
        context="14d",
        calibration={"false_alarms_per_week": budget, "cooldown": "0s"},
    )
    weeks = x.shape[0] * 5
    rate = sum(pages(row[WEEK + 1 :]).size for row in s) / weeks
    assert budget / 2 <= rate <= budget * 2, rate


def test_flat_series_never_alerts_and_any_departure_does() -> None:
    flat = np.full(2500, 7.0)
    quiet = scores(flat, first=500)
    assert np.all(np.isfinite(quiet[:, 501:])) and not (quiet > 1).any()
    flat[2000] = 7.5
    moved = scores(flat, first=500)
    assert np.flatnonzero(moved[0] > 1).tolist() == [2000]


@pytest.mark.parametrize("every", [DAY // 2, DAY])
def test_an_idle_metric_pages_on_an_unusual_step_not_its_routine_one(every: int) -> None:
    # Zero but for a step of 1 twice a day or once a day: more often than the budget (one
    # a week), so not an anomaly, even while the record is young and holds few of them
    # (their residuals tie at 0 with the idle points; a tie is no excess). A step of 10 is.
    x = np.zeros(8 * DAY)
    x[DAY // 4 :: every] = 1.0
    x[7 * DAY + 100] = 10.0
    for model in ("default", "mad"):
        s = scores(x, model, first=DAY)[0]
        assert (pages(s[DAY + 1 :]) + DAY + 1).tolist() == [7 * DAY + 100], model


def test_warm_up_points_are_not_scored() -> None:
    # min_history (1 day) of record is needed first: those points get no score at all.
    x = noise(1000)
    s = scores(x, first=0)[0]
    assert np.isnan(s[: DAY - 1]).all() and np.isfinite(s[DAY + 20 :]).all()


@pytest.mark.parametrize("model", ["mad", "default"])
def test_a_spike_pages_at_that_point_only(model: str) -> None:
    x = noise()
    x[2500] += 12
    s = scores(x, model, first=500)[0]
    assert s[2500] > 2
    assert pages(s).tolist() == [2500]


@pytest.mark.parametrize("model", ["mad", "default"])
def test_a_level_shift_pages_once(model: str) -> None:
    x = noise()
    x[2500:] += 8
    assert pages(scores(x, model, first=500)[0]).tolist() == [2500]


def test_a_stalled_seasonal_cycle_pages_once() -> None:
    model = "default"  # its daily profile; mad's recent median follows a stall
    t = np.arange(DAY * 12)
    x = 50 + 20 * np.sin(2 * np.pi * t / DAY) + np.random.default_rng(2).standard_normal(t.size)
    # Five days at one false alarm a week: noise may page once, and does here (score 1.14).
    assert pages(scores(x, model, first=DAY * 7)[0]).size <= 1
    broken = x.copy()
    broken[DAY * 10 : DAY * 10 + 48] = broken[DAY * 10]  # the cycle stops for 4 hours
    found = pages(scores(broken, model, first=DAY * 7)[0])
    assert found.size == 1 and DAY * 10 <= found[0] <= DAY * 10 + 48


@pytest.mark.parametrize("model", ["mad", "default"])
def test_a_slow_ramp_pages_once_when_it_leaves_the_range(model: str) -> None:
    # One-step residuals of a slow ramp are tiny: the range the context has seen catches
    # it, once (leaving the range starts an incident; each new high is not news).
    x = noise(4000, seed=1)
    x[3000:3600] += np.linspace(0, 18, 600)
    x[3600:] += 18
    found = pages(scores(x, model, first=2100)[0][3000:]) + 3000
    assert found.size == 1 and found[0] < 3600


def test_nan_gaps_are_not_scored_and_do_not_alert() -> None:
    x = noise(seed=3)
    x[1500:1560] = np.nan  # a 5-hour gap
    x[2200:2202] = np.nan
    s = scores(x, first=500)[0, 501:]
    missing = np.isnan(x[501:])
    assert np.isnan(s[missing]).all() and np.isfinite(s[~missing]).all()
    assert pages(s).size <= 1
    assert not (s[1560 - 501 : 1580 - 501] > 1).any()  # no alert as the samples come back


@pytest.mark.parametrize("model", ["mad", "default"])
def test_rank_inside_the_band_follows_a_sustained_shift(model: str) -> None:
    # The alert fires once, but the score stays high (if below 1) while the shift lasts.
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
    assert np.nanmax(s[2505:2600]) <= np.nanquantile(s[1500:2490], 0.99) + 1e-12


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
    whole = score_range(series, p, forecaster, start_ms=start, end_ms=end, batch_chunks=97)
    window = int(p.schedule.infer_every.total_seconds() * 1000)
    parts = [
        score_range(series, p, forecaster, start_ms=t, end_ms=min(t + window, end))
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
    result = score_range(series, p, model, start_ms=int(grid[1000]), end_ms=int(grid[-1]))
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
