"""The ``default`` detector: its own record band, one alert per incident, range cap.

It is ``calibrated`` (the calibration stage keeps its alerts and only ranks inside its band); these tests pin
its behaviour on the cases the stage tests cover for the other models.
"""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.errors import ModelError
from openanomaly.models.default import DefaultForecaster, candidate_periods, detect_period
from openanomaly.models.registry import load_forecaster


def test_detect_period_finds_a_daily_cycle_and_none_in_a_random_walk() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2000)
    seasonal = np.sin(2 * np.pi * t / 96) + 0.1 * rng.standard_normal(2000)
    walk = np.cumsum(rng.standard_normal(2000))
    assert detect_period(np.stack([seasonal, walk])).tolist() == [96, 0]


def test_default_forecaster_band_is_calibrated_and_ordered() -> None:
    rng = np.random.default_rng(1)
    contexts = 10 + rng.standard_normal((50, 600))
    forecast = load_forecaster("default").forecast(contexts, 1, [0.05, 0.5, 0.95])
    assert forecast.quantiles.shape == (50, 1, 3)
    assert np.all(np.diff(forecast.quantiles, axis=-1) >= 0)
    assert np.median(forecast.median) == pytest.approx(10, abs=0.2)
    nxt = 10 + rng.standard_normal(50)
    outside = (nxt > forecast.quantiles[:, 0, 2]) | (nxt < forecast.quantiles[:, 0, 0])
    assert outside.mean() < 0.3


