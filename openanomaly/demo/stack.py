"""``openanomaly demo``: the compose demo's stack as plain processes on loopback, no containers.

Why: the compose demo (``docker-compose.yml``) needs Docker, which many machines lack,
and the main job (scheduled detection on a TSDB, scores written back, an alert firing)
should be visible to anyone who has the Debian packages ``victoria-metrics`` (which
ships ``victoria-metrics`` and ``vmalert``). The stack is the compose demo's, from the
same definitions, so running one checks the other's logic:

* VictoriaMetrics (a child, unless ``--tsdb`` names a running one);
* the demo-data writer ``python -m openanomaly.demo`` (a child: :mod:`openanomaly.demo.writer`
  holds the series and the incident schedule);
* the scheduler actor on a local Ray, watched from the foreground, on the pipelines of
  ``examples/compose-pipelines.yaml`` with a file artifact store in the temporary folder
  instead of MinIO;
* vmalert (a child) with ``monitoring/alerts.yml``, writing ``ALERTS`` back to the TSDB;
* with ``--serve``, the Serve app of ``examples/compose-serve.yaml`` on 127.0.0.1.

It prints each window scored and each alert firing or resolving as they happen, and
at the end which planted incident got an alert and how long after it started. Every
child is stopped and the temporary folder removed on the way out, Ctrl-C and SIGTERM
included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from openanomaly.core.times import format_iso
from openanomaly.demo.writer import (
    INCIDENTS,
    INCIDENTS_EVERY_MS,
    LABELS,
    MINUTE_MS,
    Incident,
    incident_starts,
)
from openanomaly.errors import OpenAnomalyError, UsageError

__all__ = [
    "ALERT_RULES",
    "ANOMALY_ALERT",
    "PIPELINES",
    "TOOLS",
    "AlertEvent",
    "AlertWatcher",
    "IncidentOutcome",
    "demo_pipelines",
    "find_tool",
    "match_alerts",
    "run_demo",
]

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]
PIPELINES = _ROOT / "examples" / "compose-pipelines.yaml"
"""The compose demo's pipelines: ``openanomaly demo`` scores the same ones."""
SERVE_CONFIG = _ROOT / "examples" / "compose-serve.yaml"
"""The compose demo's Serve app (its ``args``), for ``--serve``."""
ALERT_RULES = _ROOT / "monitoring" / "alerts.yml"
"""The alert rules vmalert evaluates, in compose and here."""

TOOLS = {"victoria-metrics": "victoria-metrics", "vmalert": "victoria-metrics"}
"""Each program the demo starts, and the Debian package that ships it."""

ANOMALY_ALERT = "OpenAnomalyAnomaly"
"""The rule of ``monitoring/alerts.yml`` that pages on ``anomaly_score > 1``."""
ALERT_LOOKBACK_MS = 10 * MINUTE_MS
"""The anomaly rule looks at the last 10 minutes of scores (``max_over_time(...[10m])``): an
alert that becomes active up to this long after an incident ended is still that incident's."""
EVALUATION_INTERVAL = "15s"
"""vmalert's ``-evaluationInterval``, as in docker-compose.yml."""
HISTORY = "3d"
"""Clean history written first: the pipelines' 2-day context, whose second day is the
calibration's residual record (``min_history`` 1 day), is there from the first window."""
STEP = "1m"
_POLL_S = 2.0
_START_TIMEOUT_S = 60.0
_BACKFILL_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 10.0
_OWN_TSDB_DELAY_MS = 5_000
"""Scheduler delay with the demo's own VictoriaMetrics (``-search.latencyOffset=0s``): the
writer's point for a minute lands a moment after the minute; 5 s covers that."""
_OTHER_TSDB_DELAY_MS = 35_000
"""With ``--tsdb``: VictoriaMetrics hides the newest 30 s by default (``-search.latencyOffset``)."""


