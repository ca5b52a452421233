"""statsforecast adapter: interval mapping, ragged/NaN contexts, too-short rows, params."""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.errors import DataError, ModelError, UnknownModelSpec
from openanomaly.models import load_forecaster
from openanomaly.models.registry import validate_params
from openanomaly.models.stats import clean_context, interval_keys

LEVELS = [0.05, 0.1, 0.5, 0.9, 0.95]
SEASON = 12


def sine(n: int, length: int, *, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return 10 + 3 * np.sin(2 * np.pi * t / SEASON)[None, :] + noise * rng.normal(size=(n, length))


def test_interval_keys_map_levels_to_symmetric_coverages() -> None:
    coverages, keys = interval_keys(np.array([0.05, 0.25, 0.5, 0.75, 0.95]))
    assert coverages == [50.0, 90.0]
    assert keys == ["lo-90.0", "lo-50.0", "mean", "hi-50.0", "hi-90.0"]


def test_clean_context_strips_interpolates_and_carries() -> None:
    row = np.array([np.nan, np.nan, 1.0, np.nan, 3.0, 4.0, np.nan])
    np.testing.assert_array_equal(clean_context(row), [1.0, 2.0, 3.0, 4.0, 4.0])
    assert clean_context(np.full(3, np.nan)).size == 0


def test_seasonal_naive_on_clean_sine_repeats_last_season() -> None:
    contexts = sine(2, 5 * SEASON)
    out = load_forecaster("statsforecast:SeasonalNaive", season_length=SEASON).forecast(
        contexts, SEASON, LEVELS
    )
    np.testing.assert_allclose(out.median, contexts[:, -SEASON:])
    np.testing.assert_allclose(out.level(0.5), contexts[:, -SEASON:])
    # a perfect fit has zero residuals: a zero-width band
    np.testing.assert_allclose(out.quantiles[..., 0], out.quantiles[..., -1], atol=1e-9)


@pytest.mark.parametrize(
    ("spec", "params"),
    [
        ("statsforecast:SeasonalNaive", {"season_length": SEASON}),
        ("statsforecast:AutoETS", {"season_length": SEASON}),
        ("statsforecast:AutoARIMA", {}),
        ("statsforecast:MSTL", {"season_length": [SEASON]}),
    ],
)
def test_every_model_shapes_order_ragged_nan(spec: str, params: dict) -> None:
    contexts = sine(4, 6 * SEASON, noise=0.5)
    contexts[1, : 2 * SEASON] = np.nan  # shorter (left-padded)
    contexts[2, [30, 31, 50]] = np.nan  # missing samples inside
    contexts[3] = np.nan  # nothing at all
    out = load_forecaster(spec, **params).forecast(contexts, 5, LEVELS)
    assert out.quantiles.shape == (4, 5, 5)
    assert out.median.shape == (4, 5)
    assert np.isfinite(out.quantiles[:3]).all()
    assert np.isnan(out.quantiles[3]).all() and np.isnan(out.median[3]).all()
    # wider interval for more extreme levels, median = point forecast
    width_90 = out.level(0.95) - out.level(0.05)
    width_80 = out.level(0.9) - out.level(0.1)
    assert np.all(width_90[:3] > width_80[:3])
    np.testing.assert_allclose(out.median[:3], out.level(0.5)[:3])
    # symmetric intervals around the mean
    np.testing.assert_allclose(
        out.level(0.95)[:3] - out.median[:3], out.median[:3] - out.level(0.05)[:3], rtol=1e-6, atol=1e-9
    )


def test_median_without_half_level_is_mean_forecast() -> None:
    contexts = sine(1, 4 * SEASON, noise=0.3)
    f = load_forecaster("statsforecast:SeasonalNaive", season_length=SEASON)
    with_half = f.forecast(contexts, 3, [0.1, 0.5, 0.9])
    without = f.forecast(contexts, 3, [0.2, 0.8])
    np.testing.assert_allclose(without.median, with_half.median)


def test_too_short_raises_or_gives_nan() -> None:
    contexts = sine(3, 4 * SEASON)
    contexts[1, : -SEASON - 5] = np.nan  # 17 points < 2 seasons + 1 for MSTL
    with pytest.raises(DataError, match=r"rows 1\b.*too_short"):
        load_forecaster("statsforecast:MSTL", season_length=SEASON).forecast(contexts, 2, LEVELS)
    out = load_forecaster("statsforecast:MSTL", season_length=SEASON, too_short="nan").forecast(
        contexts, 2, LEVELS
    )
    assert np.isnan(out.quantiles[1]).all()
    assert np.isfinite(out.quantiles[[0, 2]]).all()


@pytest.mark.parametrize(
    ("spec", "params", "match"),
    [
        ("statsforecast:SeasonalNaive", {}, "season_length"),
        ("statsforecast:MSTL", {"season_length": 0}, "positive"),
        ("statsforecast:MSTL", {"season_length": []}, "positive"),
        ("statsforecast:AutoETS", {"season_length": [7, 24]}, "one season_length"),
        ("statsforecast:AutoETS", {"too_short": "ignore"}, "too_short"),
        ("statsforecast:AutoETS", {"model_params": {"bogus": 1}}, "model_params"),
    ],
)
def test_bad_params(spec: str, params: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        load_forecaster(spec, **params)


def test_validate_params_is_cheap_and_catches_bad_options() -> None:
    validate_params("statsforecast:MSTL", {"season_length": [24, 168]})
    with pytest.raises(ModelError, match="positive"):
        validate_params("statsforecast:MSTL", {"season_length": -1})
    with pytest.raises(ModelError, match="unknown params"):
        validate_params("statsforecast:AutoETS", {"seasons": 3})
    with pytest.raises(ModelError, match="window"):
        validate_params("zscore", {"window": 0})
    with pytest.raises(UnknownModelSpec, match="statsforecast:AutoETS"):
        validate_params("statsforecast:Prophet", {})
