"""The pure parts of the Serve layer: batch merging, request schemas, metrics. No Ray cluster."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from openanomaly.errors import ConfigError, ModelError
from openanomaly.models.baselines import ZScoreForecaster
from openanomaly.serve.forecaster import (
    BatchStats,
    ForecasterConfig,
    ForecastItem,
    ForecastRejected,
    forecast_batch,
    model_params,
    stack_left_padded,
)
from openanomaly.serve.guard import TOKEN_ENV, TOKEN_FILE_ENV, error_body, load_token
from openanomaly.serve.metrics import ServeMetrics
from openanomaly.serve.schemas import (
    DetectRequest,
    ForecastRequest,
    Grid,
    Limits,
    RequestError,
    grid_of,
    parse_request,
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
        ({"series": [{"values": [1, 2]}], "horizon": 3, "quantiles": [0.5, 0.5]}, "quantiles"),
        ({"series": [{"values": [1, 2], "timestamps_ms": [5]}], "horizon": 3}, "timestamps_ms"),
        ({"series": [{"values": [1, 2]}], "horizon": 3, "colour": "red"}, "colour"),
    ],
)
def test_forecast_request_rejects(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        ForecastRequest.model_validate(body)
    assert field in str(error.value)


def _parse(body: dict | bytes, limits: Limits, model: type = ForecastRequest) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(model, raw, limits)


def test_limits_name_the_field() -> None:
    limits = Limits(max_series=2, max_points=3, max_horizon=10)
    with pytest.raises(RequestError) as error:
        _parse({"series": [{"values": [1]}] * 3, "horizon": 1}, limits)
    assert (error.value.field, error.value.status) == ("series", 413)
    with pytest.raises(RequestError) as error:
        _parse({"series": [{"values": [1, 2]}, {"values": [1] * 4}], "horizon": 1}, limits)
    assert (error.value.field, error.value.status) == ("series[1].values", 413)
    with pytest.raises(RequestError, match="horizon"):
        _parse({"series": [{"values": [1]}], "horizon": 11}, limits)
    with pytest.raises(RequestError, match="no context"):
        _parse({"series": [{"values": [1, 2]}], "score_last": 2}, limits, DetectRequest)


def test_series_count_is_checked_before_the_series_are_built() -> None:
    """10^5 series against a limit of 1000: refused on a count of the body's objects."""
    body = b'{"horizon":1,"series":[' + b'{"values":[1]},' * 99_999 + b'{"values":[1]}]}'
    with pytest.raises(RequestError) as error:
        _parse(body, Limits())
    assert (error.value.field, error.value.status) == ("series", 413)
    assert "100001 JSON objects" in str(error.value)  # counted, not built


def test_braces_inside_strings_are_not_objects() -> None:
    ids = [{"id": f'cpu{{host="{i}"}}[0]\\', "values": [1, 2]} for i in range(3)]
    request = _parse({"series": ids, "horizon": 1}, Limits(max_series=3))
    assert [s.id for s in request.series] == [s["id"] for s in ids]


_SPREAD = [{"values": [1, 2], "timestamps_ms": [i * 1000, i * 1000 + 100]} for i in range(20)]


@pytest.mark.parametrize(
    ("series", "limits", "field", "what"),
    [
        # The probe: 8 series of 2 points spanning 10^7 ms at a 1 ms step.
        (
            [{"values": [1, 2], "timestamps_ms": [0, 1]}]
            + [{"values": [1, 2], "timestamps_ms": [0, 10**7]}] * 7,
            Limits(),
            "series[0].timestamps_ms",
            "grid points implied",
        ),
        (
            [{"values": [1, 2, 3], "timestamps_ms": [0, 1, 10**12]}],
            Limits(),
            "series[0].timestamps_ms",
            "grid",
        ),
        # 40 points sent, but 20 series x 1,901 grid points to align them on.
        (_SPREAD, Limits(max_total_points=1000), "series", "grid points in all"),
    ],
)
def test_grid_size_is_checked_from_the_timestamps(
    series: list, limits: Limits, field: str, what: str
) -> None:
    with pytest.raises(RequestError) as error:
        _parse({"series": series}, limits, DetectRequest)
    assert (error.value.field, error.value.status) == (field, 413) and what in str(error.value)


