"""The HTTP API on a real local Ray Serve, called over real HTTP with httpx.

One application is deployed once for the module (replicas at a fraction of a CPU so it
fits beside the other areas' Ray jobs in the session cluster) and torn down at the end.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

APP = "openanomaly-test"
PREFIX = "/oa-test"
TOKEN = "test-token-123"
SMALL = {"ray_actor_options": {"num_cpus": 0.1}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _models(tiny_chronos_bolt: Any) -> dict[str, dict[str, Any]]:
    return {
        "z": {"spec": "zscore"},
        "ets": {"spec": "statsforecast:AutoETS", "params": {"season_length": 1}},
        "bolt": {
            "spec": f"chronos:{tiny_chronos_bolt}",
            "params": {"device": "cpu", "tail_quantiles": "normal"},
        },
        # Only the batching test uses it, so its batch counts are its own; a long wait
        # makes the concurrent requests meet in one batch even on a loaded machine.
        "batched": {"spec": "mad", "max_batch_size": 64, "batch_wait_timeout_s": 0.3},
    }


LIMITS = {"max_series": 5, "max_points": 600, "max_horizon": 64}
# A scheduler name of this module's own, so other modules' schedulers never answer here.
SCHEDULER = {"name": "oa-serve-test-scheduler", "namespace": "oa-serve-test"}
INGRESS = {
    "ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {"OPENANOMALY_API_TOKEN": TOKEN}}}
}


def _deploy(models: dict[str, dict[str, Any]], *, name: str = APP, prefix: str = PREFIX) -> None:
    from ray import serve

    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings

    settings = AppSettings.model_validate(
        {"models": models, "default_model": next(iter(models)), "limits": LIMITS, "scheduler": SCHEDULER}
    )
    serve.run(
        build(settings, ingress_options=INGRESS, forecaster_options=SMALL), name=name, route_prefix=prefix
    )


@pytest.fixture(scope="module")
def api(ray_cluster: None, tiny_chronos_bolt: str) -> Iterator[httpx.Client]:
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    # Another module may have started Serve already; use whatever port it listens on.
    port = _get_global_client().http_config.port
    _deploy(_models(tiny_chronos_bolt))
    base = f"http://127.0.0.1:{port}{PREFIX}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
        yield client
    serve.delete(APP)


def _root(api: httpx.Client) -> str:
    """The app's URL without a trailing slash, for requests without the client's token."""
    return str(api.base_url).rstrip("/")


def _forecast(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/forecast", json=body)


def test_healthz_and_models(api: httpx.Client) -> None:
    assert httpx.get(f"{_root(api)}/healthz").json()["status"] == "ok"  # no token needed
    models = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    assert set(models) == {"z", "ets", "bolt", "batched"}
    assert models["z"]["default"] and models["ets"]["spec"] == "statsforecast:AutoETS"
    assert models["batched"]["max_batch_size"] == 64 and models["bolt"]["device"] == "cpu"


@pytest.mark.parametrize("model", ["bolt", "ets", "z"])
def test_forecast_shapes_and_quantile_order(api: httpx.Client, model: str) -> None:
    rng = np.random.default_rng(0)
    series = [
        {"id": "a", "values": (10 + np.sin(np.arange(120) / 5) + rng.normal(0, 0.1, 120)).tolist()},
        {"values": [1.0, None, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]},
    ]
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    response = _forecast(api, series=series, horizon=7, quantiles=levels, model=model)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model and body["quantile_levels"] == levels
    assert [s["id"] for s in body["series"]] == ["a", "1"]
    for s in body["series"]:
        q = np.array(s["quantiles"], dtype=float)
        assert q.shape == (5, 7) and len(s["median"]) == 7
        assert np.isfinite(q).all()
        assert (np.diff(q, axis=0) >= -1e-6).all(), "quantiles not ordered by level"


def test_forecast_timestamps(api: httpx.Client) -> None:
    series = [{"values": [1, 2, 3, 4], "timestamps_ms": [0, 60_000, 120_000, 180_000]}]
    body = _forecast(api, series=series, horizon=2).json()
    assert body["series"][0]["timestamps_ms"] == [240_000, 300_000]


def _detect(api: httpx.Client, model: str) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    values = 50 + 2 * np.sin(np.arange(300) * 2 * np.pi / 24) + rng.normal(0, 0.3, 300)
    values[-5] += 40  # the spike, inside the scored tail
    body = {"series": [{"values": values.tolist()}], "score_last": 10, "context_length": 200, "model": model}
    response = api.post("/v1/detect", json=body)
    assert response.status_code == 200, response.text
    out = response.json()["series"][0]
    for key in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
        assert len(out[key]) == 10 and all(v is not None for v in out[key])
    assert (np.array(out["yhat_lower"]) <= np.array(out["yhat_upper"])).all()
    return out


@pytest.mark.parametrize("model", ["ets", "z"])
def test_detect_flags_injected_spike(api: httpx.Client, model: str) -> None:
    out = _detect(api, model)
    score = np.array(out["anomaly_score"], dtype=float)
    assert 5 in out["anomalies"] and score[5] > 1
    assert np.argmax(score) == 5


def test_detect_with_chronos(api: httpx.Client) -> None:
    """The tiny Chronos model has random weights: check the wiring, not its judgement."""
    _detect(api, "bolt")


def test_model_error_message(api: httpx.Client) -> None:
    response = _forecast(api, series=[{"values": [1, 2, 3]}], horizon=2, model="nope")
    assert response.status_code == 422
    assert response.json()["field"] == "model" and "'nope'" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"series": [{"values": []}], "horizon": 3}, 422, "series[0].values"),
        ({"series": [], "horizon": 3}, 422, "series"),
        ({"series": [{"values": [None, None, None]}], "horizon": 3}, 422, "series[0].values"),
        ({"series": [{"values": ["x", 1, 2]}], "horizon": 3}, 422, "series[0].values[0]"),
        ({"series": [{"values": [1, 2, 3]}], "horizon": "soon"}, 422, "horizon"),
        ({"series": [{"values": [1, 2, 3]}], "horizon": 0}, 422, "horizon"),
        ({"series": [{"values": [1, 2, 3]}], "horizon": -2}, 422, "horizon"),
        ({"series": [{"values": [1, 2, 3]}], "horizon": 65}, 422, "horizon"),
        ({"series": [{"values": [1, 2, 3]}], "horizon": 1, "quantiles": [0.5, 0.5]}, 422, "quantiles"),
        ({"series": [{"values": [1, 2]}] * 6, "horizon": 1}, 413, "series"),
        ({"series": [{"values": [1.0] * 601}], "horizon": 1}, 413, "series[0].values"),
        ({"values": [1, 2, 3], "horizon": 1}, 422, "series"),
    ],
)
def test_bad_forecast_input(api: httpx.Client, body: dict, status: int, field: str) -> None:
    response = api.post("/v1/forecast", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field, error
    assert field in error["message"]


def test_bad_detect_input(api: httpx.Client) -> None:
    response = api.post("/v1/detect", json={"series": [{"values": [1, 2, 3]}], "score_last": 3})
    assert response.status_code == 422
    assert response.json()["field"] == "series[0].values"
    response = api.post("/v1/detect", json={"series": [{"values": [1, 2, 3]}], "context_length": 0})
    assert response.status_code == 422 and response.json()["field"] == "context_length"


def test_malformed_json(api: httpx.Client) -> None:
    response = api.post("/v1/forecast", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid_request",
        "message": "body: malformed JSON: key must be a string at line 1 column 2",
        "field": "body",
    }


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
def test_auth_rejects_missing_or_wrong_token(api: httpx.Client, headers: dict[str, str]) -> None:
    body = {"series": [{"values": [1, 2, 3]}], "horizon": 1}
    response = httpx.post(f"{_root(api)}/v1/forecast", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{_root(api)}/v1/models", headers=headers).status_code == 401


def _batch_stats(api: httpx.Client, model: str) -> tuple[float, float]:
    """(batches, requests) of ``model`` from the deployment's batch-size histogram on /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = api.get("/metrics").text
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "openanomaly_batch_size":
            for sample in family.samples:
                if sample.labels.get("model") == model:
                    if sample.name.endswith("_count"):
                        count = sample.value
                    elif sample.name.endswith("_sum"):
                        total = sample.value
    return count, total


