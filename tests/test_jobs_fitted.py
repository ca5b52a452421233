"""Fitted statsforecast models: fit once, serialise, apply to new contexts without refitting."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from openanomaly.configstore.checks import check_fittable
from openanomaly.core.config import Pipeline
from openanomaly.errors import ConfigError, ModelError
from openanomaly.models.fitted import fit_per_series, load_series_model


def _pipeline(spec: str | dict = "statsforecast:AutoETS", **schedule) -> Pipeline:
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
    blobs = fit_per_series(pipeline.fit_spec, values)
    assert blobs[1] is None and blobs[0] is not None and blobs[2] is not None
    model = load_series_model(pipeline.fit_spec, blobs[0])
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
        check_fittable(
            _pipeline(
                {"spec": "statsforecast:SeasonalNaive", "params": {"season_length": 12}},
                fit_every="1h",
                fit_window="4h",
            )
        )
    with pytest.raises(ConfigError, match="zero-shot"):
        check_fittable(_pipeline("mad", fit_every="1h", fit_window="4h"))
    with pytest.raises(ConfigError, match="fit_window"):
        check_fittable(_pipeline(fit_every="1h"))


def test_bad_blob_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="unpickle"):
        load_series_model(_pipeline().fit_spec, b"not a pickle")


# Tiny NHITS: a few optimiser steps on a small MLP; the point is the fit → store →
# load → forecast path, not forecast quality.
_TINY_NHITS = {
    "max_steps": 5,
    "val_check_steps": 5,
    "mlp_units": [[8, 8], [8, 8], [8, 8]],
    "batch_size": 8,
    "random_seed": 0,
}


@pytest.mark.integration
def test_nhits_fitted_stored_in_s3_and_scored_by_a_fresh_worker(s3, tmp_path, monkeypatch) -> None:
    """The global-model path of fit_job / run_job without Ray (Ray is covered with AutoETS).

    ``train_global`` is the body of fit_job's training task and ``WindowScorer`` is the
    model actor class; here the store is the real S3 endpoint (moto server).
    """
    import uuid

    from openanomaly.core.config import Settings
    from openanomaly.core.series import SeriesMatrix
    from openanomaly.io.artifacts import GLOBAL_SERIES_KEY, S3Store, list_models
    from openanomaly.models.neural import NHITSForecaster
    from openanomaly.runtime.fits import train_global
    from openanomaly.runtime.scorer import WindowScorer

    monkeypatch.chdir(tmp_path)  # pytorch-lightning must not leave logs or checkpoints here
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3.create_bucket(f"nhits-{uuid.uuid4().hex[:8]}")
    settings = Settings(
        tsdb={"url": "http://127.0.0.1:9"},  # never contacted: scoring does no TSDB I/O
        artifacts={"kind": "s3", "bucket": bucket, "prefix": "models", "endpoint_url": s3.endpoint_url},
    )
    pipeline = Pipeline(
        name="nhits",
        query="m",
        model={"spec": "neuralforecast:NHITS", "params": _TINY_NHITS},
        schedule={"infer_every": "5m", "context": "20m", "fit_every": "1h", "fit_window": "2h"},
    )
    check_fittable(pipeline)
    minute, n = 60_000, 5
    fit_ms = 1_760_000_400_000
    rng = np.random.default_rng(0)
    t = np.arange(145)
    values = 10 + np.sin(t / 6)[None, :] + rng.normal(0, 0.1, (n, t.size))  # column 119 = fit_ms

    key = train_global(settings, pipeline, values[:, :120], fit_time_ms=fit_ms)
    store = S3Store(bucket=bucket, prefix="models", endpoint_url=s3.endpoint_url, client=s3.client())
    refs = list_models(store, pipeline="nhits")
    assert [(r.key, r.series_key, r.fit_time_ms) for r in refs] == [(key, GLOBAL_SERIES_KEY, fit_ms)]

    # A fresh worker: the model actor class loads the model from the bucket.
    start_ms, end_ms = fit_ms + 20 * minute, fit_ms + 25 * minute
    scorer = WindowScorer()
    model = scorer._fitted_model(scorer._store(settings), pipeline, GLOBAL_SERIES_KEY, fit_ms, start_ms)
    assert isinstance(model, NHITSForecaster)
    contexts = values[:, 120:140].copy()
    contexts[1] = np.nan  # no context: NaN row out
    contexts[2, :12] = np.nan  # left-padded: still forecast
    forecast = model.forecast(contexts, 5, [0.05, 0.5, 0.95])
    assert forecast.quantiles.shape == (n, 5, 3)
    assert np.isnan(forecast.quantiles[1]).all()
    rest = forecast.quantiles[[0, 2, 3, 4]]
    assert np.isfinite(rest).all() and np.all(np.diff(rest, axis=-1) >= 0)

    # The job's scoring step over one window: 20 context + 5 window points, one NaN series.
    grid = fit_ms + minute * np.arange(1, 26, dtype=np.int64)  # columns 120..144 of values
    labels = tuple({"__name__": "m", "i": str(i)} for i in range(n))
    block = values[:, 120:145].copy()
    block[1] = np.nan
    detection = scorer.score(SeriesMatrix(labels, grid, block), pipeline, settings, start_ms, end_ms, fit_ms)
    assert detection.anomaly_score.shape == (n, 5)
    assert detection.series_scored == n - 1
    assert np.isnan(detection.anomaly_score[1]).all()
    assert np.isfinite(detection.yhat[[0, 2, 3, 4]]).all()

    # "latest fit at or before the window" finds the same model: a retried window
    # writes the same values.
    again = WindowScorer().score(SeriesMatrix(labels, grid, block), pipeline, settings, start_ms, end_ms)
    np.testing.assert_array_equal(again.yhat, detection.yhat)
    assert list(tmp_path.iterdir()) == []
