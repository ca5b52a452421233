"""Managing pipelines over HTTP on a real local Ray Serve, for both stores.

One parametrised suite: the YAML store (the pipelines file itself) and the S3 store
(moto's real HTTP server) must behave alike through the API: create → list → the
scheduler picks it up → run (against a real VictoriaMetrics) → edit → concurrent edits
(one gets 412) → an invalid edit is refused and nothing is written → the read token
cannot write → delete → the scheduler drops it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration

ADMIN = "admin-token-pipelines"
READER = "read-token-pipelines"
SMALL = {"num_cpus": 0.1}


def _settings(kind: str, tsdb_url: str, s3: Any, bucket: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"tsdb": {"url": tsdb_url}}
    if kind == "s3":
        settings["artifacts"] = {"kind": "s3", "bucket": bucket, "endpoint_url": s3.endpoint_url}
        settings["config_store"] = {"kind": "s3"}
    return settings


@pytest.fixture(scope="module", params=["yaml", "s3"])
def app(
    request: pytest.FixtureRequest,
    ray_cluster: None,
    s3: Any,
    victoria_metrics: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The API with a scheduler on a pipelines file of the given store kind; no pipelines yet."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from openanomaly.runtime.scheduler_actor import get_scheduler
    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings
    from tests.fixtures.servers import free_port

    kind = request.param
    bucket = s3.create_bucket(f"oa-pipelines-{uuid.uuid4().hex[:8]}") if kind == "s3" else ""
    path = tmp_path_factory.mktemp(f"pipelines-{kind}") / "pipelines.yaml"
    path.write_text(
        yaml.safe_dump({"settings": _settings(kind, victoria_metrics.url, s3, bucket), "pipelines": []})
    )
    link = {"pipelines": str(path), "name": f"oa-crud-{kind}-{uuid.uuid4().hex[:6]}", "namespace": "oa-crud"}
    app_settings = AppSettings.model_validate({"models": {"z": {"spec": "zscore"}}, "scheduler": link})
    env = {"OPENANOMALY_API_TOKEN": ADMIN, "OPENANOMALY_READ_TOKEN": READER, **s3.env()}
    ingress = {"ray_actor_options": {**SMALL, "runtime_env": {"env_vars": env}}}
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = _get_global_client().http_config.port
    name, prefix = f"oa-crud-{kind}", f"/oa-crud-{kind}"
    serve.run(
        build(
            app_settings, ingress_options=ingress, forecaster_options={"ray_actor_options": {"num_cpus": 0.1}}
        ),
        name=name,
        route_prefix=prefix,
    )
    root = f"http://127.0.0.1:{port}{prefix}"
    try:
        yield {"root": root, "kind": kind, "path": path, "s3": s3, "bucket": bucket, "link": link}
    finally:
        import ray

        serve.delete(name)
        with contextlib.suppress(ValueError):
            ray.kill(get_scheduler(name=link["name"], namespace=link["namespace"]))


def _client(app: dict[str, Any], token: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=app["root"], headers={"Authorization": f"Bearer {token}"}, timeout=60)


DEFINITION = {
    "query": "vector(1)",
    "step": "1m",
    "model": "zscore",
    "schedule": {"infer_every": "5m", "context": "1h"},
}


def _status(api: httpx.Client, name: str, *, until: Any, timeout: float = 90) -> dict[str, Any]:
    """Poll ``GET /v1/pipelines/{name}`` until ``until(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        reply = api.get(f"/v1/pipelines/{name}")
        status = reply.json().get("status") if reply.status_code == 200 else None
        if until(status):
            return status
        assert time.monotonic() < deadline, reply.text
        time.sleep(1)


def _stored(app: dict[str, Any]) -> list[str]:
    """What the store holds now, raw: the file's text, or the S3 keys and their bodies."""
    if app["kind"] == "yaml":
        return [Path(app["path"]).read_text()]
    client = app["s3"].client()
    listed = client.list_objects_v2(Bucket=app["bucket"]).get("Contents", [])
    return sorted(
        f"{item['Key']}={client.get_object(Bucket=app['bucket'], Key=item['Key'])['Body'].read()!r}"
        for item in listed
    )


def test_create_list_run_edit_delete(app: dict[str, Any]) -> None:
    with _client(app) as api:
        created = api.put("/v1/pipelines/cpu", json=DEFINITION, headers={"If-None-Match": "*"})
        assert created.status_code == 201, created.text
        etag = created.headers["etag"]
        assert created.json()["definition"]["query"] == "vector(1)"
        again = api.put("/v1/pipelines/cpu", json=DEFINITION, headers={"If-None-Match": "*"})
        assert again.status_code == 412 and again.json()["error"] == "precondition_failed"

        listed = api.get("/v1/pipelines").json()
        assert [p["name"] for p in listed["pipelines"]] == ["cpu"]
        assert listed["pipelines"][0]["etag"] == etag.strip('"')

        # The scheduler picks the new pipeline up within a tick, then runs it on demand.
        _status(api, "cpu", until=lambda s: s is not None)
        run = api.post("/v1/pipelines/cpu/run")
        assert run.status_code == 200, run.text
        assert run.json()["status"] in ("started", "already_running", "up_to_date")
        status = _status(api, "cpu", until=lambda s: s and s["windows_total"] >= 1)
        assert status["last_run_ok"] and status["series_scored"] == 1

        edited = {**DEFINITION, "model": "mad"}
        replaced = api.put("/v1/pipelines/cpu", json=edited, headers={"If-Match": etag})
        assert replaced.status_code == 200, replaced.text
        new_etag = replaced.headers["etag"]
        assert new_etag != etag
        stale = api.put("/v1/pipelines/cpu", json=DEFINITION, headers={"If-Match": etag})
        assert stale.status_code == 412, stale.text
        # A model change keeps the progress; the scheduler shows the new model within a tick.
        status = _status(api, "cpu", until=lambda s: s and s["model"] == "mad")
        assert status["windows_total"] >= 1

        versions = api.get("/v1/pipelines/cpu/versions").json()["versions"]
        assert versions[0]["definition"]["model"] == "mad"
        if app["kind"] == "s3":  # every version kept, with who made it
            assert [v["action"] for v in versions] == ["update", "create"]
            assert {v["author"] for v in versions} == {"admin"}

        deleted = api.delete("/v1/pipelines/cpu", headers={"If-Match": new_etag})
        assert deleted.status_code == 200, deleted.text
        assert api.get("/v1/pipelines/cpu").status_code == 404
        assert api.delete("/v1/pipelines/cpu").status_code == 404
        deadline = time.monotonic() + 60
        while any(p["name"] == "cpu" for p in _scheduler_status(app)["pipelines"]):
            assert time.monotonic() < deadline, "the scheduler still runs a deleted pipeline"
            time.sleep(1)


def _scheduler_status(app: dict[str, Any]) -> dict[str, Any]:
    import ray

    from openanomaly.runtime.scheduler_actor import get_scheduler

    actor = get_scheduler(name=app["link"]["name"], namespace=app["link"]["namespace"])
    return ray.get(actor.status.remote())


def test_two_concurrent_edits_one_gets_412(app: dict[str, Any]) -> None:
    with _client(app) as api:
        etag = api.put("/v1/pipelines/race", json=DEFINITION).headers["etag"]
        replies: list[httpx.Response] = []
        barrier = threading.Barrier(2)

        def edit(model: str) -> None:
            with _client(app) as own:
                barrier.wait()
                body = {**DEFINITION, "model": model}
                replies.append(own.put("/v1/pipelines/race", json=body, headers={"If-Match": etag}))

        threads = [threading.Thread(target=edit, args=(model,)) for model in ("mad", "default")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(reply.status_code for reply in replies)
        assert codes == [200, 412], [reply.text for reply in replies]
        winner = next(reply for reply in replies if reply.status_code == 200)
        assert api.get("/v1/pipelines/race").headers["etag"] == winner.headers["etag"]
        api.delete("/v1/pipelines/race")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({**DEFINITION, "schedule": {"context": "5x"}}, "schedule.context", "5x"),
        ({**DEFINITION, "model": "nope:x"}, "model.spec", "nope"),
        ({**DEFINITION, "modle": 3}, "modle", "Extra inputs"),
        ({**DEFINITION, "query": "${AWS_SECRET_ACCESS_KEY}"}, "query", "${VAR}"),
        ({**DEFINITION, "name": "other"}, "name", "other"),
    ],
)
def test_an_invalid_pipeline_is_refused_and_nothing_is_written(
    app: dict[str, Any], body: dict[str, Any], field: str, message: str
) -> None:
    with _client(app) as api:
        before = _stored(app)
        reply = api.put("/v1/pipelines/bad", json=body)
        assert reply.status_code == 422, reply.text
        assert reply.json()["field"] == field and message in reply.json()["message"]
        assert reply.json()["error"] == "invalid_pipeline"
        assert _stored(app) == before
        if field != "name":  # a dry run names the pipeline in the body only
            dry = api.post("/v1/pipelines:validate", json={"name": "bad", **body})
            assert dry.status_code == 422 and dry.json()["field"] == field


