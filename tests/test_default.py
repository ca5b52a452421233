"""The ``default`` model: the robust seasonal reference forecaster (its alerts are the stage's)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from openanomaly.errors import ModelError
from openanomaly.models.base import ChunkedForecaster, StepAware
from openanomaly.models.default import DefaultForecaster
from openanomaly.models.reference import median
from openanomaly.models.registry import load_forecaster, validate_params

LEVELS = [0.05, 0.5, 0.95]


def test_default_forecasts_the_level_of_noise_with_an_ordered_band() -> None:
    rng = np.random.default_rng(1)
    contexts = 10 + rng.standard_normal((50, 600))
    forecast = load_forecaster("default").forecast(contexts, 1, LEVELS)
    assert forecast.quantiles.shape == (50, 1, 3)
    assert np.all(np.diff(forecast.quantiles, axis=-1) >= 0)
    assert np.median(forecast.median) == pytest.approx(10, abs=0.2)
    # its band: normal quantiles of its one-step error (sd about 1.1 for a median of 6)
    half = np.median(forecast.quantiles[:, 0, 2] - forecast.median[:, 0])
    assert 1.4 < half < 2.4


def test_default_follows_a_daily_profile_when_it_knows_the_step() -> None:
    day = 288
    t = np.arange(day * 6 + 5)
    x = 50 + 20 * np.sin(2 * np.pi * t / day) + np.random.default_rng(2).normal(0, 0.2, t.size)
    context = x[None, : day * 6]
    truth = x[day * 6 : day * 6 + 5]
    stepped = DefaultForecaster().for_step(300).forecast(context, 5, LEVELS)
    level_only = DefaultForecaster().forecast(context, 5, LEVELS)
    assert np.abs(stepped.median[0] - truth).max() < 1.0
    assert np.abs(level_only.median[0] - truth).max() > np.abs(stepped.median[0] - truth).max()


def test_forecast_chunks_equals_forecast_of_each_context() -> None:
    # The backtest's shared path must give exactly what one context at a time gives.
    rng = np.random.default_rng(3)
    day = 96
    t = np.arange(day * 8)
    values = np.stack(
        [5 + np.sin(2 * np.pi * t / day) + 0.1 * rng.standard_normal(t.size), rng.standard_normal(t.size)]
    )
    values[1, :200] = np.nan
    values[0, 400:420] = np.nan
    model = DefaultForecaster().for_step(900)
    context, horizon = day * 4, 3
    ends = np.arange(context, t.size - horizon, 7)
    rows = np.arange(2 * ends.size)
    chunked = model.forecast_chunks(values, ends, rows, context, horizon, LEVELS)
    contexts = np.stack([values[i, end - context : end] for i in range(2) for end in ends])
    alone = model.forecast(contexts, horizon, LEVELS)
    np.testing.assert_array_equal(chunked.median, alone.median)
    np.testing.assert_array_equal(chunked.quantiles, alone.quantiles)


def test_default_declares_its_capabilities() -> None:
    model = load_forecaster("default")
    assert isinstance(model, StepAware) and isinstance(model, ChunkedForecaster)
    assert model.for_step(60).step_s == 60 and model.for_step(60).for_step(60).step_s == 60


def test_default_handles_short_and_empty_rows() -> None:
    contexts = np.full((2, 50), np.nan)
    contexts[0, -3:] = [1.0, 2.0, 3.0]
    forecast = DefaultForecaster().forecast(contexts, 2, [0.1, 0.5, 0.9])
    assert np.isfinite(forecast.median[0]).all()
    assert np.isnan(forecast.median[1]).all()


def test_default_takes_no_params_and_says_where_the_knobs_went() -> None:
    with pytest.raises(ModelError, match="no model name"):
        DefaultForecaster.from_spec("foo")
    with pytest.raises(ModelError, match=r"scoring\.calibration"):
        validate_params("default", {"gain": 1.88})
    with pytest.raises(ModelError, match="step_s"):
        DefaultForecaster(step_s=0)


@pytest.mark.parametrize("shape", [(7,), (50, 6), (20, 30, 5), (10, 3, 360)])
def test_reference_median_ignores_gaps_and_infinities(shape: tuple[int, ...]) -> None:
    """The median of the finite values of each window (NaN where none): windows without a
    gap take the fast path, the rest the gathered one; both agree with numpy's."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).round(1)  # ties, so both middle values matter
    draw = rng.random(shape)
    x[draw < 0.1] = np.nan
    x[(draw > 0.1) & (draw < 0.13)] = np.inf
    x[(draw > 0.13) & (draw < 0.16)] = -np.inf
    x.reshape(-1, shape[-1])[0] = rng.normal(size=shape[-1])  # at least one window without a gap
    x.reshape(-1, shape[-1])[1:3] = np.nan  # and windows of nothing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
        want = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=-1)
    np.testing.assert_array_equal(median(x), want)