def find_tool(name: str) -> str:
    """The path of program ``name`` on ``PATH``.

    Raises:
        UsageError: it is not installed; the message names the Debian package.
    """
    found = shutil.which(name)
    if found is None:
        package = TOOLS[name]
        raise UsageError(
            f"{name} not found on PATH: it comes from the Debian package {package} "
            f"(sudo apt-get install {package})"
        )
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Child:
    """One child process with its output in a log file; ``stop`` is SIGTERM, then SIGKILL."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as out:
            # A session of its own: the terminal's Ctrl-C reaches the demo only, which stops
            # the children in order (the scheduler first, then what it reads from).
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check(self) -> None:
        """Raise if the child has exited: the demo cannot go on without it."""
        code = self.process.poll()
        if code is not None:
            raise OpenAnomalyError(f"{self.name} exited with code {code}; its log: {self.tail()}")

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(_STOP_TIMEOUT_S)


def _wait_ready(child: _Child, url: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        child.check()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise OpenAnomalyError(f"{child.name} not ready at {url} after {_START_TIMEOUT_S:g}s: {child.tail()}")


def _wait_backfill(child: _Child) -> None:
    """Wait for the writer's ``backfilled`` line: the scheduler's first window needs the history."""
    deadline = time.monotonic() + _BACKFILL_TIMEOUT_S
    while time.monotonic() < deadline:
        child.check()
        if "backfilled" in child.log_path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise OpenAnomalyError(f"the demo writer did not finish its backfill: {child.tail()}")


def demo_pipelines(tsdb_url: str, artifacts_dir: Path) -> dict[str, Any]:
    """The compose demo's pipelines file, pointed at ``tsdb_url`` with a file artifact store.

    Only ``settings`` changes: the pipelines are the compose demo's as written.
    """
    config = yaml.safe_load(PIPELINES.read_text())
    config["settings"]["tsdb"] = {"url": tsdb_url}
    config["settings"]["artifacts"] = {"kind": "file", "path": str(artifacts_dir)}
    return config


@dataclass(frozen=True)
class AlertEvent:
    """One alert vmalert reported active: its labels and when it became active (unix ms)."""

    labels: dict[str, str]
    active_ms: int
    value: float = float("nan")

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "?")

    def describe(self) -> str:
        """``OpenAnomalyAnomaly demo-default demo_latency_p99_seconds{instance="checkout"}``."""
        pipeline = self.labels.get("for") or self.labels.get("pipeline", "")
        series = self.labels.get("metric", "")
        if "instance" in self.labels:
            series += f'{{instance="{self.labels["instance"]}"}}'
        return " ".join(part for part in (self.name, pipeline, series) if part)


_RFC3339 = re.compile(r"^(?P<base>[^.]+?)(?P<fraction>\.\d+)?(?P<zone>Z|[+-]\d\d:\d\d)$")


def _parse_active(text: str) -> int:
    """vmalert's ``activeAt`` (RFC 3339 with up to nanoseconds, in vmalert's time zone) in unix ms.

    Python's ``fromisoformat`` takes at most microseconds, so the fraction is added apart.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"vmalert activeAt {text!r} is not RFC 3339")
    zone = match["zone"].replace("Z", "+00:00")
    seconds = datetime.fromisoformat(match["base"] + zone).timestamp() + float(match["fraction"] or 0)
    return round(seconds * 1000)


class AlertWatcher:
    """Polls vmalert's ``/api/v1/alerts``; reports alerts that start firing and that resolve.

    Args:
        url: vmalert's HTTP address.
        client: the HTTP client (tests pass one on an ``httpx.MockTransport``).
    """

    def __init__(self, url: str, *, client: httpx.Client | None = None) -> None:
        self.url = url
        self.client = client or httpx.Client(timeout=5)
        self.firing: dict[frozenset[tuple[str, str]], AlertEvent] = {}
        self.fired: list[AlertEvent] = []

    def poll(self) -> list[tuple[str, AlertEvent]]:
        """``("firing" | "resolved", event)`` for each change since the last poll."""
        try:
            reply = self.client.get(f"{self.url}/api/v1/alerts")
            reply.raise_for_status()
            alerts = reply.json()["data"]["alerts"] or []  # vmalert 1.79: null when none
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            # One missed poll only delays a report: the next one sees the same alerts.
            log.warning("vmalert did not answer: %s", error)
            return []
        now: dict[frozenset[tuple[str, str]], AlertEvent] = {}
        for alert in alerts:
            if alert.get("state") != "firing":
                continue
            labels = dict(alert.get("labels") or {})
            try:
                value = float(alert.get("value", "nan"))
            except (TypeError, ValueError):
                value = float("nan")
            event = AlertEvent(labels, _parse_active(alert["activeAt"]), value)
            now[frozenset(labels.items())] = event
        changes = [("firing", event) for key, event in now.items() if key not in self.firing]
        changes += [("resolved", event) for key, event in self.firing.items() if key not in now]
        self.fired += [event for kind, event in changes if kind == "firing"]
        self.firing = now
        return changes


