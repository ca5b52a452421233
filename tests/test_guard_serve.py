"""Roles, browser login and ``/healthz`` under a large valid body, on the app a user
gets: the shipped serve_config.yaml's args (default limits, the playground on), both
tokens from files (``OPENANOMALY_API_TOKEN_FILE``, ``OPENANOMALY_READ_TOKEN_FILE``),
a real local Ray Serve, real HTTP, the real Gradio playground.

Issue 25's probes too: YAML alias bombs, odd pipeline bodies and names, model paths,
a cookie call from another site, 405's ``Allow``, and login guessing (last: it throttles
this address for a minute).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

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

    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings

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


def _origin(root: str) -> str:
    """What a browser sends as ``Origin`` from a page of this server."""
    parts = urlsplit(root)
    return f"{parts.scheme}://{parts.netloc}"


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
        logout = browser.post("/logout", headers={"Origin": _origin(root)})
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


# -- issue 25 ---------------------------------------------------------------------------------

YAML = {"content-type": "application/yaml"}
PIPELINE = {"query": "up", "step": "1m", "model": "mad", "schedule": {"infer_every": "5m", "context": "1h"}}


def _alias_bomb(levels: int, size: int) -> bytes:
    """The issue's probe: nine aliases per level, ``levels`` deep (9**levels values), ``size`` bytes."""
    names = "abcdefghij"
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    lines += [f"{names[i]}: &{names[i]} [{','.join([f'*{names[i - 1]}'] * 9)}]" for i in range(1, levels)]
    text = "\n".join([*lines, "name: bomb", "query: up", "model: mad", f"labels: *{names[levels - 1]}", "#"])
    assert len(text) <= size
    return (text + "." * (size - len(text))).encode()


