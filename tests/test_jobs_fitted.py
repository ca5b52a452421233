"""Fitted statsforecast models: fit once, serialise, apply to new contexts without refitting."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from openanomaly.config import Pipeline
from openanomaly.errors import ConfigError, ModelError
from openanomaly.models.fitted import check_fittable, fit_per_series, load_series_model


def _pipeline(spec: str = "statsforecast:AutoETS", **schedule) -> Pipeline:
    return Pipeline(
        name="p",
        query="m",
        model=spec,
        schedule={"infer_every": "5m", "context": "1h", **schedule},
    )


def test_fit_serialise_forward() -> None:
    pipeline = _pipeline(fit_every="1h", fit_window="4h")
    rng = np.random.default_rng(0)
    values = 10 + np.sin(np.arange(240) / 10)[None, :] + rng.normal(0, 0.1, (3, 240))
    values[1, :235] = np.nan  # too short to fit
    blobs = fit_per_series(pipeline, values)
    assert blobs[1] is None and blobs[0] is not None and blobs[2] is not None
    model = load_series_model(pipeline, blobs[0])
    fitted_params = pickle.dumps(model.model.model_)
    contexts = values[[0, 0]][:, -60:].copy()
    contexts[1, :30] = np.nan  # left padding
    forecast = model.forecast(contexts, 5, [0.05, 0.5, 0.95])
    assert forecast.quantiles.shape == (2, 5, 3)
    assert np.all(np.diff(forecast.quantiles, axis=-1) >= 0)
    assert np.all(np.abs(forecast.median - 10) < 2)
    assert pickle.dumps(model.model.model_) == fitted_params, "forward must not refit"
    # same input, same output: retried windows write the same values
    again = model.forecast(contexts, 5, [0.05, 0.5, 0.95])
    np.testing.assert_array_equal(again.quantiles, forecast.quantiles)


def test_check_fittable() -> None:
    check_fittable(_pipeline())  # zero-fit statsforecast: fine
    check_fittable(_pipeline(fit_every="1h", fit_window="4h"))
    with pytest.raises(ConfigError, match="no fitted form"):
        check_fittable(_pipeline("statsforecast:SeasonalNaive", fit_every="1h", fit_window="4h"))
    with pytest.raises(ConfigError, match="zero-shot"):
        check_fittable(_pipeline("mad", fit_every="1h", fit_window="4h"))
    with pytest.raises(ConfigError, match="fit_window"):
        check_fittable(_pipeline(fit_every="1h"))


def test_bad_blob_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unpickle"):
        load_series_model(_pipeline(), b"not a pickle")
