"""Roles, browser login and ``/healthz`` under a large valid body, on the app a user
gets: the shipped serve_config.yaml's args (default limits, the playground on), both
tokens from files (``OPENANOMALY_API_TOKEN_FILE``, ``OPENANOMALY_READ_TOKEN_FILE``),
a real local Ray Serve, real HTTP, the real Gradio playground.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from openanomaly.serve.guard import SESSION_COOKIE
from tests.fixtures.servers import free_port
from tests.fixtures.shipped import shipped_args, stop_scheduler

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
APP = "oa-guard"
PREFIX = "/oa-guard"
ADMIN_TOKEN = "guard-admin-5e1d0b"
READ_TOKEN = "guard-read-c47a92"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
FORECAST = {"series": [{"values": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}], "horizon": 2, "model": "mad"}


@pytest.fixture(scope="module")
def root(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the app built from serve_config.yaml, both tokens in files."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from openanomaly.serve.app import AppSettings, build

    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "admin").write_text(ADMIN_TOKEN + "\n")
    (secrets / "read").write_text(READ_TOKEN + "\n")
    env = {
        "OPENANOMALY_API_TOKEN_FILE": str(secrets / "admin"),
        "OPENANOMALY_READ_TOKEN_FILE": str(secrets / "read"),
    }
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = _get_global_client().http_config.port
    args = shipped_args(tmp_path_factory.mktemp("pipelines"), scheduler="oa-guard-serve-scheduler")
    app = build(
        AppSettings.model_validate(args),
        ingress_options={"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": env}}},
        forecaster_options={"ray_actor_options": {"num_cpus": 0.1}},
    )
    serve.run(app, name=APP, route_prefix=PREFIX)
    yield f"http://127.0.0.1:{port}{PREFIX}"
    serve.delete(APP)
    stop_scheduler(args)


def _get(root: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{root}{path}", timeout=120, **kwargs)


@pytest.mark.parametrize(("headers", "who"), [(ADMIN, "admin"), (READ, "read")])
def test_both_tokens_read_and_score(root: str, headers: dict[str, str], who: str) -> None:
    for path in ("/v1/models", "/openapi.json", "/docs"):
        assert _get(root, path, headers=headers).status_code == 200, (who, path)
    forecast = httpx.post(f"{root}/v1/forecast", json=FORECAST, headers=headers, timeout=120)
    assert forecast.status_code == 200, forecast.text
    detect = {"series": [{"values": [1.0, 2.0, 1.0, 2.0, 1.0, 9.0]}], "score_last": 1, "model": "mad"}
    assert httpx.post(f"{root}/v1/detect", json=detect, headers=headers, timeout=120).status_code == 200


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_read_token_cannot_write(root: str, method: str) -> None:
    url = f"{root}/v1/pipelines/cpu"
    refused = httpx.request(method, url, headers=READ, json={}, timeout=120)
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "forbidden",
        "message": f"the read-only token cannot {method}: use OPENANOMALY_API_TOKEN",
        "field": None,
    }
    # The admin token passes the Guard (the route is the pipelines API's, not the Guard's).
    assert httpx.request(method, url, headers=ADMIN, json={}, timeout=120).status_code not in (401, 403)


def test_browser_login_opens_the_playground_only(root: str) -> None:
    with httpx.Client(base_url=root, headers=HTML, timeout=120) as browser:
        redirect = browser.get("/playground/")
        assert redirect.status_code == 303
        location = redirect.headers["location"]
        assert location == f"{PREFIX}/login?next={quote(PREFIX + '/playground/', safe='')}"
        form = browser.get(location.removeprefix(PREFIX))
        assert form.status_code == 200 and f'action="{PREFIX}/login"' in form.text
        wrong = browser.post("/login", data={"token": "guess", "next": f"{PREFIX}/playground/"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
        login = browser.post("/login", data={"token": READ_TOKEN, "next": f"{PREFIX}/playground/"})
        assert login.status_code == 303 and login.headers["location"] == f"{PREFIX}/playground/"
        header = login.headers["set-cookie"]
        assert "httponly" in header.lower() and "samesite=strict" in header.lower()
        assert READ_TOKEN not in header and ADMIN_TOKEN not in header
        page = browser.get("/playground/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert browser.get("/playground/config").status_code == 200  # what the page loads next
        for path in ("/v1/models", "/openapi.json", "/docs"):
            refused = browser.get(path)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", path
        assert browser.post("/v1/forecast", json=FORECAST).status_code == 401
        # A bad next is not followed.
        away = browser.post("/login", data={"token": READ_TOKEN, "next": "//evil.example/"})
        assert away.headers["location"] == f"{PREFIX}/playground/"
        logout = browser.post("/logout")
        assert logout.status_code == 303 and SESSION_COOKIE not in browser.cookies
        assert browser.get("/playground/").status_code == 303


def _near_limit_body(limit: int) -> bytes:
    """A valid /v1/forecast body just under ``limit`` bytes at the default limits:
    1000 series (max_series) of 1000 values (max_total_points in all)."""
    values = np.round(np.random.default_rng(3).normal(100, 10, (1000, 1000)), 2)
    body = json.dumps(
        {"model": "mad", "horizon": 4, "series": [{"values": row.tolist()} for row in values]}
    ).encode()
    assert body.startswith(b"{") and len(body) <= limit
    return body


def _healthz_while(root: str, send: Any) -> list[float]:
    """Latencies of /healthz, polled every 10 ms (a prober, not a second load on a small
    machine) while ``send()`` runs in a thread."""
    thread = threading.Thread(target=send)
    latencies: list[float] = []
    with httpx.Client(base_url=root, timeout=10) as client:
        client.get("/healthz")
        thread.start()
        while thread.is_alive():
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
    thread.join()
    return latencies


def test_healthz_answers_while_a_large_valid_body_is_parsed(root: str) -> None:
    """Issue 11: the largest valid body the default limits admit is answered, and /healthz
    answers throughout, on the shipped app.

    The latencies are printed beside the same pings while small forecasts run for as long
    (the machine's own tail), not asserted: on a shared 2-core machine that tail alone
    ranged 57-142 ms, which no wall-clock bound separates from the regression (the GIL
    held ~0.2 s per body when bodies were parsed in a thread). That mechanism is tested
    without a clock in tests/test_guard_bodies.py.
    """
    from openanomaly.serve.schemas import Limits

    body = _near_limit_body(Limits().max_body_bytes)
    seconds: list[float] = []

    def send_large(times: int = 5) -> None:
        for _ in range(times):
            start = time.perf_counter()
            response = httpx.post(
                f"{root}/v1/forecast",
                content=body,
                headers={**ADMIN, "content-type": "application/json"},
                timeout=300,
            )
            seconds.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text[:300]
            assert response.content.count(b'"median"') == 1000

    send_large(1)
    seconds.clear()
    large = _healthz_while(root, send_large)
    assert len(seconds) == 5, "a large request failed (see above)"
    until = time.perf_counter() + sum(seconds)

    def send_small() -> None:
        while time.perf_counter() < until:
            assert (
                httpx.post(f"{root}/v1/forecast", json=FORECAST, headers=ADMIN, timeout=60).status_code == 200
            )

    small = _healthz_while(root, send_small)
    p50, p99, worst = np.percentile(large, [50, 99, 100])
    base_p99 = float(np.percentile(small, 99))
    print(
        f"{len(body) / 2**20:.1f} MiB valid forecast (1000 x 1000 points): 200 in "
        f"{np.median(seconds):.2f} s (median of 5); /healthz while they ran: p50 {1000 * p50:.1f} ms, "
        f"p99 {1000 * p99:.1f} ms, max {1000 * worst:.1f} ms over {len(large)} requests; "
        f"p99 under small forecasts for as long: {1000 * base_p99:.1f} ms"
    )