@dataclass
class IncidentOutcome:
    """One planted incident and the anomaly alerts attributed to it."""

    incident: Incident
    start_ms: int
    alerts: list[AlertEvent] = field(default_factory=list)

    @property
    def first_ms(self) -> int | None:
        """Milliseconds from the incident's start to its first alert; None if none fired."""
        return min(a.active_ms for a in self.alerts) - self.start_ms if self.alerts else None


def match_alerts(
    fired: list[AlertEvent], *, t0_ms: int, every_ms: int = INCIDENTS_EVERY_MS
) -> tuple[list[IncidentOutcome], list[AlertEvent]]:
    """Attribute each fired alert to the planted incident it is about, if any.

    An anomaly alert is an incident's when its series (the ``metric`` and ``instance``
    labels) is the incident's and it became active between the incident's start and
    :data:`ALERT_LOOKBACK_MS` after its end. Every other alert (another series, another
    time, another rule) fired outside the incidents.

    Returns:
        The outcome of every incident, in schedule order, and the alerts outside them.
    """
    outcomes = [
        IncidentOutcome(incident, start)
        for incident, start in zip(INCIDENTS, incident_starts(t0_ms, every_ms=every_ms), strict=True)
    ]
    outside = []
    for event in fired:
        for outcome in outcomes:
            series = LABELS[outcome.incident.row]
            end = outcome.start_ms + outcome.incident.minutes * MINUTE_MS + ALERT_LOOKBACK_MS
            if (
                event.name == ANOMALY_ALERT
                and event.labels.get("metric") == series["__name__"]
                and event.labels.get("instance") == series["instance"]
                and outcome.start_ms <= event.active_ms <= end
            ):
                outcome.alerts.append(event)
                break
        else:
            outside.append(event)
    return outcomes, outside


@dataclass
class _WindowTally:
    """Windows each pipeline completed, and those with a series left unscored."""

    seen: dict[str, int] = field(default_factory=dict)
    partial: dict[str, int] = field(default_factory=dict)

    def add(self, status: dict[str, Any]) -> None:
        for record in status["pipelines"]:
            name, total = record["name"], record["windows_total"]
            if total != self.seen.get(name, 0):
                self.seen[name] = total
                if record["series_scored"] < record["series_in"]:
                    self.partial[name] = self.partial.get(name, 0) + 1


def _print_summary(
    outcomes: list[IncidentOutcome], outside: list[AlertEvent], tally: _WindowTally, errors: dict[str, int]
) -> None:
    print("\nsummary", flush=True)
    for name, windows in sorted(tally.seen.items()):
        partial = tally.partial.get(name, 0)
        failed = errors.get(name, 0)
        print(f"  {name}: {windows} windows scored, {partial} with a series unscored, {failed} failed runs")
    print(f"  incidents planted: {len(outcomes)}")
    for outcome in outcomes:
        begin = format_iso(outcome.start_ms)
        if outcome.first_ms is None:
            print(f"    {outcome.incident.name} at {begin}: NO ALERT")
            continue
        pipelines = sorted({a.labels.get("for", "?") for a in outcome.alerts})
        print(
            f"    {outcome.incident.name} at {begin}: alert after {outcome.first_ms / 1000:.0f}s "
            f"({', '.join(pipelines)})"
        )
    print(f"  alerts outside an incident: {len(outside)}")
    for event in outside:
        print(f"    {event.describe()} at {format_iso(event.active_ms)}")
    print(flush=True)