def test_grid_of_matches_the_alignment() -> None:
    body = {
        "series": [
            {"values": [1, 2, 3], "timestamps_ms": [100, 160, 220]},
            {"values": [4, 5], "timestamps_ms": [40, 340]},
        ]
    }
    request = _parse(body, Limits(), DetectRequest)
    assert grid_of(request) == Grid(40, 340, 60) and grid_of(request).length == 6


def test_response_and_model_input_sizes_are_bounded() -> None:
    limits = Limits(max_response_values=1000, max_context_values=5000)
    with pytest.raises(RequestError, match="numbers in the response") as error:
        _parse({"series": [{"values": [1]}] * 10, "horizon": 30, "quantiles": [0.1, 0.5, 0.9]}, limits)
    assert error.value.status == 413
    values = list(range(600))
    with pytest.raises(RequestError, match="context values") as error:
        _parse(
            {"series": [{"values": values}] * 2, "score_last": 10, "context_length": 500},
            limits,
            DetectRequest,
        )
    assert error.value.field == "context_length"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"series":[{"values":[1,2]}],"horizon":true}', "horizon"),
        (b'{"series":[{"values":[1,2]}],"horizon":"2"}', "horizon"),
        (b'{"series":[{"values":[1,2]}],"horizon":1.5}', "horizon"),
        (b'{"series":[{"values":[1,NaN]}],"horizon":1}', "series[0].values[1]"),
        (b'{"series":[{"values":[1,-Infinity]}],"horizon":1}', "series[0].values[1]"),
        (b'{"series":[{"values":[1,2],"id":"\\ud800"}],"horizon":1}', "body"),
        (b'{"series":[{"values":[1,2],"id":"' + b"x" * 201 + b'"}],"horizon":1}', "series[0].id"),
    ],
)
def test_strict_types(raw: bytes, field: str) -> None:
    with pytest.raises(RequestError) as error:
        _parse(raw, Limits())
    assert (error.value.field, error.value.status) == (field, 422)
    assert len(str(error.value)) < 300


def test_integral_floats_are_integers_and_levels_are_sorted() -> None:
    request = _parse(b'{"series":[{"values":[1,2]}],"horizon":3.0,"quantiles":[0.9,0.1]}', Limits())
    assert request.horizon == 3 and request.quantiles == [0.1, 0.9]


def test_openapi_states_the_limits() -> None:
    from openanomaly.serve.app import fastapi_app
    from openanomaly.serve.openapi import openapi_document

    fastapi_app.state.limits, fastapi_app.openapi_schema = Limits(max_series=7, max_horizon=9), None
    try:
        schemas = openapi_document(fastapi_app)["components"]["schemas"]
    finally:
        fastapi_app.state.limits, fastapi_app.openapi_schema = None, None
    assert schemas["ForecastRequest"]["properties"]["series"]["maxItems"] == 7
    assert schemas["ForecastRequest"]["properties"]["horizon"]["maximum"] == 9
    assert schemas["DetectRequest"]["properties"]["score_last"]["maximum"] == Limits().max_scored_points
    assert schemas["SeriesIn"]["properties"]["values"]["maxItems"] == Limits().max_points
    assert schemas["SeriesIn"]["properties"]["timestamps_ms"]["anyOf"][0]["items"]["minimum"] == 0


def test_model_exceptions_become_one_line_model_errors() -> None:
    class Broken(ZScoreForecaster):
        def forecast(self, contexts, horizon, quantiles):
            raise ValueError("bad input\n  long detail on a second line")

    [result] = forecast_batch(Broken(), [_item([1, 2, 3])], spec="zscore")
    assert isinstance(result.error, ForecastRejected)
    assert str(result.error) == "model 'zscore': could not forecast these series: ValueError: bad input"
    # It crosses from the replica to the ingress by pickle.
    assert str(pickle.loads(pickle.dumps(result.error))) == str(result.error)


def test_values_array_maps_null_to_nan_and_left_pads() -> None:
    body = {"series": [{"values": [1, None, 3]}, {"values": [7]}], "horizon": 1}
    request = ForecastRequest.model_validate(body)
    out = values_array(request.series)
    assert out.shape == (2, 3)
    assert np.isnan(out[0, 1]) and out[0, 2] == 3
    assert np.isnan(out[1, :2]).all() and out[1, 2] == 7


