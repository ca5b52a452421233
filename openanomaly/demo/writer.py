"""Demo data for the compose stack: a few realistic series with incidents, written to a TSDB.

``docker compose up`` needs metrics that look like production ones and misbehave soon
enough to show a detection within minutes. This module writes four series (two
request rates with a daily cycle, a p99 latency, a CPU utilisation) through remote
write: first ``history`` of clean backfill, so that ``default`` has its days of
context at once, then one point per ``step`` as time passes, with incidents injected
one every ``incidents_every`` (2 minutes) from the start (a traffic drop after 2
minutes, a latency spike after 4, a level shift after 6: all inside the 10 minutes
that ``openanomaly demo`` runs by default), repeated every 12 hours (a repeat pages when
it beats the day-long record: the traffic incidents every 12 hours, the latency spike
every 24; ``docs/monitoring.md``). The compose demo and ``openanomaly demo`` both run
this writer, so they plant the same incidents::

    python -m openanomaly.demo --url http://victoriametrics:8428

Values depend only on the timestamp and the start time, so a restarted writer
rewrites the same history (VictoriaMetrics with ``-dedup.minScrapeInterval`` keeps one
sample per timestamp).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from openanomaly.core.config import TSDBSettings, parse_duration
from openanomaly.core.series import SeriesMatrix
from openanomaly.io.tsdb import PrometheusClient

__all__ = [
    "INCIDENTS",
    "INCIDENTS_EVERY_MS",
    "LABELS",
    "Incident",
    "demo_series",
    "incident_starts",
    "main",
    "run",
]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
MINUTE_MS = 60_000
REPEAT_MS = 12 * 3_600_000
"""Incidents repeat with this period after the start."""

INCIDENTS_EVERY_MS = 2 * MINUTE_MS
"""The k-th incident (from 1) starts ``k`` times this after the start: 2, 4 and 6 minutes."""

LABELS: tuple[dict[str, str], ...] = (
    {"__name__": "demo_requests_per_second", "instance": "checkout"},
    {"__name__": "demo_requests_per_second", "instance": "search"},
    {"__name__": "demo_latency_p99_seconds", "instance": "checkout"},
    {"__name__": "demo_cpu_utilisation", "instance": "db-1"},
)
"""The demo series; every one has an ``instance`` label (the dashboard's default series label)."""

# Per series: base level, daily amplitude (fraction of the base), noise (fraction of the base).
_SHAPES = np.array([[200.0, 0.35, 0.02], [500.0, 0.30, 0.015], [0.25, 0.0, 0.03], [0.40, 0.15, 0.02]])


@dataclass(frozen=True)
class Incident:
    """Multiply series ``row`` by ``factor`` for ``minutes``; ``name`` is what the demo prints."""

    name: str
    row: int
    minutes: int
    factor: float


INCIDENTS = (
    Incident("checkout traffic drop", row=0, minutes=6, factor=0.35),
    Incident("checkout latency spike", row=2, minutes=3, factor=4.0),
    Incident("search traffic level shift", row=1, minutes=20, factor=1.6),
)
"""In the order they happen: the k-th (from 1) starts ``k * incidents_every`` after the start."""


def incident_starts(t0_ms: int, *, every_ms: int = INCIDENTS_EVERY_MS) -> list[int]:
    """When each of :data:`INCIDENTS` first starts (unix ms), for a demo started at ``t0_ms``."""
    return [t0_ms + k * every_ms for k in range(1, len(INCIDENTS) + 1)]


def demo_series(
    start_ms: int, end_ms: int, *, step_ms: int, t0_ms: int, every_ms: int = INCIDENTS_EVERY_MS
) -> SeriesMatrix:
    """The demo series on the grid ``start_ms, start_ms + step_ms, ... <= end_ms``.

    Args:
        t0_ms: when the demo started: incidents happen at offsets from it (none before).
        every_ms: the spacing of the incidents (:func:`incident_starts`).

    Returns:
        A :class:`SeriesMatrix` with :data:`LABELS` and float64 values ``(4, n_points)``.
    """
    stamps = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
    day = 2 * np.pi * (stamps % DAY_MS) / DAY_MS
    base, amplitude, noise = (_SHAPES[:, i : i + 1] for i in range(3))
    # Noise seeded by the timestamp: the same point always gets the same value.
    jitter = np.stack(
        [np.random.default_rng([int(t) // step_ms, 7]).standard_normal(len(LABELS)) for t in stamps], axis=1
    )
    values = base * (1 + amplitude * np.sin(day - 2.0) + noise * jitter)
    for incident, begin in zip(INCIDENTS, incident_starts(t0_ms, every_ms=every_ms), strict=True):
        since = stamps - begin
        active = (since >= 0) & (since % REPEAT_MS < incident.minutes * MINUTE_MS)
        values[incident.row, active] *= incident.factor
    return SeriesMatrix(LABELS, stamps, values)


def run(
    settings: TSDBSettings,
    *,
    history_ms: int,
    step_ms: int,
    now_ms: int | None = None,
    iterations: int | None = None,
    every_ms: int = INCIDENTS_EVERY_MS,
) -> int:
    """Backfill ``history_ms`` before now, then write each new point as its time comes.

    Args:
        now_ms: the start time (default: the clock); incidents are placed after it.
        every_ms: the spacing of the incidents (:func:`incident_starts`).
        iterations: stop after this many live steps (``None``: run until interrupted).

    Returns:
        Samples written.

    Raises:
        RemoteWriteError: the TSDB rejected a write or stayed unreachable.
    """
    t0 = (now_ms if now_ms is not None else int(time.time() * 1000)) // step_ms * step_ms
    written = 0
    with PrometheusClient(settings) as client:
        # The backfill in day-long pieces keeps each remote-write request small.
        for lo in range(t0 - history_ms, t0 + 1, DAY_MS):
            written += client.remote_write(
                demo_series(lo, min(lo + DAY_MS - step_ms, t0), step_ms=step_ms, t0_ms=t0, every_ms=every_ms)
            )
        # ``openanomaly demo`` waits for this line before it starts the scheduler.
        print(f"backfilled {written} samples up to {t0}", flush=True)
        last, done = t0, 0
        while iterations is None or done < iterations:
            time.sleep(max(0.0, (last + step_ms) / 1000 - time.time()))
            now = max(int(time.time() * 1000) // step_ms * step_ms, last + step_ms)
            live = demo_series(last + step_ms, now, step_ms=step_ms, t0_ms=t0, every_ms=every_ms)
            written += client.remote_write(live)
            last, done = now, done + 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m openanomaly.demo --url URL [--history 3d] [--step 1m] [--incidents-every 2m]``."""
    parser = argparse.ArgumentParser(prog="python -m openanomaly.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Prometheus-compatible TSDB with remote write")
    parser.add_argument("--history", default="3d", help="clean history to backfill first (default 3d)")
    parser.add_argument("--step", default="1m", help="sample interval (default 1m)")
    parser.add_argument(
        "--incidents-every",
        default="2m",
        help="spacing of the planted incidents (default 2m: at 2, 4, 6 min)",
    )
    parser.add_argument("--t0", type=int, help="start time in unix ms (default now): incidents count from it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    history_ms = int(parse_duration(args.history).total_seconds() * 1000)
    step_ms = int(parse_duration(args.step).total_seconds() * 1000)
    every_ms = int(parse_duration(args.incidents_every).total_seconds() * 1000)
    run(TSDBSettings(url=args.url), history_ms=history_ms, step_ms=step_ms, now_ms=args.t0, every_ms=every_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
