"""What the job benchmarks share: a throw-away VictoriaMetrics, synthetic series, a local Ray.

Not a benchmark itself (the leading underscore keeps it out of the list in the README).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

MIN = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vm(data_dir: Path, *, dedup: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    """VictoriaMetrics as the docs recommend it (plus room for 1M series per query), on a free port.

    ``dedup=False`` leaves out ``-dedup.minScrapeInterval``, so a sample written twice is
    kept twice and can be counted.
    """
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data_dir}",
            *(["-dedup.minScrapeInterval=1ms"] if dedup else []),
            "-search.maxUniqueTimeseries=1000000",
            "-search.maxSeries=1000000",
            "-loggerLevel=WARN",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("victoria-metrics did not start")


def load(url: str, *, metric: str, series: int, start_ms: int, end_ms: int) -> float:
    """Write ``series`` daily-seasonal series at 1-minute step over ``[start, end]``; seconds taken."""
    from openanomaly.core.config import TSDBSettings
    from openanomaly.core.series import SeriesMatrix
    from openanomaly.io.tsdb import PrometheusClient

    t = np.arange(start_ms, end_ms + 1, MIN, dtype=np.int64)
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    with PrometheusClient(TSDBSettings(url=url, timeout=120)) as client:
        for first in range(0, series, 1000):
            n = min(1000, series - first)
            phase = rng.uniform(0, 2 * np.pi, (n, 1))
            daily = np.sin(2 * np.pi * np.arange(len(t)) / 1440 + phase)
            values = 50 + 10 * daily + rng.normal(0, 1, (n, len(t)))
            labels = tuple(
                {"__name__": metric, "instance": f"host-{first + i:05d}", "job": "bench"} for i in range(n)
            )
            client.remote_write(SeriesMatrix(labels, t, values))
    httpx.get(url + "/internal/force_flush", timeout=60)
    return time.perf_counter() - began


def start_ray(cpus: int) -> None:
    import ray

    for attempt in range(3):  # a loaded machine can time Ray's start-up out
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            return
        except Exception:
            if attempt == 2:
                raise
            ray.shutdown()


def machine() -> dict[str, object]:
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform()}