@pytest.mark.parametrize(
    ("levels", "size", "method", "path", "headers"),
    [(7, 290, "POST", "/v1/pipelines:validate", READ), (9, 700, "PUT", "/v1/pipelines/bomb", ADMIN)],
)
def test_a_yaml_alias_bomb_is_refused_at_once(
    root: str, levels: int, size: int, method: str, path: str, headers: dict[str, str]
) -> None:
    """Issue 25: 290 bytes took 7.4 s on the event loop; 700 bytes pinned the replica for minutes."""
    replies: list[tuple[httpx.Response, float]] = []

    def send() -> None:
        start = time.perf_counter()
        reply = httpx.request(
            method,
            f"{root}{path}",
            content=_alias_bomb(levels, size),
            headers={**headers, **YAML},
            timeout=60,
        )
        replies.append((reply, time.perf_counter() - start))

    latencies = _healthz_while(root, send)
    reply, seconds = replies[0]
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == "body" and "aliases are expanded" in reply.json()["message"]
    worst = max(latencies, default=0.0)
    print(f"{size}-byte alias bomb, {levels} levels: 422 in {seconds:.3f} s; /healthz max {worst:.3f} s")
    assert seconds < 1 and worst < 1
    assert _get(root, "/v1/pipelines/bomb", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(
    ("body", "content_type", "field", "message"),
    [
        (b"name: odd\nquery: " + b"x" * 70_000, "application/yaml", "body", "a pipeline is small"),
        (b"name: odd\nquery: !!binary aGVsbG8=\nmodel: mad\n", "application/yaml", "body", "!!binary"),
        (
            b'{"name": "odd", "query": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            "application/json",
            "body",
            "small",
        ),
        (
            b'{"name": "odd", "query": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
            "application/json",
            "body",
            "nested",
        ),
        (
            json.dumps({**PIPELINE, "name": "odd", "model": "chronos:/etc"}).encode(),
            "application/json",
            "model.spec",
            "run code",
        ),
        (
            json.dumps({**PIPELINE, "name": "odd", "model": {"spec": "chronos:../../../tmp/x"}}).encode(),
            "application/json",
            "model.spec",
            "run code",
        ),
    ],
    ids=["large", "binary-tag", "50k-brackets", "30k-brackets", "chronos-etc", "chronos-relative"],
)
def test_odd_pipeline_bodies_are_422_and_nothing_is_stored(
    root: str, body: bytes, content_type: str, field: str, message: str
) -> None:
    for method, path in (("PUT", "/v1/pipelines/odd"), ("POST", "/v1/pipelines:validate")):
        reply = httpx.request(
            method, f"{root}{path}", content=body, headers={**ADMIN, "content-type": content_type}, timeout=60
        )
        assert reply.status_code == 422, reply.text[:300]
        assert reply.json()["field"] == field and message in reply.json()["message"], reply.json()
    assert _get(root, "/v1/pipelines/odd", headers=ADMIN).status_code == 404


@pytest.mark.parametrize("name", ["%2e%2e", "%2e", ".%2E.", "a%2fb"])
def test_dot_names_are_refused(root: str, name: str) -> None:
    """Issue 25: ``PUT /v1/pipelines/%2e%2e`` made a pipeline ``..`` in the YAML store."""
    reply = httpx.put(f"{root}/v1/pipelines/{name}", json=PIPELINE, headers=ADMIN, timeout=60)
    assert 400 <= reply.status_code < 500 and reply.json()["field"] in ("name", None), reply.text
    assert set(reply.json()) >= {"error", "message", "field"}
    listed = _get(root, "/v1/pipelines", headers=ADMIN).json()["pipelines"]
    assert not [p for p in listed if set(p["name"]) <= {"."}]


def test_405_says_what_is_allowed(root: str) -> None:
    forecast = _get(root, "/v1/forecast", headers=ADMIN)
    assert forecast.status_code == 405 and forecast.headers["allow"] == "POST"
    pipeline = httpx.post(f"{root}/v1/pipelines/cpu", json={}, headers=ADMIN, timeout=60)
    assert pipeline.status_code == 405 and pipeline.json()["error"] == "method_not_allowed"
    assert pipeline.headers["allow"] == "DELETE, GET, PUT"


def test_a_cookie_call_from_another_site_changes_nothing(root: str) -> None:
    """Issue 25: with the admin cookie, another site's page created a pipeline through Gradio."""
    text = "name: csrf\nquery: up\nmodel: mad\nschedule: {infer_every: 5m, context: 1h}\n"
    with httpx.Client(base_url=root, timeout=120) as browser:
        login = browser.post("/login", data={"token": ADMIN_TOKEN, "next": f"{PREFIX}/playground/"})
        assert login.status_code == 303
        for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"}, {}):
            refused = browser.post(
                "/playground/gradio_api/call/saved",
                json={"data": ["(new pipeline)", text, ""]},
                headers=headers,
            )
            assert refused.status_code == 403 and refused.json()["field"] == "Origin", refused.text
        # The same cookie from the playground's own page is let through to Gradio.
        own = browser.post("/playground/gradio_api/info", headers={"Origin": _origin(root)})
        assert own.status_code != 403
    assert _get(root, "/v1/pipelines/csrf", headers=ADMIN).status_code == 404


def test_login_guessing_is_throttled(root: str) -> None:
    """Issue 25: about 29 guesses a second, unthrottled. Last in this module: it throttles 127.0.0.1."""
    with httpx.Client(base_url=root, timeout=60) as browser:
        codes = []
        for _ in range(6):
            reply = browser.post("/login", data={"token": "guess"})
            codes.append(reply.status_code)
            if reply.status_code == 429:
                break
        assert codes[-1] == 429 and set(codes[:-1]) <= {401}, codes
        assert 1 <= int(reply.headers["retry-after"]) <= 60 and "Too many failed sign-ins" in reply.text
        right = browser.post("/login", data={"token": ADMIN_TOKEN})
        assert right.status_code == 429  # while throttled, no token is checked
