"""Start (or join) Ray for the commands that need it: ``run`` and ``scheduler``.

On a busy small machine a local Ray now and then misses one of its own start-up
deadlines ("The current node timed out during startup": the raylet waited its fixed 30 s
for the GCS or the metrics agent), and a second start from scratch succeeds.
:func:`start_ray` gives the GCS more time to come up, retries a failed start after
cleaning up what it left, and after the last attempt raises :class:`RayUnavailable`:
one line that says what happened and what to try, which the CLI prints as ``error: …``
(exit 2) instead of Ray's traceback.

Knobs, from the environment (for machines slower or faster than the defaults):

``OPENANOMALY_RAY_START_TIMEOUT_S`` (default 120)
    how long a local start waits for the GCS; passed to Ray as
    ``RAY_gcs_server_port_wait_time_s`` (Ray's default: 30) unless that is set itself.
``OPENANOMALY_RAY_START_ATTEMPTS`` (default 3)
    starts tried before giving up.

Token auth: since Ray 2.59 a cluster that ``ray.init()`` starts turns token auth on
unless ``RAY_AUTH_MODE`` is set, and writes a token to ``~/.ray/auth_token``. A local
``run`` keeps Ray's default (its ports listen on the node's address, not only on
loopback) and says so on stderr, with the switch the serve quick start uses to turn it
off (``RAY_AUTH_MODE=disabled``); when ``RAY_AUTH_MODE`` is set, that choice is the user's
and nothing is said.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from openanomaly.errors import RayUnavailable

__all__ = [
    "ATTEMPTS_ENV",
    "TIMEOUT_ENV",
    "auth_notice",
    "start_ray",
]

log = logging.getLogger(__name__)

TIMEOUT_ENV = "OPENANOMALY_RAY_START_TIMEOUT_S"
"""Seconds a local start waits for Ray's GCS (whole seconds; Ray reads an int)."""

ATTEMPTS_ENV = "OPENANOMALY_RAY_START_ATTEMPTS"
"""How many times a start is tried before :class:`RayUnavailable`."""

_DEFAULT_TIMEOUT_S = 120
_DEFAULT_ATTEMPTS = 3
_PAUSE_S = 2.0  # between attempts: let the machine catch its breath
_RAY_GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
_AUTH_ENV = "RAY_AUTH_MODE"


def _int_env(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RayUnavailable(f"{name}={raw!r} is not a whole number", address="local", attempts=0) from None
    if value < minimum:
        raise RayUnavailable(f"{name}={raw!r}: must be {minimum} or more", address="local", attempts=0)
    return value


def auth_notice(*, user_set: bool, mode: str | None) -> str | None:
    """The line to print after a local start: token auth on by Ray's default, and how to turn it off.

    ``user_set``: ``RAY_AUTH_MODE`` was set before the start (then nothing is said);
    ``mode``: its value after the start (Ray sets ``token`` when it turned auth on).
    """
    if user_set or (mode or "").lower() != "token":
        return None
    return (
        "note: Ray token auth is on for this local Ray (Ray's default since 2.59; its token is "
        "in ~/.ray/auth_token, created if missing); RAY_AUTH_MODE=disabled turns it off, "
        "as in the serve quick start (docs/serve.md)"
    )


def start_ray(address: str, **init_kwargs: Any) -> None:
    """``ray.init(address=address, **init_kwargs)`` with a longer start-up wait and retries.

    ``address="local"`` starts a cluster of this process's own; anything else (``auto``,
    ``ray://…``, ``host:port``) joins a running one, where a retry covers a head that is
    itself still starting.

    Raises:
        RayUnavailable: every attempt failed; the message names the last error and the knobs.
    """
    import ray

    attempts = _int_env(ATTEMPTS_ENV, _DEFAULT_ATTEMPTS, minimum=1)
    timeout_s = _int_env(TIMEOUT_ENV, _DEFAULT_TIMEOUT_S, minimum=0)
    local = address == "local"
    if local:
        os.environ.setdefault(_RAY_GCS_WAIT_ENV, str(timeout_s))
    user_set_auth = _AUTH_ENV in os.environ
    last: BaseException | None = None
    for attempt in range(1, attempts + 1):
        before = _children()
        try:
            ray.init(address=address, **init_kwargs)
        except Exception as error:  # Ray raises bare Exception, RuntimeError, ConnectionError…
            last = error
            ray.shutdown()
            _stop_new_children(before)  # a start that failed half-way leaves its processes
            if attempt < attempts:
                log.warning(
                    "Ray did not start (attempt %d of %d: %s); retrying", attempt, attempts, _one_line(error)
                )
                time.sleep(_PAUSE_S)
            continue
        if local:
            notice = auth_notice(user_set=user_set_auth, mode=os.environ.get(_AUTH_ENV))
            if notice:
                print(notice, file=sys.stderr, flush=True)
        return
    assert last is not None
    if local:
        advice = (
            f"the machine may be too busy: try again, give it more time ({TIMEOUT_ENV}, now "
            f"{os.environ.get(_RAY_GCS_WAIT_ENV)} s) or more attempts ({ATTEMPTS_ENV}, now {attempts}), "
            "or start Ray once with `ray start --head` and pass --address auto"
        )
        what = "a local Ray did not start"
    else:
        advice = (
            f"check that a cluster runs there (`ray status --address {address}`) and that "
            f"RAY_AUTH_MODE/RAY_AUTH_TOKEN match its token auth; more attempts: {ATTEMPTS_ENV}"
        )
        what = f"Ray at {address!r} did not answer"
    raise RayUnavailable(
        f"{what} after {attempts} attempt(s) ({_one_line(last)}); {advice}",
        address=address,
        attempts=attempts,
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def _stop_new_children(before: set[int]) -> None:
    """Stop the processes (GCS, raylet, agents) that a failed ``ray.init`` started and left.

    Ray forgets a node whose start raised half-way, so ``ray.shutdown()`` cannot stop it;
    they are this process's own children, found by id.
    """
    import psutil

    left = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    for child in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(left, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
