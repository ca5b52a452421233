"""The ``default`` detector's incremental backtest path equals its per-context reference.

``DefaultForecaster.forecast_chunks`` (what :mod:`openanomaly.detect` calls for a backtest)
must give exactly ``forecast`` of the same contexts, so a point gets the same score from a
year-long backtest as from its scheduled window.
"""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.config import Pipeline
from openanomaly.detect import backtest, detect
from openanomaly.models.default import DefaultForecaster, _ffill, candidate_periods
from openanomaly.models.default_rolling import rolling_periods
from openanomaly.series import SeriesMatrix

LEVELS = [0.05, 0.5, 0.95]


def _series(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    noise = rng.normal(size=n)
    if kind == "flat":
        return np.full(n, 3.0)
    if kind == "spike":
        noise[n // 2] += 30.0
        return noise
    if kind == "level shift":
        return noise + np.where(t >= n // 2, 10.0, 0.0)
    if kind == "seasonal":  # a daily and a weekly cycle, as hourly-sampled traffic has
        return 10 * np.sin(2 * np.pi * t / 48) + 3 * np.sin(2 * np.pi * t / 336) + noise
    if kind == "nan gaps":
        values = 5 * np.sin(2 * np.pi * t / 24) + noise
        values[rng.random(n) < 0.1] = np.nan
        values[300:420] = np.nan
        return values
    raise ValueError(kind)


KINDS = ["flat", "spike", "level shift", "seasonal", "nan gaps"]


def _reference_and_fast(
    values: np.ndarray, context: int, horizon: int, model: DefaultForecaster
) -> tuple[object, object]:
    padded = np.concatenate([np.full(context, np.nan), values])[None, :]
    ends = np.arange(context + 1, padded.shape[1] + 1, horizon)
    contexts = np.stack([padded[0, end - context : end] for end in ends])
    rows = np.arange(len(ends))
    return (
        model.forecast(contexts, horizon, LEVELS),
        model.forecast_chunks(padded, ends, rows, context, horizon, LEVELS),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_rolling_forecasts_are_the_reference_bit_for_bit(kind: str) -> None:
    reference, fast = _reference_and_fast(_series(kind, 1500), 700, 1, DefaultForecaster())
    np.testing.assert_array_equal(fast.median, reference.median)
    np.testing.assert_array_equal(fast.quantiles, reference.quantiles)


@pytest.mark.parametrize("kind", ["seasonal", "nan gaps"])
def test_rolling_forecasts_match_with_longer_chunks_and_short_contexts(kind: str) -> None:
    """Horizons past one point, and a context shorter than the default history."""
    for context, horizon in ((700, 4), (200, 3)):
        values = _series(kind, 900, seed=3)
        reference, fast = _reference_and_fast(values, context, horizon, DefaultForecaster())
        np.testing.assert_array_equal(fast.median, reference.median)
        np.testing.assert_array_equal(fast.quantiles, reference.quantiles)


def test_rolling_periods_are_the_reference_periods_where_not_fragile() -> None:
    values = _series("seasonal", 2000, seed=5)
    context = 1000
    ends = np.arange(context, values.size + 1, 7)
    periods, fragile = rolling_periods(
        values, ends - context, ends, context=context, count=2, min_period=4, min_acf=0.3, min_prominence=0.2
    )
    contexts = np.stack([values[end - context : end] for end in ends])
    reference = candidate_periods(_ffill(contexts), count=2)
    assert (reference[:, 0] == 48).all()
    assert not fragile.any()
    np.testing.assert_array_equal(periods, reference)


def test_a_backtest_scores_each_point_as_its_scheduled_window_does() -> None:
    """Scheduled windows (a few chunks: the per-context path) against one backtest (incremental)."""
    step = 60_000
    values = np.stack([_series("seasonal", 1400, seed=1), _series("nan gaps", 1400, seed=2)])
    series = SeriesMatrix.from_rows(
        [{"__name__": "m", "i": "0"}, {"__name__": "m", "i": "1"}], step * np.arange(values.shape[1]), values
    )
    pipeline = Pipeline.model_validate(
        {
            "name": "p",
            "query": "m",
            "step": "1m",
            "model": {"spec": "default"},
            "schedule": {"infer_every": "1m", "context": "600m"},
        }
    )
    model = DefaultForecaster()
    whole = backtest(series, pipeline, model, start_ms=700 * step, end_ms=1399 * step)
    for k in range(700, 1399, 100):
        window = detect(series, pipeline, model, start_ms=k * step, end_ms=(k + 4) * step)
        for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
            np.testing.assert_array_equal(getattr(window, name), getattr(whole, name)[:, k - 700 : k - 696])
    assert np.isfinite(whole.anomaly_score).mean() > 0.8


@pytest.mark.parametrize("context", [1, 5, 40])
def test_rolling_forecasts_match_on_tiny_contexts_inf_and_sparse_samples(context: int) -> None:
    """Contexts shorter than the detector's windows, inf (treated as missing), half the samples missing."""
    rng = np.random.default_rng(7)
    walk = rng.normal(size=300).cumsum()
    sparse = np.where(rng.random(300) < 0.5, np.nan, walk)
    with_inf = walk.copy()
    with_inf[::7] = np.inf
    for values in (walk, sparse, with_inf):
        for horizon in (1, 7):
            padded = np.concatenate([np.full(context, np.nan), values])[None, :]
            ends = np.arange(context + 1, padded.shape[1] + 1, horizon)
            contexts = np.stack([padded[0, end - context : end] for end in ends])
            rows = np.flatnonzero(np.isfinite(contexts).any(axis=1))
            model = DefaultForecaster()
            reference = model.forecast(contexts[rows], horizon, LEVELS)
            fast = model.forecast_chunks(padded, ends, rows, context, horizon, LEVELS)
            np.testing.assert_array_equal(fast.median, reference.median)
            np.testing.assert_array_equal(fast.quantiles, reference.quantiles)
