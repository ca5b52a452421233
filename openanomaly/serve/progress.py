"""What ``serve run serve_config.yaml`` shows while the app starts: a few ``openanomaly: …`` lines.

Start-up takes from seconds to minutes (a cluster, a replica per deployment, a model to
load in each), and Ray's own lines say little about what it waits for. Each piece prints
where it runs, to its process's stderr, which Ray forwards to the console of ``serve
run`` (its workers belong to that driver's job), prefixed with the process's name:

- the builder (``build_app``, in Serve's build task): which deployments and models;
- each forecaster replica: loading its model, then ready in N s (or why not);
- the ingress: the scheduler and its pipelines, and once Serve reports the whole app
  running and ``/healthz`` answers, the URL.

Plain ``print`` rather than a logger: Ray's workers configure no handler for this
package's loggers, so their INFO records would reach no console. Nothing here runs per
request.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import httpx

__all__ = ["PREFIX", "announce_ready", "app_summary", "say", "scheduler_summary", "wait_until_ready"]

PREFIX = "openanomaly: "


def say(message: str) -> None:
    """One progress line on stderr, flushed so Ray forwards it now."""
    print(PREFIX + message, file=sys.stderr, flush=True)


def app_summary(models: Mapping[str, str], *, pipelines: str | None, playground: bool) -> list[str]:
    """The builder's lines: what will start, and what start-up then waits for.

    Args:
        models: model name → spec, one forecaster deployment each.
        pipelines: the scheduler's pipelines file, if the app starts one.
    """
    listed = ", ".join(f"{name} ({spec})" for name, spec in models.items())
    extras = [what for what, on in (("the playground", playground), ("the scheduler", pipelines)) if on]
    ingress = "an ingress" + (f" with {' and '.join(extras)}" if extras else "")
    return [
        f"building the app: {len(models)} forecaster deployments, {listed}; {ingress}",
        "next: Serve starts a replica per deployment and each loads its model "
        "(a Chronos one reads its weights: seconds, a minute or more on a busy machine); "
        "the app answers once they are all up",
    ]


def scheduler_summary(path: str, status: Mapping[str, Any]) -> str:
    """The ingress's line once the scheduler runs: its pipelines and when they first score."""
    if status.get("config_error"):
        return f"scheduler running, but {path} does not load: {status['config_error']}"
    pipelines: Sequence[Mapping[str, Any]] = status.get("pipelines", [])
    if not pipelines:
        return (
            f"scheduler running on {path}: no pipelines yet (add them to that file, "
            "with PUT /v1/pipelines/{name} or in the playground's Pipelines tab)"
        )
    names = ", ".join(p["name"] for p in pipelines)
    disabled = sum(p.get("state") == "disabled" for p in pipelines)
    off = f", {disabled} disabled (GET /v1/pipelines says why)" if disabled else ""
    return (
        f"scheduler running on {path}: {len(pipelines)} pipelines ({names}){off}; each scores "
        "its due windows from the scheduler's first tick, seconds from now (a pipeline's first "
        "window also starts its model)"
    )


def announce_ready(*, playground: bool, after: threading.Thread | None) -> None:
    """Say "ready: URL" from a daemon thread once the app runs (:func:`wait_until_ready`)."""
    announce = functools.partial(wait_until_ready, playground=playground, after=after)
    threading.Thread(target=announce, name="announce-ready", daemon=True).start()


def wait_until_ready(*, playground: bool, after: threading.Thread | None = None, poll_s: float = 2.0) -> None:
    """Wait (in a thread of the ingress) until Serve reports this app running, then say where.

    ``RUNNING`` means every replica of every deployment started, models loaded. The URL
    is then checked through this node's Serve proxy (``/healthz``); where that proxy is
    not reachable from here, the line says Serve's listen address instead. Never raises:
    a replica stopped meanwhile (Ctrl-C, a redeploy) just ends the wait, without a traceback.

    Args:
        after: a thread whose lines usually come first (the scheduler's start), waited for
            briefly so that "ready" is the last line.
    """
    try:
        app = _wait_for_app(poll_s)
    except Exception:  # the cluster is going away: nothing left to announce
        return
    if after is not None:
        after.join(timeout=10)  # a scheduler stuck waiting for a CPU must not hide that the API is up
    if app.status != "RUNNING":
        say(f"the app did not start ({app.status}): {_first_line(app.message)}")
        return
    root = f"{app.url}{(app.route_prefix or '/').rstrip('/')}"
    pages = f"API docs at {root}/docs" + (f", playground at {root}/playground/" if playground else "")
    where = f"{root}/ ({pages})"
    if _answers(f"{root}/healthz"):
        say(f"ready: {where}")
    else:
        say(f"ready: Serve reports the app running; it listens on {where}")


class _App(NamedTuple):
    status: str
    message: str
    route_prefix: str | None
    url: str  # scheme://host:port of Serve's HTTP proxy, as reachable from this node


def _wait_for_app(poll_s: float) -> _App:
    """This replica's application once it is RUNNING or has failed, from the Serve controller."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    name = serve.get_replica_context().app_name
    while True:
        details = ServeInstanceDetails(**_get_global_client().get_serve_details())
        app = details.applications.get(name)
        if app is None or app.status == "DELETING":  # stopped meanwhile: nothing to announce
            raise LookupError(f"application {name!r} is going away")
        if app.status in ("RUNNING", "DEPLOY_FAILED"):
            http = details.http_options
            host = "127.0.0.1" if http is None or http.host in ("0.0.0.0", "::") else http.host
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{http.port if http is not None else 8000}"
            return _App(str(app.status.value), app.message, app.route_prefix, url)
        time.sleep(poll_s)


def _answers(url: str, *, attempts: int = 10) -> bool:
    """Whether ``url`` answers 200 within a few seconds (the proxy may lag the app's status)."""
    for _ in range(attempts):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        time.sleep(1)
    return False


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no message)"])[0][:300]
