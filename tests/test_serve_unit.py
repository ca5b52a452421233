"""The pure parts of the Serve layer: batch merging, request schemas, metrics. No Ray cluster."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from openanomaly.errors import ModelError
from openanomaly.models.baselines import ZScoreForecaster
from openanomaly.serve.forecaster import (
    BatchStats,
    ForecasterConfig,
    ForecastItem,
    forecast_batch,
    model_params,
    stack_left_padded,
)
from openanomaly.serve.metrics import ServeMetrics
from openanomaly.serve.schemas import (
    DetectRequest,
    ForecastRequest,
    Limits,
    RequestError,
    check_limits,
    values_array,
)


def _item(
    values: list[float], horizon: int = 3, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
) -> ForecastItem:
    return ForecastItem(np.asarray([values], dtype=np.float64), horizon, quantiles)


def test_stack_left_padded_pads_on_the_left() -> None:
    out = stack_left_padded([np.array([[1.0, 2.0, 3.0]]), np.array([[4.0], [5.0]])])
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out[0], [1, 2, 3])
    assert np.isnan(out[1, :2]).all() and out[1, 2] == 4 and out[2, 2] == 5


def test_forecast_batch_matches_one_call_per_item() -> None:
    calls = []

    class Counting(ZScoreForecaster):
        def forecast(self, contexts, horizon, quantiles):
            calls.append(contexts.shape[0])
            return super().forecast(contexts, horizon, quantiles)

    model = Counting()
    items = [
        _item([1, 2, 3, 4], horizon=2),
        _item([10, 12, 11], horizon=2),
        _item([7, 8], horizon=5),
        _item([5, 5, 6, 7, 8, 9], horizon=3, quantiles=(0.05, 0.5, 0.95)),
    ]
    results = forecast_batch(model, items, spec="zscore")
    for item, result in zip(items, results, strict=True):
        alone = ZScoreForecaster().forecast(item.contexts, item.horizon, list(item.quantiles))
        assert result.quantiles.shape == (1, item.horizon, len(item.quantiles))
        np.testing.assert_allclose(result.quantiles, alone.quantiles)
        np.testing.assert_allclose(result.median, alone.median)
    assert sorted(calls) == [1, 1, 2]  # one call per (levels, horizon) group


def test_forecast_batch_isolates_a_failing_group() -> None:
    class FailsOnWideBands:
        def forecast(self, contexts, horizon, quantiles):
            if quantiles[0] < 0.05:
                raise ModelError("boom", spec="test")
            return ZScoreForecaster().forecast(contexts, horizon, quantiles)

    items = [_item([1, 2, 3]), _item([1, 2, 3], quantiles=(0.01, 0.99))]
    ok, failed = forecast_batch(FailsOnWideBands(), items, spec="test")
    assert ok.quantiles.shape == (1, 3, 3)
    assert isinstance(failed.error, ModelError)


def test_batch_stats_histogram() -> None:
    stats = BatchStats()
    for size in (1, 3, 8, 8, 300):
        stats.observe(requests=size, series=size, seconds=0.1)
    snap = stats.snapshot()
    assert snap["batches"] == 5 and snap["requests"] == 320
    assert dict(zip(snap["buckets"], snap["bucket_counts"], strict=True))[8] == 2
    metrics = ServeMetrics()
    metrics.batches.update({"bolt": {**snap, "replica": "r1"}})
    text = metrics.render().decode()
    assert 'openanomaly_batch_size_bucket{le="8.0",model="bolt",replica="r1"} 4.0' in text
    assert 'openanomaly_batch_size_count{model="bolt",replica="r1"} 5.0' in text
    assert 'openanomaly_batch_size_sum{model="bolt",replica="r1"} 320.0' in text


def test_model_params_sets_device_for_chronos_only() -> None:
    assert model_params("zscore", {}, device="cuda") == {}
    assert model_params("chronos:/m", {}, device="cuda") == {"device": "cuda"}
    assert model_params("chronos:/m", {"device": "cpu"}, device="cuda") == {"device": "cpu"}


def test_forecaster_config_rejects_unknown_spec() -> None:
    with pytest.raises(ValidationError, match="unknown model"):
        ForecasterConfig(spec="prophet:x")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"series": [], "horizon": 3}, "series"),
        ({"series": [{"values": []}], "horizon": 3}, "values"),
        ({"series": [{"values": [None, None]}], "horizon": 3}, "values"),
        ({"series": [{"values": ["a", 1]}], "horizon": 3}, "values"),
        ({"series": [{"values": [1, 2]}], "horizon": 0}, "horizon"),
        ({"series": [{"values": [1, 2]}], "horizon": 3, "quantiles": [0.9, 0.1]}, "quantiles"),
        ({"series": [{"values": [1, 2], "timestamps_ms": [5]}], "horizon": 3}, "timestamps_ms"),
        ({"series": [{"values": [1, 2]}], "horizon": 3, "colour": "red"}, "colour"),
    ],
)
def test_forecast_request_rejects(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        ForecastRequest.model_validate(body)
    assert field in str(error.value)


def test_limits_name_the_field() -> None:
    limits = Limits(max_series=2, max_points=3, max_horizon=10)
    too_many = ForecastRequest.model_validate({"series": [{"values": [1]}] * 3, "horizon": 1})
    with pytest.raises(RequestError) as error:
        check_limits(too_many, limits)
    assert (error.value.field, error.value.status) == ("series", 413)
    two = {"series": [{"values": [1, 2]}, {"values": [1] * 4}], "horizon": 1}
    too_long = ForecastRequest.model_validate(two)
    with pytest.raises(RequestError) as error:
        check_limits(too_long, limits)
    assert error.value.field == "series[1].values"
    with pytest.raises(RequestError, match="horizon"):
        check_limits(ForecastRequest.model_validate({"series": [{"values": [1]}], "horizon": 11}), limits)
    with pytest.raises(RequestError, match="no context"):
        check_limits(DetectRequest.model_validate({"series": [{"values": [1, 2]}], "score_last": 2}), limits)


def test_values_array_maps_null_to_nan_and_left_pads() -> None:
    body = {"series": [{"values": [1, None, 3]}, {"values": [7]}], "horizon": 1}
    request = ForecastRequest.model_validate(body)
    out = values_array(request.series)
    assert out.shape == (2, 3)
    assert np.isnan(out[0, 1]) and out[0, 2] == 3
    assert np.isnan(out[1, :2]).all() and out[1, 2] == 7
