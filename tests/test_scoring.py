import numpy as np
import pytest

from openanomaly.core.scoring import FLAT_BAND_REL, band_score, score_forecast
from openanomaly.errors import ModelError
from openanomaly.models.base import QuantileForecast

BAND = {"yhat": 10.0, "yhat_lower": 8.0, "yhat_upper": 12.0}


def score(values, **kwargs):
    return band_score(np.asarray(values, dtype=float), **(BAND | kwargs)).tolist()


def test_inside_band_scores_fraction_of_half_width():
    assert score([10.0, 11.0, 9.0, 12.0, 8.0]) == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_outside_band_grows_in_band_widths():
    # width 4: one width beyond either edge scores 2
    assert score([16.0, 4.0, 13.0]) == [2.0, 2.0, 1.25]
    assert all(s > 1 for s in score([12.0001, 7.9999]))


def test_asymmetric_band_uses_the_side_of_the_point():
    result = band_score(np.array([11.0, 6.0]), yhat=10.0, yhat_lower=6.0, yhat_upper=12.0).tolist()
    assert result == [0.5, 1.0]


def test_yhat_outside_band_is_clipped_to_it():
    result = band_score(np.array([12.0, 13.0]), yhat=20.0, yhat_lower=8.0, yhat_upper=12.0).tolist()
    assert result == [0.0, 1.25]


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("both", [2.0, 2.0, 0.5, 0.5]), ("above", [2.0, 0.0, 0.5, 0.0]), ("below", [0.0, 2.0, 0.0, 0.5])],
)
def test_direction_ignores_the_other_side(direction, expected):
    assert score([16.0, 4.0, 11.0, 9.0], direction=direction) == expected


def test_min_deviation_keeps_small_absolute_deviations_inside():
    tight = {"yhat": 10.0, "yhat_lower": 9.99, "yhat_upper": 10.01}
    result = band_score(np.array([10.5, 11.0, 12.0]), **tight, min_deviation=1.0)
    assert result[0] == pytest.approx(0.5)  # |dev| 0.5 < 1 → 0.5
    assert result[1] > 1  # |dev| == min_deviation: scored normally
    assert result[2] > 1
    # inside points are never raised by min_deviation
    assert score([11.0], min_deviation=0.1) == [0.5]


def test_flat_band_gives_finite_scores():
    flat = {"yhat": 5.0, "yhat_lower": 5.0, "yhat_upper": 5.0}
    result = band_score(np.array([5.0, 5.1, 4.0]), **flat)
    assert result[0] == 0.0
    assert np.all(np.isfinite(result))
    assert result[1] == pytest.approx(1 + 0.1 / (FLAT_BAND_REL * 5.0))
    assert result[2] > result[1] > 1
    # a flat forecast at zero uses an absolute floor
    zero = band_score(np.array([0.0, 0.01]), yhat=0.0, yhat_lower=0.0, yhat_upper=0.0)
    assert zero[0] == 0.0
    assert zero[1] == pytest.approx(1 + 0.01 / FLAT_BAND_REL)


def test_nan_actual_or_forecast_scores_nan():
    result = band_score(
        np.array([np.nan, 10.0, 10.0]),
        yhat=np.array([10.0, np.nan, 10.0]),
        yhat_lower=np.array([8.0, 8.0, np.nan]),
        yhat_upper=12.0,
    )
    assert np.isnan(result).all()


def test_broadcasts_2d():
    actual = np.array([[10.0, 16.0], [8.0, np.nan]])
    result = band_score(actual, yhat=np.array([[10.0], [10.0]]), yhat_lower=8.0, yhat_upper=12.0)
    assert result.shape == (2, 2)
    assert result[0].tolist() == [0.0, 2.0]
    assert result[1, 0] == 1.0 and np.isnan(result[1, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "up"}, "direction"),
        ({"min_deviation": -1.0}, "min_deviation"),
        ({"yhat_lower": 13.0}, "inverted"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        band_score(np.array([1.0]), **(BAND | kwargs))


def _forecast(levels=(0.05, 0.5, 0.95)):
    quantiles = np.array([[[8.0, 10.0, 12.0], [8.0, 10.0, 12.0]]])
    return QuantileForecast(quantiles, np.asarray(levels), quantiles[:, :, 1])


def test_score_forecast_uses_configured_band():
    result = score_forecast(np.array([[11.0, 16.0]]), _forecast(), quantiles=(0.05, 0.95), direction="both")
    assert result.anomaly_score.tolist() == [[0.5, 2.0]]
    assert result.yhat.tolist() == [[10.0, 10.0]]
    assert result.yhat_lower.tolist() == [[8.0, 8.0]]
    assert result.yhat_upper.tolist() == [[12.0, 12.0]]


def test_score_forecast_errors():
    with pytest.raises(ModelError, match="was not forecast"):
        score_forecast(np.array([[1.0, 1.0]]), _forecast(), quantiles=(0.01, 0.99))
    with pytest.raises(ValueError, match="shape"):
        score_forecast(np.array([[1.0]]), _forecast(), quantiles=(0.05, 0.95))
