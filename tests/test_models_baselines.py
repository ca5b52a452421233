"""zscore / mad baselines: shapes, level ordering, NaN handling, robustness."""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.errors import ModelError
from openanomaly.models import load_forecaster
from openanomaly.models.baselines import MadForecaster, ZScoreForecaster

LEVELS = [0.05, 0.25, 0.5, 0.75, 0.95]


def ragged(rng: np.random.Generator) -> np.ndarray:
    contexts = rng.normal(10.0, 2.0, size=(4, 50))
    contexts[1, :20] = np.nan  # shorter series, left-padded
    contexts[2, [25, 30, 31]] = np.nan  # missing samples inside
    contexts[3, :] = np.nan  # no data at all
    return contexts


@pytest.mark.parametrize("spec", ["zscore", "mad"])
def test_shapes_order_and_median(spec: str) -> None:
    contexts = ragged(np.random.default_rng(0))
    out = load_forecaster(spec).forecast(contexts, 6, LEVELS)
    assert out.quantiles.shape == (4, 6, 5)
    assert out.median.shape == (4, 6)
    np.testing.assert_array_equal(out.levels, LEVELS)
    finite = out.quantiles[:3]
    assert np.all(np.diff(finite, axis=-1) > 0)
    np.testing.assert_allclose(out.median[:3], finite[:, :, 2])
    # all-NaN row: NaN forecasts, the rest of the batch unaffected
    assert np.isnan(out.quantiles[3]).all() and np.isnan(out.median[3]).all()


def test_zscore_matches_mean_and_std() -> None:
    contexts = ragged(np.random.default_rng(1))
    out = ZScoreForecaster().forecast(contexts, 3, [0.158655254, 0.5, 0.841344746])
    row = contexts[2][np.isfinite(contexts[2])]
    np.testing.assert_allclose(out.median[2], row.mean())
    np.testing.assert_allclose(out.quantiles[2, :, 2] - out.median[2], row.std(), rtol=1e-6)
    np.testing.assert_allclose(out.median[2] - out.quantiles[2, :, 0], row.std(), rtol=1e-6)


def test_mad_ignores_outliers_zscore_does_not() -> None:
    rng = np.random.default_rng(2)
    contexts = rng.normal(0.0, 1.0, size=(1, 200))
    contexts[0, 100] = 1000.0
    width = {
        name: f.forecast(contexts, 1, [0.05, 0.95]).quantiles[0, 0]
        for name, f in {"z": ZScoreForecaster(), "mad": MadForecaster()}.items()
    }
    assert np.ptp(width["mad"]) < 5.0 < np.ptp(width["z"])


def test_flat_context_gives_zero_width_band() -> None:
    out = MadForecaster().forecast(np.full((2, 10), 3.0), 2, [0.1, 0.5, 0.9])
    np.testing.assert_array_equal(out.quantiles, 3.0)


def test_window_uses_only_recent_points() -> None:
    contexts = np.concatenate([np.zeros((1, 50)), np.full((1, 10), 5.0)], axis=1)
    out = load_forecaster("zscore", window=10).forecast(contexts, 1, [0.5])
    assert out.median[0, 0] == 5.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda f: f.forecast(np.zeros(5), 1, [0.5]), "2-D"),
        (lambda f: f.forecast(np.zeros((1, 5)), 0, [0.5]), "horizon"),
        (lambda f: f.forecast(np.zeros((1, 5)), 1, [0.9, 0.1]), "increasing"),
    ],
)
def test_bad_inputs(call, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        call(ZScoreForecaster())


def test_bad_params() -> None:
    with pytest.raises(ModelError, match="window"):
        load_forecaster("mad", window=1)
    with pytest.raises(ModelError, match="params"):
        load_forecaster("mad", season_length=3)
