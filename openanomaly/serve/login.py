"""Browser login for the playground: a token typed once becomes a session cookie.

A browser cannot send ``Authorization: Bearer``, so with auth on the playground needs
another credential. ``POST /login`` takes the admin or the read token from a form and
sets ``SESSION_COOKIE``: HttpOnly (no script reads it), SameSite=Strict (no other site
makes the browser send it), Secure when the request came over https, valid for
``SESSION_TTL_S``. The cookie is not the token but a signed ``role.expiry.signature``
(``GuardSettings.session_cookie``), so it cannot be replayed as a bearer token and
rotating the token logs every browser out. The Guard accepts it only on the
playground and ``POST /logout``; the API and its docs keep bearer auth.

Failed sign-ins are throttled per client address and in all (:class:`LoginThrottle`):
past the limit the form answers 429 with ``Retry-After``.

The page is self-contained HTML (no external assets: the server may have no internet
and the page must not leak a visit). After login the browser goes to ``next``, which
must be a path on this server: ``//host`` or ``https://host`` would make the form an
open redirect.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from openanomaly.serve.guard import LOGIN_PATH, SESSION_COOKIE, SESSION_TTL_S, GuardSettings

__all__ = ["LoginThrottle", "router", "safe_next"]

_log = logging.getLogger(__name__)

_FAILED_LOGIN_DELAY_S = 0.5
"""A wrong token waits this long: guessing costs time, whichever token was near."""

_MAX_FORM_BYTES = 8192


@dataclass
class LoginThrottle:
    """Failed sign-ins counted over a sliding window, per client address and in all.

    A wrong token already waits ``_FAILED_LOGIN_DELAY_S``, but concurrent guesses overlap,
    so the delay alone does not bound their rate; past either count every attempt is
    refused with 429 and ``Retry-After`` without looking at the token, until the oldest
    failure leaves the window. The overall count stops guessing spread over many
    addresses, at the price of refusing everyone for a while. Kept per ingress replica,
    in memory.
    """

    per_client: int = 5
    overall: int = 50
    window_s: float = 60.0
    _clients: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _all: deque[float] = field(default_factory=deque, init=False, repr=False)

    def _prune(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds until ``client`` may try again; None: it may now."""
        self._prune(self._all, now)
        mine = self._clients.get(client, deque())
        self._prune(mine, now)
        if not mine:
            self._clients.pop(client, None)
        waits = [
            failures[-cap] + self.window_s - now  # when the count drops below cap
            for failures, cap in ((mine, self.per_client), (self._all, self.overall))
            if len(failures) >= cap
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, client: str, now: float) -> None:
        self._clients.setdefault(client, deque()).append(now)
        self._all.append(now)


router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>OpenAnomaly: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;background:#f5f6f8;display:flex;justify-content:center;margin-top:12vh}}
form{{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002;min-width:20em}}
input[type=password]{{width:100%;padding:.5em;margin:.5em 0 1em;box-sizing:border-box}}
button{{padding:.5em 1.5em}} .error{{color:#b00020}}
</style></head>
<body><form method="post" action="{action}">
<h2>OpenAnomaly</h2>
<p>Sign in with the admin or the read-only API token.</p>
{error}
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form></body></html>
"""


def safe_next(value: str | None, root: str) -> str:
    """``value`` if it is a path on this server, else the playground under ``root``.

    Refused: anything with a scheme or host (``https://x``, ``//x``, ``/\\x``, which
    browsers read as ``//x``), control characters, and over-long values.
    """
    fallback = f"{root}/playground/"
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return fallback
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return fallback
    parts = urlsplit(value)
    return fallback if parts.scheme or parts.netloc else value


def _page(request: Request, next_path: str, *, error: str | None = None, status: int = 200) -> HTMLResponse:
    action = html.escape(request.scope.get("root_path", "") + LOGIN_PATH)
    shown = f'<p class="error">{html.escape(error)}</p>' if error else ""
    body = _PAGE.format(action=action, next=html.escape(next_path), error=shown)
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _settings(request: Request) -> GuardSettings | None:
    return getattr(request.app.state, "guard", None)


def _throttle(request: Request) -> LoginThrottle:
    """The app's throttle (one per app, so per ingress replica), made on first use."""
    state = request.app.state
    if getattr(state, "login_throttle", None) is None:
        state.login_throttle = LoginThrottle()
    return state.login_throttle


def _secure(request: Request) -> bool:
    """Whether the browser reached us over https (directly or through a TLS-terminating proxy)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


@router.get(LOGIN_PATH)
async def login_page(request: Request) -> Response:
    """The sign-in form; with auth off there is nothing to sign in to, so straight to ``next``."""
    root = request.scope.get("root_path", "")
    next_path = safe_next(request.query_params.get("next"), root)
    settings = _settings(request)
    if settings is None or not settings.auth_on:
        return RedirectResponse(next_path, status_code=303)
    return _page(request, next_path)


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    """Check the form's token; set the session cookie and go to ``next``, or show the form again (401)."""
    root = request.scope.get("root_path", "")
    raw = await request.body()
    try:
        form = parse_qs(raw[:_MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than the form has: not our form, so no token in it
        form = {}
    next_path = safe_next((form.get("next") or [request.query_params.get("next", "")])[0], root)
    settings = _settings(request)
    if settings is None or not settings.auth_on:
        return RedirectResponse(next_path, status_code=303)
    client = request.client.host if request.client else "unknown"
    throttle = _throttle(request)
    wait = throttle.retry_after(client, time.monotonic())
    if wait is not None:  # the token is not even looked at
        _log.warning("login throttled for %s: %d s", client, wait)
        error = f"Too many failed sign-ins: try again in {wait} s."
        page = _page(request, next_path, error=error, status=429)
        page.headers["Retry-After"] = str(wait)
        return page
    principal = settings.principal_of_token((form.get("token") or [""])[0])
    if principal is None:
        throttle.failed(client, time.monotonic())
        _log.warning("login refused from %s: wrong token", client)
        await asyncio.sleep(_FAILED_LOGIN_DELAY_S)
        return _page(request, next_path, error="Wrong token.", status=401)
    _log.info("login: a %s session from %s", principal.name, client)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        settings.session_cookie(principal),
        max_age=SESSION_TTL_S,
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Clear the session cookie and go back to the form."""
    response = RedirectResponse(request.scope.get("root_path", "") + LOGIN_PATH, status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict"
    )
    return response