@pytest.mark.parametrize("name", ["%2e%2e", "%2e", ".%2E."])
def test_dot_names_are_422_in_both_stores(app: dict[str, Any], name: str) -> None:
    """Issue 25: ``PUT /v1/pipelines/%2e%2e`` made a pipeline ``..`` in the YAML store, a 500 in S3."""
    with _client(app) as api:
        before = _stored(app)
        for reply in (api.put(f"/v1/pipelines/{name}", json=DEFINITION), api.get(f"/v1/pipelines/{name}")):
            assert reply.status_code == 422 and reply.json()["field"] == "name", reply.text
        assert _stored(app) == before


def test_validate_matches_the_cli_and_yaml_bodies_work(app: dict[str, Any], tmp_path: Path) -> None:
    from openanomaly.configstore.files import load_config
    from openanomaly.errors import ConfigValidationError

    bad = {"name": "v", **DEFINITION, "schedule": {"infer_every": "7m", "context": "1h"}, "step": "2m"}
    with _client(app) as api:
        reply = api.post(
            "/v1/pipelines:validate",
            content=yaml.safe_dump(bad),
            headers={"content-type": "application/yaml"},
        )
    assert reply.status_code == 422
    text = yaml.safe_dump({"settings": {"tsdb": {"url": "http://x:1"}}, "pipelines": [bad]})
    with pytest.raises(ConfigValidationError) as cli:
        load_config(text)
    assert reply.json()["message"] == cli.value.errors[0].message
    with _client(app) as api:
        good = api.post("/v1/pipelines:validate", json={"name": "v", **DEFINITION})
    assert good.status_code == 200 and good.json()["pipeline"]["schedule"]["infer_every"] == "5m"
    with _client(app) as api:  # a name that no pipeline can have never reaches the store
        for reply in (api.get("/v1/pipelines/a b"), api.put("/v1/pipelines/a*b", json=DEFINITION)):
            assert reply.status_code == 422 and reply.json()["field"] == "name", reply.text


def test_the_read_token_reads_but_cannot_write(app: dict[str, Any]) -> None:
    with _client(app) as api:
        api.put("/v1/pipelines/ro", json=DEFINITION)
    with _client(app, READER) as reader:
        assert reader.get("/v1/pipelines").status_code == 200
        assert reader.get("/v1/pipelines/ro").status_code == 200
        before = _stored(app)
        for reply in (
            reader.put("/v1/pipelines/ro", json={**DEFINITION, "model": "mad"}),
            reader.delete("/v1/pipelines/ro"),
            reader.post("/v1/pipelines/ro/run"),
        ):
            assert reply.status_code == 403, reply.text
        assert _stored(app) == before
    with _client(app, "wrong") as nobody:
        assert nobody.get("/v1/pipelines").status_code == 401
    with _client(app) as api:
        api.delete("/v1/pipelines/ro")