def test_token_comes_from_a_file_first(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    token = load_token({TOKEN_FILE_ENV: str(secret), TOKEN_ENV: "from-env"})
    assert token is not None and token.get_secret_value() == "from-file"
    assert "from-file" not in repr(token)
    env = load_token({TOKEN_ENV: " from-env "})
    assert env is not None and env.get_secret_value() == "from-env"
    assert load_token({}) is None and load_token({TOKEN_ENV: ""}) is None


@pytest.mark.parametrize("content", [None, "  \n"])
def test_a_broken_token_file_stops_the_start(tmp_path: Path, content: str | None) -> None:
    secret = tmp_path / "token"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ConfigError, match="token file"):
        load_token({TOKEN_FILE_ENV: str(secret)})


def test_error_body_is_one_short_line() -> None:
    body = error_body(500, "boom\nTraceback (most recent call last):\n  ...")
    assert body == {"error": "internal", "message": "boom", "field": None}
    assert len(error_body(422, "x" * 5000, field="id")["message"]) == 1000


def test_serving_without_a_token_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    from openanomaly.serve.guard import warn_if_open

    warn_if_open(SecretStr("t"), "0.0.0.0")
    assert not caplog.records
    warn_if_open(None, "127.0.0.1")
    warn_if_open(None, "0.0.0.0")
    loopback, everywhere = caplog.records
    assert loopback.levelname == "WARNING" and "auth is OFF" in loopback.getMessage()
    assert everywhere.levelname == "ERROR" and "listens on 0.0.0.0" in everywhere.getMessage()
    assert "OPENANOMALY_API_TOKEN_FILE" in everywhere.getMessage()


def test_forecast_batch_tells_a_model_the_step_of_its_items() -> None:
    # default places its daily profile once the step is known: the deployment groups
    # items by step and forecasts each group with the model for that step.
    from openanomaly.models.default import DefaultForecaster

    t = np.arange(6 * 288)  # the record is half the context; two past days fit beside it
    values = list(50 + 20 * np.sin(2 * np.pi * t / 288) + np.random.default_rng(4).standard_normal(t.size))
    levels = (0.05, 0.5, 0.95)
    five, unknown = (ForecastItem(np.asarray([values]), 4, levels, step) for step in (300.0, None))
    by_step, level_only = forecast_batch(DefaultForecaster(), [five, unknown], spec="default")
    contexts = np.asarray([values])
    daily = DefaultForecaster().for_step(300).forecast(contexts, 4, list(levels))
    np.testing.assert_array_equal(by_step.quantiles, daily.quantiles)
    level = DefaultForecaster().forecast(contexts, 4, list(levels))
    np.testing.assert_array_equal(level_only.quantiles, level.quantiles)
    assert not np.array_equal(daily.median, level.median)


def test_request_metrics_count_every_status_with_its_route_and_model() -> None:
    """The ingress's ``ObserveRequests`` middleware: labels come from the route the router
    matched and the model the handler chose (``request.state``); a handler that raises
    is counted as the 500 its client gets."""
    from openanomaly.serve.metrics import ObserveRequests

    app = FastAPI()
    app.state.metrics = ServeMetrics()

    @app.get("/v1/things/{name}")
    async def thing(name: str, request: Request) -> dict[str, str]:
        request.state.model = "z"
        if name == "bad":
            raise RuntimeError("boom")
        return {"name": name}

    app.add_middleware(ObserveRequests)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/things/a").status_code == 200
        assert client.get("/v1/things/bad").status_code == 500
        assert client.get("/nowhere").status_code == 404
    count = app.state.metrics.registry.get_sample_value
    route = {"endpoint": "/v1/things/{name}", "model": "z"}
    assert count("openanomaly_http_requests_total", {**route, "status": "200"}) == 1
    assert count("openanomaly_http_requests_total", {**route, "status": "500"}) == 1
    assert count("openanomaly_http_requests_total", {"endpoint": "other", "model": "", "status": "404"}) == 1
    assert count("openanomaly_http_request_duration_seconds_count", {"endpoint": "/v1/things/{name}"}) == 2