def test_concurrent_requests_are_batched(api: httpx.Client) -> None:
    n = 32

    async def fire() -> list[int]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=_root(api), headers=headers, timeout=120) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/forecast",
                        json={
                            "series": [{"values": [1.0, 2.0, 3.0, float(i)]}],
                            "horizon": 2,
                            "model": "batched",
                        },
                    )
                    for i in range(n)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(fire()) == [200] * n
    batches, requests = _batch_stats(api, "batched")
    assert requests == n
    assert requests / batches > 1, f"{n} concurrent requests ran in {batches:.0f} batches"


def test_metrics_exposition(api: httpx.Client) -> None:
    _forecast(api, series=[{"values": [1, 2, 3]}], horizon=1)
    text = api.get("/metrics").text
    assert 'openanomaly_http_requests_total{endpoint="/v1/forecast",model="z",status="200"}' in text
    assert "openanomaly_http_request_duration_seconds_bucket" in text
    assert 'openanomaly_series_total{endpoint="/v1/forecast",model="z"}' in text
    assert "openanomaly_points_scored_total" in text


def test_openapi_docs_follow_the_token_and_state_the_limits(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert {"/v1/forecast", "/v1/detect", "/v1/models", "/healthz", "/metrics"} <= set(spec["paths"])
    assert api.get("/docs").status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{_root(api)}{path}").status_code == 401, path
    schemas = spec["components"]["schemas"]
    assert schemas["ForecastRequest"]["properties"]["series"]["maxItems"] == LIMITS["max_series"]
    assert schemas["ForecastRequest"]["properties"]["horizon"]["maximum"] == LIMITS["max_horizon"]
    values = schemas["SeriesIn"]["properties"]["values"]
    assert values["maxItems"] == LIMITS["max_points"] and values["minItems"] == 1


def test_reconfigure_in_place(api: httpx.Client) -> None:
    """``reconfigure`` (what Serve calls on a user_config update) retunes the live replica.

    ``serve.run`` always replaces replicas, and a config deploy needs the dashboard the
    test cluster does not start, so the replica's ``reconfigure`` is called through its
    handle: same replica afterwards, new batching settings, model swapped in place.
    """
    from ray import serve

    handle = serve.get_deployment_handle("Forecaster-z", app_name=APP)
    before = handle.stats.remote().result()["replica"]
    new = {"spec": "mad", "max_batch_size": 7, "batch_wait_timeout_s": 0.02}
    handle.reconfigure.remote(new).result()
    try:
        info = {m["name"]: m for m in api.get("/v1/models").json()["models"]}["z"]
        assert (info["spec"], info["max_batch_size"], info["batch_wait_timeout_s"]) == ("mad", 7, 0.02)
        assert handle.stats.remote().result()["replica"] == before
        response = _forecast(api, series=[{"values": [1, 2, 3]}], horizon=1, model="z")
        assert response.status_code == 200 and response.json()["spec"] == "mad"
    finally:
        handle.reconfigure.remote({"spec": "zscore"}).result()


def test_unloadable_model_fails_the_deployment_with_its_message(api: httpx.Client) -> None:
    from ray import serve

    with pytest.raises(RuntimeError, match="Forecaster-broken"):
        _deploy(
            {"broken": {"spec": "chronos:/nonexistent/chronos-dir"}}, name="oa-broken", prefix="/oa-broken"
        )
    status = serve.status().applications["oa-broken"].deployments["Forecaster-broken"]
    assert "could not load the model" in status.message
    assert "/nonexistent/chronos-dir" in status.message
    serve.delete("oa-broken")


def test_pipeline_endpoints_talk_to_the_scheduler(api: httpx.Client, tmp_path: Any) -> None:
    import ray

    from openanomaly.runtime.scheduler_actor import start_scheduler

    missing = api.get("/v1/pipelines")
    assert missing.status_code == 503
    assert "openanomaly scheduler -c" in missing.json()["message"]

    config = tmp_path / "pipelines.yaml"
    config.write_text(
        "settings: {tsdb: {url: 'http://127.0.0.1:9'}}\n"
        "pipelines:\n  - {name: cpu, query: up, model: zscore}\n"
    )
    scheduler = start_scheduler(str(config), autostart=False, **SCHEDULER)
    try:
        listed = api.get("/v1/pipelines")
        assert listed.status_code == 200, listed.text
        assert [p["name"] for p in listed.json()["pipelines"]] == ["cpu"]
        assert listed.json()["config_error"] is None

        unknown = api.post("/v1/pipelines/nope/run")
        assert unknown.status_code == 404
        assert unknown.json()["field"] == "name"
        assert "nope" in unknown.json()["message"]

        assert "openanomaly_pipeline_windows_total" in api.get("/metrics").text
    finally:
        ray.kill(scheduler)


def test_playground_is_mounted_behind_the_token(api: httpx.Client) -> None:
    page = api.get("/playground/")
    assert page.status_code == 200, page.text[:500]
    assert "gradio" in page.text.lower()
    assert httpx.get(f"{_root(api)}/playground/", timeout=60).status_code in (401, 403)


def test_detect_scores_what_the_window_path_scores(api: httpx.Client) -> None:
    """``/v1/detect`` runs the one window path: the same numbers as ``detect.score_range``."""
    from datetime import timedelta

    from openanomaly.core.config import Pipeline
    from openanomaly.core.detect import score_range
    from openanomaly.core.series import SeriesMatrix
    from openanomaly.models.registry import load_forecaster

    rng = np.random.default_rng(5)
    step, n = 60_000, 120
    stamps = (1_760_000_000_000 // step + np.arange(n)) * step
    values = 20 + rng.normal(0, 1, (2, n))
    values[1, -7] += 12
    body = {
        "model": "z",
        "series": [{"values": row.tolist(), "timestamps_ms": stamps.tolist()} for row in values],
        "score_last": 20,
        "context_length": 60,
        "infer_every": 5,
    }
    reply = api.post("/v1/detect", json=body)
    assert reply.status_code == 200, reply.text
    pipeline = Pipeline(
        name="api",
        query="api",
        step=timedelta(milliseconds=step),
        model={"spec": "zscore", "alias": "z"},
        schedule={"infer_every": timedelta(minutes=5), "context": timedelta(minutes=60)},
    )
    labels = tuple({"series": str(i)} for i in range(2))
    expected = score_range(
        SeriesMatrix(labels, stamps, values),
        pipeline,
        load_forecaster("zscore"),
        start_ms=int(stamps[-21]),
        end_ms=int(stamps[-1]),
    )
    for row, series in enumerate(reply.json()["series"]):
        assert series["timestamps_ms"] == expected.timestamps.tolist()
        for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
            np.testing.assert_array_equal(np.array(series[name], dtype=float), getattr(expected, name)[row])


def test_a_bad_pipelines_file_never_takes_the_api_down(api: httpx.Client, tmp_path: Any) -> None:
    """The ingress starts the scheduler in the background; an unset ${VAR} only shows as config_error."""
    import time
    import uuid

    import ray
    from ray import serve

    from openanomaly.runtime.scheduler_actor import get_scheduler
    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings

    config = tmp_path / "pipelines.yaml"
    config.write_text("settings:\n  tsdb:\n    url: ${OA_NEVER_SET_URL}\npipelines: []\n")
    link = {"pipelines": str(config), "name": f"bad-{uuid.uuid4().hex[:6]}", "namespace": "oa-serve-bad"}
    settings = AppSettings.model_validate({"models": {"z": {"spec": "zscore"}}, "scheduler": link})
    app, prefix = "oa-badfile", "/oa-badfile"
    serve.run(
        build(settings, ingress_options=INGRESS, forecaster_options=SMALL), name=app, route_prefix=prefix
    )
    root = _root(api).removesuffix(PREFIX) + prefix
    try:
        assert httpx.get(f"{root}/healthz", timeout=30).status_code == 200
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 120
        while (reply := httpx.get(f"{root}/v1/pipelines", headers=headers, timeout=30)).status_code == 503:
            assert time.monotonic() < deadline, reply.text
            time.sleep(1)
        assert reply.status_code == 200, reply.text
        assert "OA_NEVER_SET_URL" in reply.json()["config_error"]
        off = httpx.get(f"{root}/playground/", headers=headers, timeout=30)
        assert off.status_code == 503 and "OA_NEVER_SET_URL" in off.json()["message"]
    finally:
        serve.delete(app)
        ray.kill(get_scheduler(name=link["name"], namespace=link["namespace"]), no_restart=True)