def _interrupt_on_sigterm() -> Any:
    """SIGTERM stops the demo as Ctrl-C does (``KeyboardInterrupt``), so the cleanup runs.

    Called again once Ray is up: ``ray.init`` installs a SIGTERM handler of its own.
    Returns the handler it replaced.
    """
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _start_serve(config_path: Path) -> str:
    """The compose demo's Serve app on a free loopback port, on this demo's pipelines; its URL."""
    from ray import serve

    from openanomaly.serve.app import build_app

    args = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]
    args["scheduler"] = {"pipelines": str(config_path)}
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="openanomaly", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def run_demo(
    *,
    duration_s: float,
    tsdb_url: str | None = None,
    serve: bool = False,
    every_ms: int = INCIDENTS_EVERY_MS,
    report: Callable[[dict[str, Any], dict[str, Any]], None],
) -> int:
    """Run the stack for ``duration_s`` after the demo data starts; returns the exit status.

    Args:
        tsdb_url: a running VictoriaMetrics to use instead of starting one.
        every_ms: spacing of the planted incidents (tests use a shorter one).
        report: prints the scheduler's progress, ``(status, seen)`` as ``openanomaly
            scheduler`` does (:func:`openanomaly.cli._print_progress`).

    Returns:
        0 when every planted incident fired an alert, 1 otherwise, 130 when interrupted.

    Raises:
        UsageError: a program is missing (before anything starts).
        OpenAnomalyError: a child died or did not come up.
    """
    binaries = {"vmalert": find_tool("vmalert")}
    if tsdb_url is None:
        binaries["victoria-metrics"] = find_tool("victoria-metrics")
    for path in (PIPELINES, ALERT_RULES):
        if not path.exists():
            raise UsageError(f"{path} is missing: `openanomaly demo` runs from a source checkout")
    folder = Path(tempfile.mkdtemp(prefix="openanomaly-demo-"))
    children: list[_Child] = []
    interrupted = False
    previous = _interrupt_on_sigterm()
    try:
        return _run(folder, children, binaries, duration_s, tsdb_url, serve, every_ms, report)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the demo", file=sys.stderr, flush=True)
        return 130
    finally:
        _stop_all(children)
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        if interrupted:
            print(f"stopped every child and removed {folder}", file=sys.stderr, flush=True)


def _stop_all(children: list[_Child]) -> None:
    import ray

    # The scheduler first (it reads and writes the TSDB), then the children, newest first.
    ray.shutdown()
    for child in reversed(children):
        child.stop()


