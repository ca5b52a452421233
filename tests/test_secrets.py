"""Secrets never leave: a scripted run with known token strings, every output grepped.

The secrets sit where users put them: the TSDB bearer token in the environment
(``${VM_TOKEN}`` in the YAML), a password in the TSDB URL's userinfo, a numeric
password and a tenant header written in the config, the API token in a file
(``OPENANOMALY_API_TOKEN_FILE``, as a Kubernetes Secret mount). The run covers
``validate`` (good and bad files), ``run --once`` against a real VictoriaMetrics and
against a server that reflects request headers into its error body (a misbehaving
proxy), and the API with the scheduler: its answers, ``/metrics``, and every log file
of the Ray session. None may contain a secret.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import TSDBServer, free_port

pytestmark = pytest.mark.integration

VM_TOKEN = "vmtok-5f0e9a7c3b1d"
URL_PASSWORD = "urlpw-8c2d4e6f"
NUMERIC_PASSWORD = 8812771234567
TENANT = "tenant-7a6b5c4d"
API_TOKEN = "apitok-1e2f3a4b5c6d"
SECRETS = (VM_TOKEN, URL_PASSWORD, str(NUMERIC_PASSWORD), TENANT, API_TOKEN)

APP = "oa-secrets"
PREFIX = "/oa-secrets"
SCHEDULER = {"name": "oa-secrets-scheduler", "namespace": "oa-secrets"}


class _Reflect(http.server.BaseHTTPRequestHandler):
    """Answers every request with the request's headers in the body: 503 (retried, so
    the retry warnings are exercised) to basic auth, 400 to anything else."""

    def _reflect(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = "bad request; you sent:\n" + "".join(f"{k}: {v}\n" for k, v in self.headers.items())
        self.send_response(503 if self.headers.get("authorization", "").startswith("Basic") else 400)
        self.send_header("content-type", "text/plain")
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _reflect

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def reflector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Reflect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _config(tmp_path: Path, name: str, tsdb: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"settings:\n  tsdb:\n{tsdb}\n"
        "pipelines:\n"
        "  - {name: cpu, query: 'up', model: zscore, step: 1m, schedule: {infer_every: 1m, context: 30m}}\n"
    )
    return path


def _with_token(host: str) -> str:
    return (
        f"    url: http://{host}\n    bearer_token: ${{VM_TOKEN}}\n    headers: {{X-Scope-OrgID: {TENANT}}}"
    )


def _with_password(host: str) -> str:
    return f"    url: http://reader:{URL_PASSWORD}@{host}\n    retries: 1\n    backoff: 10ms"


def _assert_clean(what: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{what} contains {secret!r}"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """One ``openanomaly`` command in its own process, at debug log level (logs on stderr)."""
    env = {**os.environ, "VM_TOKEN": VM_TOKEN}
    command = [sys.executable, "-m", "openanomaly.cli", "-vv", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_cli_outputs_hold_no_secret(tmp_path: Path, victoria_metrics: TSDBServer, reflector: str) -> None:
    vm = victoria_metrics.url.removeprefix("http://")
    good = _config(tmp_path, "good", _with_token(vm))
    basic = f"    username: u\n    password: {NUMERIC_PASSWORD}"
    numeric = _config(tmp_path, "numeric", f"    url: http://{vm}\n{basic}")
    conflicting = _config(
        tmp_path, "conflict", f"    url: http://{vm}\n    bearer_token: {NUMERIC_PASSWORD}\n    username: u"
    )
    reflected = _config(tmp_path, "reflect", _with_token(reflector))
    in_url = _config(tmp_path, "in-url", _with_password(reflector))
    runs = {
        "validate": _cli("validate", str(good)),
        "validate numeric": _cli("validate", str(numeric)),
        "validate conflicting": _cli("validate", str(conflicting)),
        "run": _cli("run", "--once", "--config", str(good)),
        "run reflected": _cli("run", "--once", "--config", str(reflected)),
        "run userinfo": _cli("run", "--once", "--config", str(in_url)),
    }
    codes = {name: run.returncode for name, run in runs.items()}
    assert codes["validate"] == codes["validate numeric"] == 0, runs
    assert codes["validate conflicting"] and codes["run reflected"] and codes["run userinfo"], codes
    # The reflected headers are quoted, masked; the userinfo run logs its retry.
    assert "HTTP 400" in runs["run reflected"].stderr and "***" in runs["run reflected"].stderr
    assert "retry 1/1" in runs["run userinfo"].stderr and "***" in runs["run userinfo"].stderr
    assert "DEBUG" in runs["run"].stderr
    for name, run in runs.items():
        _assert_clean(f"{name} stdout", run.stdout)
        _assert_clean(f"{name} stderr", run.stderr)


@pytest.fixture(scope="module")
def api(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory, reflector: str
) -> Iterator[httpx.Client]:
    from ray import serve
    from ray.serve.context import _get_global_client

    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings

    secret_dir = tmp_path_factory.mktemp("secrets")
    (secret_dir / "token").write_text(API_TOKEN)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = _get_global_client().http_config.port
    ingress = {
        "ray_actor_options": {
            "num_cpus": 0.1,
            "runtime_env": {"env_vars": {"OPENANOMALY_API_TOKEN_FILE": str(secret_dir / "token")}},
        }
    }
    settings = AppSettings.model_validate(
        {"models": {"z": {"spec": "zscore"}}, "scheduler": SCHEDULER, "playground": False}
    )
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    serve.run(
        build(settings, ingress_options=ingress, forecaster_options=small), name=APP, route_prefix=PREFIX
    )
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}{PREFIX}", headers=headers, timeout=120) as client:
        yield client
    serve.delete(APP)


def test_api_scheduler_and_ray_logs_hold_no_secret(api: httpx.Client, tmp_path: Path, reflector: str) -> None:
    import ray

    from openanomaly.runtime.scheduler_actor import start_scheduler

    tsdb = _with_token(reflector).replace("${VM_TOKEN}", VM_TOKEN) + "\n    retries: 0"
    scheduler = start_scheduler(str(_config(tmp_path, "scheduled", tsdb)), autostart=False, **SCHEDULER)
    try:
        assert api.post("/v1/pipelines/cpu/run").status_code == 200
        ray.get(scheduler.wait_idle.remote(120))
        pipelines = api.get("/v1/pipelines")
        assert "HTTP 400" in pipelines.text, pipelines.text  # the run failed on the reflector
        answers = {
            "/v1/pipelines": pipelines.text,
            "/metrics": api.get("/metrics").text,
            "/v1/models": api.get("/v1/models").text,
            "/openapi.json": api.get("/openapi.json").text,
            "401": httpx.get(f"{api.base_url}/v1/models", headers={"Authorization": "Bearer nope"}).text,
            "422": api.post("/v1/forecast", json={"series": [{"values": [1]}], "horizon": True}).text,
        }
    finally:
        ray.kill(scheduler)
    for what, text in answers.items():
        _assert_clean(what, text)
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    files = [path for path in logs.rglob("*") if path.is_file()]
    assert files
    for path in files:
        _assert_clean(str(path), path.read_text(errors="replace"))
