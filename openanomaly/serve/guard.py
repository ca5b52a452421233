"""The HTTP edge of the API: bearer token, body size and the one error body.

``Guard`` is plain ASGI middleware, outermost in the app, so a request is refused
before any of its body is read or parsed: a wrong token costs a header compare (not
the 2.4 s a 15 MB body took to parse before its 401), and a body over
``max_body_bytes`` is refused from its ``Content-Length``, or, when chunked, as soon
as the bytes read pass the limit. Every path except ``/healthz`` and ``/metrics``
needs the token, the OpenAPI docs and the playground included.

The token comes from ``OPENANOMALY_API_TOKEN_FILE`` (a file, e.g. a mounted
Kubernetes Secret) or ``OPENANOMALY_API_TOKEN``; ``load_token`` reads it once, at
replica start, and keeps it as a ``SecretStr`` so it never shows in a repr or log.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from openanomaly.errors import ConfigError

__all__ = [
    "OPEN_PATHS",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "Guard",
    "GuardSettings",
    "error_body",
    "load_token",
]

TOKEN_ENV = "OPENANOMALY_API_TOKEN"
"""When set in the ingress replica's environment, requests need ``Authorization: Bearer <value>``."""

TOKEN_FILE_ENV = "OPENANOMALY_API_TOKEN_FILE"
"""Path of a file holding the token (surrounding whitespace ignored); wins over ``TOKEN_ENV``."""

OPEN_PATHS = frozenset({"/healthz", "/metrics"})
"""Paths served without the token: probes and Prometheus scrapes."""

_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
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


def load_token(environ: MutableMapping[str, str] | None = None) -> SecretStr | None:
    """The API token from ``OPENANOMALY_API_TOKEN_FILE`` or ``OPENANOMALY_API_TOKEN``; None: no auth.

    Raises:
        ConfigError: the token file is set but unreadable or empty (serving without
            auth because a Secret failed to mount would be worse than not starting).
    """
    env = os.environ if environ is None else environ
    path = env.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as error:
            raise ConfigError(f"cannot read the API token file: {error.strerror}", source=path) from None
        if not token:
            raise ConfigError("the API token file is empty", source=path)
        return SecretStr(token)
    token = env.get(TOKEN_ENV, "").strip()
    return SecretStr(token) if token else None


@dataclass(frozen=True)
class GuardSettings:
    """What ``Guard`` enforces; the ingress puts one on ``app.state.guard`` at start."""

    token: SecretStr | None
    max_body_bytes: int

    def authorized(self, header: bytes | None) -> bool:
        """Constant-time check of an ``Authorization`` header value."""
        if self.token is None:
            return True
        given = (header or b"").removeprefix(b"Bearer ").strip()
        return hmac.compare_digest(given, self.token.get_secret_value().encode())


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive`` when a body without (or with a false)
    ``Content-Length`` passes the limit mid-read."""


class Guard:
    """ASGI middleware: token, then body size, then the app (see the module docs).

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
        headers = dict(scope.get("headers") or ())
        if _route(scope) not in OPEN_PATHS and not settings.authorized(headers.get(b"authorization")):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _send_error(send, 401, f"missing or wrong bearer token (see {TOKEN_ENV})", "Authorization")
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = settings.max_body_bytes
        declared = headers.get(b"content-length", b"0")
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


async def _send_error(send: Send, status: int, message: str, field: str | None) -> None:
    body = json.dumps(error_body(status, message, field=field)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
