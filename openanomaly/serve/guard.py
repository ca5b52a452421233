"""The HTTP edge of the API: who is asking, body size and the one error body.

``Guard`` is plain ASGI middleware, outermost in the app, so a request is refused
before any of its body is read or parsed: a wrong token costs a header compare, not
the parse of a large body that is refused anyway, and a body over
``max_body_bytes`` is refused from its ``Content-Length``, or, when chunked, as soon
as the bytes read pass the limit.

Two tokens, two roles. ``OPENANOMALY_API_TOKEN`` is the admin token (everything);
``OPENANOMALY_READ_TOKEN`` a read-only one (every GET, and the scoring POSTs
``/v1/forecast`` and ``/v1/detect``, which change nothing). Each request is resolved
to a ``Principal`` kept in the ASGI scope (``request.state.principal``); routes that
change something call ``require_write``, and the Guard itself refuses PUT, PATCH and
DELETE to a read principal (defence in depth). Without an admin token auth is off and
everyone is the ``anonymous`` admin (the ingress warns loudly at start).

Which credential where: the API (``/v1/...``), ``/docs``, ``/redoc`` and
``/openapi.json`` take only ``Authorization: Bearer``; the playground
(``/playground/...``) and ``/logout`` also take the session cookie that ``POST /login``
sets (``openanomaly.serve.login``), because a browser cannot send a bearer header.
``/healthz``, ``/metrics`` and ``/login`` are open. The cookie never holds a token: it
is ``role.expiry.signature``, an HMAC keyed by a key derived from that role's token,
so rotating a token ends every session it opened. A request the cookie signs in that
could change something (any method but GET, HEAD and OPTIONS, and WebSockets) must also
carry a same-origin ``Origin`` (or ``Referer``): ``SameSite=Strict`` alone stood between
another site's page and the playground's actions, and not every browser enforces it.

Each token comes from ``..._TOKEN_FILE`` (a file, e.g. a mounted Kubernetes Secret) or
``..._TOKEN``; ``GuardSettings.from_environ`` reads them once, at replica start, and
keeps them as ``SecretStr`` so they never show in a repr or log.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser

from openanomaly.errors import ConfigError, OpenAnomalyError

_log = logging.getLogger(__name__)

__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "LOGIN_PATH",
    "OPEN_PATHS",
    "READ",
    "READ_TOKEN_ENV",
    "READ_TOKEN_FILE_ENV",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "Guard",
    "GuardSettings",
    "Principal",
    "error_body",
    "load_token",
    "principal_of",
    "require_write",
    "same_origin",
]

TOKEN_ENV = "OPENANOMALY_API_TOKEN"
"""The admin token: when set in the ingress replica's environment, requests need credentials."""

TOKEN_FILE_ENV = "OPENANOMALY_API_TOKEN_FILE"
"""Path of a file holding the admin token (surrounding whitespace ignored); wins over ``TOKEN_ENV``."""

READ_TOKEN_ENV = "OPENANOMALY_READ_TOKEN"
"""A read-only token: GETs and the scoring POSTs, never a change. Needs the admin token set."""

READ_TOKEN_FILE_ENV = "OPENANOMALY_READ_TOKEN_FILE"
"""Path of a file holding the read-only token; wins over ``READ_TOKEN_ENV``."""

OPEN_PATHS = frozenset({"/healthz", "/metrics"})
"""Paths served without credentials: probes and Prometheus scrapes (and ``LOGIN_PATH``)."""

LOGIN_PATH = "/login"
"""The browser login form (``openanomaly.serve.login``); open, like ``OPEN_PATHS``."""

SESSION_COOKIE = "openanomaly_session"
"""The browser session cookie ``POST /login`` sets; it opens only ``_COOKIE_PATHS``."""

SESSION_TTL_S = 12 * 3600
"""How long a browser session lasts (12 h): a working day, then the token again."""