def _run(
    folder: Path,
    children: list[_Child],
    binaries: dict[str, str],
    duration_s: float,
    tsdb_url: str | None,
    serve: bool,
    every_ms: int,
    report: Callable[[dict[str, Any], dict[str, Any]], None],
) -> int:
    # Set before Ray is imported: it reads them then. The cluster is this process's own,
    # so its workers run this interpreter as it is, not a `uv run` environment of their
    # own (Ray's default under `uv run`: rebuilt from a copy of the working directory
    # without the project's .venv, where `import ray` fails).
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from openanomaly.runtime.raystart import start_ray
    from openanomaly.runtime.scheduler_actor import DEFAULT_NAMESPACE, start_scheduler

    delay_ms = _OTHER_TSDB_DELAY_MS
    if tsdb_url is None:
        port = _free_port()
        tsdb_url = f"http://127.0.0.1:{port}"
        vm = _Child(
            "victoria-metrics",
            [
                binaries["victoria-metrics"],
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={folder / 'victoria-metrics'}",
                # A retried remote write that had landed must not store its samples twice.
                "-dedup.minScrapeInterval=1ms",
                # The newest point is scored seconds after its minute: let queries see it.
                "-search.latencyOffset=0s",
            ],
            folder / "victoria-metrics.log",
        )
        children.append(vm)
        _wait_ready(vm, f"{tsdb_url}/health")
        delay_ms = _OWN_TSDB_DELAY_MS
    print(f"VictoriaMetrics: {tsdb_url}", flush=True)

    # vmalert refuses alerting rules without a notifier, and Debian's (1.79) has no
    # -notifier.blackhole (compose's flag): an empty notifier list, so notifications go
    # nowhere, as in compose; the alert state is on vmalert's API and in ALERTS.
    notifiers = folder / "notifiers.yml"
    notifiers.write_text("static_configs:\n  - targets: []\n")
    alert_port = _free_port()
    alert_url = f"http://127.0.0.1:{alert_port}"
    vmalert = _Child(
        "vmalert",
        [
            binaries["vmalert"],
            f"-httpListenAddr=127.0.0.1:{alert_port}",
            f"-datasource.url={tsdb_url}",
            f"-remoteWrite.url={tsdb_url}",
            f"-remoteRead.url={tsdb_url}",
            f"-rule={ALERT_RULES}",
            f"-evaluationInterval={EVALUATION_INTERVAL}",
            f"-notifier.config={notifiers}",
        ],
        folder / "vmalert.log",
    )
    children.append(vmalert)
    _wait_ready(vmalert, f"{alert_url}/health")
    print(f"vmalert: {alert_url} (rules {ALERT_RULES.relative_to(_ROOT)})", flush=True)

    config_path = folder / "pipelines.yaml"
    config_path.write_text(yaml.safe_dump(demo_pipelines(tsdb_url, folder / "artifacts"), sort_keys=False))
    # Ray's logical CPUs, as in docker-compose.yml: room for both pipelines' model actors.
    start_ray(
        "local",
        namespace=DEFAULT_NAMESPACE,
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    _interrupt_on_sigterm()

    step_ms = MINUTE_MS
    t0_ms = int(time.time() * 1000) // step_ms * step_ms
    writer = _Child(
        "the demo writer",
        [
            sys.executable,
            "-m",
            "openanomaly.demo.writer",
            f"--url={tsdb_url}",
            f"--history={HISTORY}",
            f"--step={STEP}",
            f"--incidents-every={every_ms // 1000}s",
            f"--t0={t0_ms}",
        ],
        folder / "demo-writer.log",
    )
    children.append(writer)
    _wait_backfill(writer)
    starts = incident_starts(t0_ms, every_ms=every_ms)
    print(
        f"demo data: {HISTORY} of history, then live points from {format_iso(t0_ms)}; incidents:", flush=True
    )
    for incident, start in zip(INCIDENTS, starts, strict=True):
        print(f"  {format_iso(start)} {incident.name} ({incident.minutes} min)", flush=True)

    handle = start_scheduler(str(config_path), tick_s=_POLL_S, delay=delay_ms)
    print(f"scheduler: pipelines of {PIPELINES.relative_to(_ROOT)}, artifacts in {folder / 'artifacts'}")
    if serve:
        url = _start_serve(config_path)
        print(f"playground: {url}/playground/  (API: {url}/v1/pipelines)", flush=True)
    end_s = t0_ms / 1000 + duration_s
    print(f"running until {format_iso(round(end_s * 1000))}; Ctrl-C or SIGTERM stops", flush=True)

    watcher = AlertWatcher(alert_url)
    tally = _WindowTally()
    seen: dict[str, Any] = {}
    status: dict[str, Any] = {"pipelines": []}
    while time.time() < end_s:
        for child in children:
            child.check()
        status = ray.get(handle.status.remote())
        report(status, seen)
        tally.add(status)
        for kind, event in watcher.poll():
            when = format_iso(event.active_ms if kind == "firing" else int(time.time() * 1000))
            value = f"value {event.value:.3g}, " if kind == "firing" else ""
            print(f"alert {kind}: {event.describe()} ({value}since {when})", flush=True)
        time.sleep(_POLL_S)
    errors = {record["name"]: record["errors_total"] for record in status["pipelines"]}
    outcomes, outside = match_alerts(watcher.fired, t0_ms=t0_ms, every_ms=every_ms)
    _print_summary(outcomes, outside, tally, errors)
    return 0 if all(outcome.alerts for outcome in outcomes) else 1