def test_candidate_periods_offers_daily_and_weekly_cycles() -> None:
    t = np.arange(48 * 7 * 6)  # six weeks of 30-minute points
    daily = np.sin(2 * np.pi * t / 48)
    weekend = np.where((t // 48) % 7 >= 5, -1.5, 0.0)
    daily_found, weekly_found = sorted(candidate_periods((daily + weekend)[None, :], count=2)[0].tolist())
    assert abs(daily_found - 48) <= 1 and weekly_found == 336


def test_default_forecaster_band_edge_is_the_record_residual_after_a_spike() -> None:
    rng = np.random.default_rng(2)
    context = 10 + rng.standard_normal((1, 600))
    context[0, -5] = 30.0  # a 20-sigma spike 5 points ago: the same again must not alert
    forecast = DefaultForecaster(gain=1.0, short_window=1).forecast(context, 1, [0.05, 0.5, 0.95])
    upper = forecast.quantiles[0, 0, 2] - forecast.median[0, 0]
    assert 19 < upper < 21
    quiet = DefaultForecaster(gain=1.0, short_window=1).forecast(context[:, :-10], 1, [0.05, 0.5, 0.95])
    assert quiet.quantiles[0, 0, 2] - quiet.median[0, 0] < 6


def test_default_forecaster_alerts_on_a_step_but_not_on_noise() -> None:
    rng = np.random.default_rng(3)
    noise = 5 + rng.standard_normal(1500)
    step = noise.copy()
    step[1200:] += 8
    model = DefaultForecaster()
    contexts = np.stack([noise[:1200], step[:1200]])
    forecast = model.forecast(contexts, 1, [0.05, 0.5, 0.95])
    actual = np.array([noise[1200], step[1200]])
    outside = actual > forecast.quantiles[:, 0, 2]
    assert outside.tolist() == [False, True]


def test_default_forecaster_alerts_once_per_accelerating_incident() -> None:
    # A fall that keeps accelerating beats the sustained test at every point; the
    # cooldown turns that into one alert for the incident.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1200)
    x[1100:1130] -= 0.29 * np.arange(30) ** 2 / 2
    contexts = np.stack([x[t - 1000 : t] for t in range(1095, 1130)])
    alerts = {}
    for cooldown in (144, 0):
        model = DefaultForecaster(cooldown=cooldown, range_margin=None)
        lower = model.forecast(contexts, 1, [0.05, 0.5, 0.95]).quantiles[:, 0, 0]
        alerts[cooldown] = int((x[1095:1130] < lower).sum())
    assert alerts[144] == 1
    assert alerts[0] > 4


def test_default_forecaster_alerts_when_a_slow_drift_leaves_the_range() -> None:
    # Residuals of a slow ramp are tiny, so only the range rule sees it leave everything
    # the context has seen; the range is taken before the ramp (range_lag), so the
    # ramp does not drag it along.
    rng = np.random.default_rng(4)
    context = rng.uniform(9.9, 10.1, 1100)
    context[-100:] = np.linspace(10.0, 10.1, 100)
    quantiles = [0.05, 0.5, 0.95]
    capped = DefaultForecaster().forecast(context[None], 1, quantiles).quantiles[0, 0]
    uncapped = DefaultForecaster(range_margin=None).forecast(context[None], 1, quantiles).quantiles[0, 0]
    assert capped[2] == pytest.approx(10.1 + 0.05 * 0.2, abs=0.005)  # max + 5 % of the range
    assert uncapped[2] > 10.3
    assert np.all(np.diff(capped) >= 0) and capped[0] < 9.9


def test_the_range_caps_a_series_once_it_has_range_days_of_samples() -> None:
    # The slow drift above, in a 1600-point context at 5 minutes (5.6 days): a series that
    # began 1100 points ago (3.8 days) has not shown its week's extremes and is not capped;
    # one that fills the context is. A context shorter than 5 days is capped once full.
    rng = np.random.default_rng(4)
    older = rng.uniform(9.9, 10.1, 1600)
    older[-100:] = np.linspace(10.0, 10.1, 100)
    younger = older.copy()
    younger[:500] = np.nan
    quantiles = [0.05, 0.5, 0.95]
    model = DefaultForecaster().for_step(300)
    young, old, short = (
        model.forecast(c[None], 1, quantiles).quantiles[0, 0] for c in (younger, older, older[-1100:])
    )
    assert old[2] == pytest.approx(10.1 + 0.05 * 0.2, abs=0.005)
    assert short[2] == pytest.approx(old[2])
    assert young[2] > 10.3


def test_default_forecaster_handles_short_and_empty_rows() -> None:
    contexts = np.full((2, 50), np.nan)
    contexts[0, -3:] = [1.0, 2.0, 3.0]
    forecast = DefaultForecaster().forecast(contexts, 2, [0.1, 0.5, 0.9])
    assert np.isfinite(forecast.median[0]).all()
    assert np.isnan(forecast.median[1]).all()


def test_default_rejects_bad_params() -> None:
    with pytest.raises(ModelError, match="short_window"):
        DefaultForecaster(short_window=0)
    with pytest.raises(ModelError, match="gain"):
        DefaultForecaster(gain=0)
    with pytest.raises(ModelError, match="cooldown"):
        DefaultForecaster(cooldown=-1)
    with pytest.raises(ModelError, match="range_margin"):
        DefaultForecaster(range_margin=-0.1)
    with pytest.raises(ModelError, match="no model name"):
        DefaultForecaster.from_spec("foo")
    with pytest.raises(ModelError, match="history_days"):
        DefaultForecaster(history_days=-1)
    with pytest.raises(ModelError, match="range_days"):
        DefaultForecaster(range_days=True)


def test_the_step_turns_the_windows_in_days_into_points() -> None:
    model = DefaultForecaster()
    assert (model.history, model.range_points) == (864, 0)  # no step known: points only
    five = model.for_step(300)  # 864 points are three days at 5 minutes; the range waits 5 days
    assert (five.history, five.range_points) == (864, 1440)
    minute = model.for_step(60)
    assert (minute.history, minute.range_points) == (1440, 7200) and minute is model.for_step(60)
    days_off = DefaultForecaster(history_days=0, range_days=0)
    assert days_off.for_step(60) is days_off
    # The copy forecasts exactly as the same model configured with that history.
    levels = [0.05, 0.5, 0.95]
    contexts = 5 + np.random.default_rng(3).standard_normal((2, 3000))
    contexts[0, 2000] += 9  # a spike 1000 points back: outside 864, inside 1440
    expected = DefaultForecaster(history=1440).forecast(contexts, 1, levels).quantiles
    stepped = DefaultForecaster(range_days=0).for_step(60)
    np.testing.assert_array_equal(stepped.forecast(contexts, 1, levels).quantiles, expected)
    shorter = model.forecast(contexts, 1, levels).quantiles
    assert expected[0, 0, 2] > shorter[0, 0, 2]  # the day-long record remembers the spike
