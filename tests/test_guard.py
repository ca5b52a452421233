"""The Guard's roles and the browser login, on a real FastAPI app with the real
middleware and login routes (Starlette's TestClient, no Ray): which credential opens
which path, what the session cookie holds, where login may redirect.

tests/test_guard_serve.py runs the same rules on the shipped app on Ray Serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.exceptions import HTTPException

from openanomaly.errors import ConfigError
from openanomaly.serve.guard import (
    ADMIN,
    ANONYMOUS,
    READ,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Guard,
    GuardSettings,
    Principal,
    principal_of,
    require_write,
)
from openanomaly.serve.login import router, safe_next

ADMIN_TOKEN = "admin-tok-3b9f0d"
READ_TOKEN = "read-tok-71c2aa"
BEARER = {
    "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    "read": {"Authorization": f"Bearer {READ_TOKEN}"},
}
HTML = {"Accept": "text/html,application/xhtml+xml"}
SAME_SITE = {"Origin": "http://testserver"}  # what a browser sends from the server's own page


def _app(settings: GuardSettings) -> FastAPI:
    """Routes standing in for the API (``/v1``), the docs and the playground, behind the real Guard."""
    app = FastAPI()
    app.include_router(router)

    @app.api_route("/v1/things", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def things(request: Request) -> dict[str, str]:
        return {"principal": principal_of(request).name}

    @app.post("/v1/things/run")
    async def run(request: Request) -> dict[str, str]:
        return {"by": require_write(request).name}

    @app.post("/playground/act")
    async def act(request: Request) -> dict[str, str]:
        return {"by": require_write(request).name}

    @app.get("/playground/")
    async def playground(request: Request) -> HTMLResponse:
        return HTMLResponse(f"<p>playground for {request.state.principal.name}</p>")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(Guard)
    app.state.guard = settings
    return app


def _settings(admin: str | None = ADMIN_TOKEN, read: str | None = READ_TOKEN) -> GuardSettings:
    env = {k: v for k, v in {"OPENANOMALY_API_TOKEN": admin, "OPENANOMALY_READ_TOKEN": read}.items() if v}
    return GuardSettings.from_environ(max_body_bytes=2**20, environ=env)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(_app(_settings()), follow_redirects=False) as client:
        yield client


def _login(client: TestClient, token: str, next_path: str = "/playground/") -> str:
    response = client.post("/login", data={"token": token, "next": next_path})
    assert response.status_code == 303, response.text
    return response.cookies[SESSION_COOKIE]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_admin_token_may_do_everything(client: TestClient, method: str) -> None:
    response = client.request(method, "/v1/things", headers=BEARER["admin"])
    assert response.status_code == 200 and response.json() == {"principal": "admin"}


@pytest.mark.parametrize(
    ("method", "status"), [("GET", 200), ("POST", 200), ("PUT", 403), ("PATCH", 403), ("DELETE", 403)]
)
def test_read_token_reads_but_the_guard_refuses_its_writes(
    client: TestClient, method: str, status: int
) -> None:
    response = client.request(method, "/v1/things", headers=BEARER["read"])
    assert response.status_code == status
    if status == 403:
        assert response.json() == {
            "error": "forbidden",
            "message": f"the read-only token cannot {method}: use OPENANOMALY_API_TOKEN",
            "field": None,
        }
    else:
        assert response.json() == {"principal": "read"}


def test_require_write_refuses_the_read_principal(client: TestClient) -> None:
    assert client.post("/v1/things/run", headers=BEARER["admin"]).json() == {"by": "admin"}
    with pytest.raises(HTTPException) as refused:
        require_write(_scope_of(READ))
    assert refused.value.status_code == 403 and "'read'" in str(refused.value.detail)
    assert require_write(_scope_of(ADMIN)) == ADMIN
    # No Guard resolved the request: fail closed.
    assert principal_of({}) == Principal("anonymous", can_write=False)


def _scope_of(principal: Principal) -> dict[str, object]:
    return {"state": {"principal": principal}}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
    ],
)
def test_missing_or_wrong_credentials_are_401_for_api_clients(
    client: TestClient, headers: dict[str, str]
) -> None:
    for path in ("/v1/things", "/playground/", "/logout"):
        response = client.request("POST" if path == "/logout" else "GET", path, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
    assert client.get("/healthz").status_code == 200
    assert client.get("/login", headers=HTML).status_code == 200  # the form itself is open


def test_a_browser_without_a_session_is_sent_to_the_login_form(client: TestClient) -> None:
    response = client.get("/playground/?view=x", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fplayground%2F%3Fview%3Dx"
    # Only the playground redirects: the API and its docs answer a browser with the 401.
    assert client.get("/v1/things", headers=HTML).status_code == 401
    assert client.get("/openapi.json", headers=HTML).status_code == 401
    page = client.get(response.headers["location"])
    assert page.status_code == 200 and 'name="token"' in page.text
    assert 'value="/playground/?view=x"' in page.text and "http" not in page.text.split("<body>")[1]


@pytest.mark.parametrize("role", ["admin", "read"])
def test_login_sets_a_strict_httponly_cookie_that_is_not_the_token(client: TestClient, role: str) -> None:
    token = ADMIN_TOKEN if role == "admin" else READ_TOKEN
    response = client.post("/login", data={"token": token, "next": "/playground/?a=1"})
    assert response.status_code == 303 and response.headers["location"] == "/playground/?a=1"
    header = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in header.lower() and "path=/" in header.lower()
    assert f"max-age={SESSION_TTL_S}" in header.lower() and "secure" not in attributes  # plain http
    assert ADMIN_TOKEN not in header and READ_TOKEN not in header
    value = response.cookies[SESSION_COOKIE]
    assert value.startswith(f"{role}.") and value.count(".") == 2


def test_secure_cookie_behind_a_tls_proxy(client: TestClient) -> None:
    response = client.post("/login", data={"token": ADMIN_TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert "secure" in {part.strip().lower() for part in response.headers["set-cookie"].split(";")}
    assert response.headers["location"] == "/playground/"  # no next: the playground


def test_the_cookie_opens_the_playground_only(client: TestClient) -> None:
    cookie = _login(client, READ_TOKEN)  # the client keeps it
    page = client.get("/playground/", headers=HTML)
    assert page.status_code == 200 and "playground for read" in page.text
    for path in ("/v1/things", "/openapi.json", "/docs", "/redoc"):
        assert client.get(path, headers=HTML).status_code == 401, path
    # A session cookie is not a bearer token either.
    assert client.get("/v1/things", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401


def test_wrong_token_shows_the_form_again(client: TestClient) -> None:
    response = client.post("/login", data={"token": "nope", "next": "/playground/"})
    assert response.status_code == 401 and "Wrong token." in response.text
    assert SESSION_COOKIE not in response.cookies
    stuffed = client.post("/login", content="&".join(f"f{i}=x" for i in range(50)))
    assert stuffed.status_code == 401 and "Wrong token." in stuffed.text


@pytest.mark.parametrize(
    "bad",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "http:/x",
        "/play\r\nground",
        "",
        "playground",
    ],
)
def test_a_bad_next_is_not_followed(client: TestClient, bad: str) -> None:
    response = client.post("/login", data={"token": ADMIN_TOKEN, "next": bad})
    assert response.status_code == 303 and response.headers["location"] == "/playground/"
    assert client.get("/login", params={"next": bad}, headers=HTML).text.count('value="/playground/"') == 1
    assert safe_next(bad, "/prefix") == "/prefix/playground/"


def test_token_rotation_and_expiry_end_sessions() -> None:
    settings = _settings()
    cookie = settings.session_cookie(ADMIN)
    read_cookie = settings.session_cookie(READ)
    assert settings.session_principal(cookie) == ADMIN and settings.session_principal(read_cookie) == READ
    rotated = _settings(admin="admin-tok-rotated")
    assert rotated.session_principal(cookie) is None
    assert rotated.session_principal(read_cookie) == READ  # only the rotated role's sessions end
    assert settings.session_principal(cookie, now=10**10) is None  # expired
    _, expiry, signature = cookie.split(".")
    assert settings.session_principal(f"admin.{int(expiry) + 3600}.{signature}") is None  # extended by hand
    assert settings.session_principal(f"admin.{expiry}.{read_cookie.split('.')[2]}") is None
    assert settings.session_principal(f"read.{expiry}.{signature}") is None  # promoted by hand
    for junk in ("", "admin", "admin..", "root.1.x", "admin.-1.x"):
        assert settings.session_principal(junk) is None
    with TestClient(_app(rotated), follow_redirects=False) as client:
        client.cookies.set(SESSION_COOKIE, cookie)
        assert client.get("/playground/").status_code == 401


def test_logout_clears_the_cookie(client: TestClient) -> None:
    _login(client, ADMIN_TOKEN)  # the client keeps it
    assert client.get("/playground/").status_code == 200
    response = client.post("/logout", headers=SAME_SITE)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    header = response.headers["set-cookie"].lower()
    assert header.startswith(f"{SESSION_COOKIE}=") and ("max-age=0" in header or "expires=" in header)
    assert SESSION_COOKIE not in client.cookies
    assert client.get("/playground/", headers=HTML).status_code == 303


def test_principal_for_serves_the_playground_handlers() -> None:
    settings = _settings()
    assert settings.principal_for({"Authorization": f"Bearer {READ_TOKEN}"}, {}) == READ
    assert settings.principal_for({"authorization": f"bearer {ADMIN_TOKEN}"}, {}) == ADMIN
    assert settings.principal_for({}, {SESSION_COOKIE: settings.session_cookie(READ)}) == READ
    assert settings.principal_for({}, {SESSION_COOKIE: "admin.99999999999.forged"}) is None
    assert settings.principal_for({}, {}) is None
    assert _settings(admin=None, read=None).principal_for({}, {}) == ANONYMOUS


def test_auth_off_is_the_anonymous_admin_and_login_just_redirects() -> None:
    with TestClient(_app(_settings(admin=None, read=None)), follow_redirects=False) as client:
        assert client.delete("/v1/things").json() == {"principal": "anonymous"}
        assert client.get("/login", params={"next": "/playground/"}).headers["location"] == "/playground/"


def test_token_settings_refuse_a_trap(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="read-only token is set but no admin token"):
        _settings(admin=None)
    with pytest.raises(ConfigError, match="equals the admin token"):
        _settings(read=ADMIN_TOKEN)
    secret = tmp_path / "read"
    secret.write_text(READ_TOKEN + "\n")
    settings = GuardSettings.from_environ(
        max_body_bytes=1,
        environ={
            "OPENANOMALY_API_TOKEN": ADMIN_TOKEN,
            "OPENANOMALY_READ_TOKEN_FILE": str(secret),
            "OPENANOMALY_READ_TOKEN": "x",
        },
    )
    assert settings.read_token == SecretStr(READ_TOKEN) and READ_TOKEN not in repr(settings)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="OPENANOMALY_READ_TOKEN_FILE is empty"):
        GuardSettings.from_environ(
            max_body_bytes=1,
            environ={
                "OPENANOMALY_API_TOKEN": ADMIN_TOKEN,
                "OPENANOMALY_READ_TOKEN_FILE": str(tmp_path / "empty"),
            },
        )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Referer": "http://evil.example/playground/"}, 403),
        ({"Origin": "http://testserver.evil.example"}, 403),
        (SAME_SITE, 200),
        ({"Referer": "http://testserver/playground/?x=1"}, 200),
        (
            {"Origin": "https://oa.example", "X-Forwarded-Host": "oa.example", "X-Forwarded-Proto": "https"},
            200,
        ),
    ],
)
def test_a_cookie_signed_change_must_come_from_this_server(
    client: TestClient, headers: dict[str, str], status: int
) -> None:
    """Issue 25: with the admin cookie, another site's page could make the playground act."""
    _login(client, ADMIN_TOKEN)
    response = client.post("/playground/act", headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["field"] == "Origin" and "session cookie" in response.json()["message"]
    # Reading needs no Origin, and a bearer token cannot be sent by another site's page.
    assert client.get("/playground/", headers={"Origin": "http://evil.example"}).status_code == 200
    client.cookies.clear()
    bearer = {**BEARER["admin"], "Origin": "http://evil.example"}
    assert client.post("/playground/act", headers=bearer).json() == {"by": "admin"}


def test_failed_logins_are_throttled_with_429_and_retry_after(client: TestClient) -> None:
    for _ in range(5):
        assert client.post("/login", data={"token": "guess"}).status_code == 401
    throttled = client.post("/login", data={"token": ADMIN_TOKEN})  # even the right one, for now
    assert throttled.status_code == 429 and "Too many failed sign-ins" in throttled.text
    assert 1 <= int(throttled.headers["retry-after"]) <= 60


def test_the_login_throttle_counts_per_client_and_in_all() -> None:
    from openanomaly.serve.login import LoginThrottle

    throttle = LoginThrottle(per_client=2, overall=3, window_s=10)
    throttle.failed("a", 0.0)
    throttle.failed("a", 1.0)
    assert throttle.retry_after("a", 2.0) == 8 and throttle.retry_after("b", 2.0) is None
    throttle.failed("b", 3.0)
    assert throttle.retry_after("c", 4.0) == 6  # three in all: everyone waits for the oldest
    assert throttle.retry_after("c", 10.0) is None and throttle.retry_after("a", 10.5) is None