_COOKIE_PATHS = ("/playground", "/logout")
"""Routes (and, for the playground, everything under it) where the session cookie counts."""

_WRITE_METHODS = frozenset({"PUT", "PATCH", "DELETE"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CROSS_SITE = (
    "a request signed in with the session cookie must come from this server's own pages: "
    "its Origin (or Referer) names another site, or none"
)
_SESSION_KEY_LABEL = b"openanomaly session cookie v1"

_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal",
    503: "unavailable",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as; the name goes into audit logs, never a token."""

    name: str
    """``admin``, ``read``, or ``anonymous`` when auth is off."""
    can_write: bool


ADMIN = Principal("admin", can_write=True)
READ = Principal("read", can_write=False)
ANONYMOUS = Principal("anonymous", can_write=True)
_UNKNOWN = Principal("anonymous", can_write=False)  # no Guard ran: fail closed


def error_body(
    status: int, message: str, *, field: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """The API's one error shape: ``{"error", "message", "field"}``.

    Only the first line of ``message`` is kept, cut to 1,000 characters: exception
    messages from deeper layers must not carry tracebacks or pages of input out.
    """
    line = (message.strip().splitlines() or [""])[0]
    if len(line) > 1000:
        line = line[:997] + "..."
    return {"error": kind or _KINDS.get(status, "error"), "message": line, "field": field}


def load_token(
    environ: Mapping[str, str] | None = None, *, env: str = TOKEN_ENV, file_env: str = TOKEN_FILE_ENV
) -> SecretStr | None:
    """A token from the file named by ``file_env``, else from ``env``; None: not set.

    Raises:
        ConfigError: the token file is set but unreadable or empty (serving without
            auth because a Secret failed to mount would be worse than not starting).
    """
    environ = os.environ if environ is None else environ
    path = environ.get(file_env)
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as error:
            raise ConfigError(
                f"cannot read the token file of {file_env}: {error.strerror}", source=path
            ) from None
        if not token:
            raise ConfigError(f"the token file of {file_env} is empty", source=path)
        return SecretStr(token)
    token = environ.get(env, "").strip()
    return SecretStr(token) if token else None


def principal_of(request_or_scope: Any) -> Principal:
    """The principal ``Guard`` stored for this request (a ``Request`` or its ASGI scope).

    A request the Guard did not resolve (an open path, or no Guard at all) is a
    read-only ``anonymous``: code that asks is never granted writes by accident.
    """
    scope = getattr(request_or_scope, "scope", request_or_scope)
    principal = (scope.get("state") or {}).get("principal")
    return principal if isinstance(principal, Principal) else _UNKNOWN


def require_write(request: Any) -> Principal:
    """The request's principal if it may change things; else an HTTP 403.

    Routes that change state (pipelines, runs, backtests) call it first; the app's
    exception handler turns the 403 into the one error body.

    Raises:
        HTTPException: 403, the principal holds the read-only token.
    """
    principal = principal_of(request)
    if not principal.can_write:
        raise HTTPException(403, f"the {principal.name!r} principal cannot change anything: use {TOKEN_ENV}")
    return principal


@dataclass(frozen=True)
class GuardSettings:
    """What ``Guard`` enforces; the ingress puts one on ``app.state.guard`` at start."""

    token: SecretStr | None
    max_body_bytes: int
    read_token: SecretStr | None = None

    @classmethod
    def from_environ(cls, *, max_body_bytes: int, environ: Mapping[str, str] | None = None) -> GuardSettings:
        """Both tokens from the environment (see ``load_token``).

        Raises:
            ConfigError: a token file is unreadable or empty; a read token without an
                admin token (a read-only API whose writes are open is a trap); the two
                tokens are equal (the roles would be indistinguishable).
        """
        admin = load_token(environ)
        read = load_token(environ, env=READ_TOKEN_ENV, file_env=READ_TOKEN_FILE_ENV)
        if read is not None and admin is None:
            raise ConfigError(
                f"a read-only token is set but no admin token: set {TOKEN_FILE_ENV} or {TOKEN_ENV} too, "
                "or every write would be open",
                source=READ_TOKEN_ENV,
            )
        if read is not None and admin is not None and read.get_secret_value() == admin.get_secret_value():
            raise ConfigError("the read-only token equals the admin token", source=READ_TOKEN_ENV)
        return cls(token=admin, max_body_bytes=max_body_bytes, read_token=read)

    @property
    def auth_on(self) -> bool:
        return self.token is not None

    def principal_of_token(self, given: str) -> Principal | None:
        """The role a token opens, compared in constant time; None: neither token."""
        candidate = given.strip().encode()
        found = None
        for principal, token in ((ADMIN, self.token), (READ, self.read_token)):
            if token is not None and hmac.compare_digest(candidate, token.get_secret_value().encode()):
                found = principal
        return found

    def principal_for(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Principal | None:
        """Who sends these headers or cookies; None: not authenticated.

        A bearer token wins over the session cookie. For the playground's handlers
        (``gr.Request`` has ``.headers`` and ``.cookies``); the Guard accepts the cookie
        only on the playground and ``/logout``.
        """
        if not self.auth_on:
            return ANONYMOUS
        given = _bearer(headers)
        if given is not None:
            return self.principal_of_token(given)
        return self.session_principal(cookies.get(SESSION_COOKIE, ""))

    def session_cookie(self, principal: Principal, *, now: float | None = None) -> str:
        """The session cookie value for ``principal``: ``role.expiry.signature``, no token in it."""
        expiry = int((time.time() if now is None else now) + SESSION_TTL_S)
        payload = f"{principal.name}.{expiry}"
        return f"{payload}.{self._sign(principal, payload)}"

    def session_principal(self, cookie: str, *, now: float | None = None) -> Principal | None:
        """The principal a session cookie stands for, if its signature holds and it has not expired."""
        role, _, rest = cookie.partition(".")
        expiry, _, signature = rest.partition(".")
        principal = {"admin": ADMIN, "read": READ}.get(role)
        if principal is None or not expiry.isdigit():
            return None
        expected = self._sign(principal, f"{role}.{expiry}")
        if expected is None or not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        return principal if int(expiry) > (time.time() if now is None else now) else None

    def _sign(self, principal: Principal, payload: str) -> str | None:
        """HMAC of ``payload`` under a key derived from the principal's token (None: no token)."""
        token = self.token if principal.can_write else self.read_token
        if token is None:
            return None
        key = hmac.new(token.get_secret_value().encode(), _SESSION_KEY_LABEL, hashlib.sha256).digest()
        digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None when there is none."""
    header = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, given = header.partition(" ")
    return given if scheme.lower() == "bearer" and given else None


def _netloc(value: str, scheme: str) -> str:
    """``host[:port]`` lower-cased, without the scheme's default port."""
    value = value.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return value.removesuffix(default) if default else value


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether the browser says this request comes from a page of this server.

    ``Origin`` (every browser sends it on a POST, PUT, DELETE and WebSocket), else the
    origin of ``Referer``, must name the host the request was sent to (``Host``, or
    ``X-Forwarded-Host`` behind a proxy: a page on another site cannot set either).
    A missing or ``null`` origin is not this server.
    """
    source = headers.get("origin") or headers.get("referer") or ""
    parts = urlsplit(source)
    if source == "null" or not parts.scheme or not parts.netloc:
        return False
    host = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0]
    scheme = (headers.get("x-forwarded-proto") or parts.scheme).split(",")[0].strip().lower()
    return bool(host) and _netloc(parts.netloc, parts.scheme) == _netloc(host, scheme)


class _BodyTooLarge(OpenAnomalyError):
    """Raised into the app from ``receive`` when a body without (or with a false)
    ``Content-Length`` passes the limit mid-read; :class:`Guard` catches it and answers 413."""


class Guard:
    """ASGI middleware: credentials, then role, then body size, then the app (see the module docs).

    Reads its ``GuardSettings`` from ``app.state.guard`` per request, because the
    settings are known only when the Serve replica starts, after the app is built;
    until then it lets requests through unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: GuardSettings | None = getattr(getattr(scope.get("app"), "state", None), "guard", None)
        if scope["type"] not in ("http", "websocket") or settings is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        route = _route(scope)
        if route not in OPEN_PATHS and route != LOGIN_PATH:
            takes_cookie = any(route == p or route.startswith(f"{p}/") for p in _COOKIE_PATHS)
            cookies = cookie_parser(headers.get("cookie", "")) if takes_cookie else {}
            principal = settings.principal_for(headers, cookies)
            if principal is None:
                await _refuse(scope, send, headers, takes_cookie)
                return
            if not principal.can_write and scope.get("method") in _WRITE_METHODS:
                await _send_error(
                    send, 403, f"the read-only token cannot {scope['method']}: use {TOKEN_ENV}", None
                )
                return
            changes = scope["type"] == "websocket" or scope.get("method") not in _SAFE_METHODS
            if settings.auth_on and _bearer(headers) is None and changes and not same_origin(headers):
                # Signed in by the cookie, sent from another site's page (cross-site request forgery).
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await _send_error(send, 403, _CROSS_SITE, "Origin")
                return
            scope.setdefault("state", {})["principal"] = principal
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = settings.max_body_bytes
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            await _send_error(send, 413, f"the body is over the limit of {limit} bytes", "body")
            return
        received = 0
        started = overflowed = False

        async def limited_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            received += len(message.get("body", b""))
            overflowed = received > limit
            if overflowed:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BaseException:  # _BodyTooLarge, maybe inside an ExceptionGroup from a task group
            if not overflowed or started:
                raise
            await _send_error(send, 413, f"the body is over the limit of {limit} bytes", "body")


def _route(scope: Scope) -> str:
    """The path inside the app: without Serve's route prefix (``root_path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


async def _refuse(scope: Scope, send: Send, headers: Mapping[str, str], takes_cookie: bool) -> None:
    """No credentials: a browser opening the playground goes to the login form; anything
    else (API clients, the docs, websockets) gets the 401 (or a policy-violation close)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    browser = scope.get("method") in ("GET", "HEAD") and "text/html" in headers.get("accept", "")
    if not (takes_cookie and browser):
        await _send_error(send, 401, f"missing or wrong bearer token (see {TOKEN_ENV})", "Authorization")
        return
    root = scope.get("root_path", "")
    here = root + _route(scope)
    if scope.get("query_string"):
        here += "?" + scope["query_string"].decode("latin-1")
    location = f"{root}{LOGIN_PATH}?next={quote(here, safe='')}".encode("latin-1")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _send_error(send: Send, status: int, message: str, field: str | None) -> None:
    body = json.dumps(error_body(status, message, field=field)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_host() -> str:
    """The address Serve's HTTP proxies listen on, from the controller; ``unknown`` if none."""
    with contextlib.suppress(Exception):
        from ray.serve.context import _get_global_client

        return str(_get_global_client().http_config.host)
    return "unknown"


def warn_if_open(token: SecretStr | None, host: str) -> None:
    """Log loudly when the API has no token; an error-level banner if it also listens
    beyond loopback (a mis-indented ``runtime_env`` once served an open API silently)."""
    if token is not None:
        return
    if host in ("127.0.0.1", "localhost", "::1"):
        _log.warning("API auth is OFF: set %s or %s to require a bearer token", TOKEN_FILE_ENV, TOKEN_ENV)
        return
    _log.error(
        "!!! API auth is OFF and Serve listens on %s: anyone who can reach it can use the API, "
        "its docs and the playground. Set %s (a file, e.g. a Kubernetes Secret) or %s !!!",
        host,
        TOKEN_FILE_ENV,
        TOKEN_ENV,
    )
