"""End-to-end Ray Data job throughput: 10,000 series x 1 day at 1-minute step in VictoriaMetrics.

Starts a throw-away VictoriaMetrics (the ``victoria-metrics`` binary) on a free loopback
port, loads the data through remote write, starts a local Ray cluster (``--cpus``,
default 2) and times one full pipeline run (list → fetch → forecast/score → remote
write) of one 10-minute window with 1 h of context, per model and per actor-pool size.

    uv run python benchmarks/job_throughput.py                 # full size
    uv run python benchmarks/job_throughput.py --series 1000   # quick

Writes ``benchmarks/results/job_throughput.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

MIN = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vm(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data_dir}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-dedup.minScrapeInterval=1ms",
            "-search.maxUniqueTimeseries=1000000",
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


def load(url: str, *, series: int, end_ms: int) -> float:
    from openanomaly.config import TSDBSettings
    from openanomaly.series import SeriesMatrix
    from openanomaly.tsdb import PrometheusClient

    t = np.arange(end_ms - 1440 * MIN, end_ms + 1, MIN, dtype=np.int64)
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    with PrometheusClient(TSDBSettings(url=url, timeout=120)) as client:
        for first in range(0, series, 1000):
            n = min(1000, series - first)
            phase = rng.uniform(0, 2 * np.pi, (n, 1))
            daily = np.sin(2 * np.pi * np.arange(len(t)) / 1440 + phase)
            values = 50 + 10 * daily + rng.normal(0, 1, (n, len(t)))
            labels = tuple(
                {"__name__": "bench_metric", "instance": f"host-{first + i:05d}", "job": "bench"}
                for i in range(n)
            )
            client.remote_write(SeriesMatrix(labels, t, values))
    httpx.get(url + "/internal/force_flush", timeout=60)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--models", default="mad,statsforecast:SeasonalNaive,chronos2-tiny")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "job_throughput.json"))
    args = parser.parse_args()

    import ray

    from openanomaly.config import Pipeline, Settings
    from openanomaly.jobs import JobOptions, run_job

    end_ms = (int(time.time() * 1000) // (60 * MIN) - 1) * 60 * MIN
    with tempfile.TemporaryDirectory() as tmp:
        vm, url = start_vm(Path(tmp) / "vm")
        try:
            load_s = load(url, series=args.series, end_ms=end_ms)
            print(f"loaded {args.series} series x 1441 points in {load_s:.1f} s", flush=True)
            for attempt in range(3):  # a loaded machine can time Ray's start-up out
                try:
                    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
                    break
                except Exception:
                    if attempt == 2:
                        raise
                    ray.shutdown()
            settings = Settings(tsdb={"url": url, "timeout": 120})
            specs = {}
            for name in args.models.split(","):
                if name == "chronos2-tiny":
                    from openanomaly.models.tiny import build_tiny_chronos

                    specs[name] = {"spec": f"chronos:{build_tiny_chronos('chronos2', Path(tmp) / 'c2')}"}
                else:
                    seasonal = "Seasonal" in name
                    specs[name] = {"spec": name, "params": {"season_length": 30}} if seasonal else name
            runs = []
            window = 0
            for model_name, model in specs.items():
                for workers in [int(w) for w in args.workers.split(",")]:
                    window += 1
                    pipeline = Pipeline(
                        name=f"bench-{window}",
                        query='bench_metric{job="bench"}',
                        model=model,
                        schedule={"infer_every": "10m", "context": "1h"},
                    )
                    options = JobOptions(
                        series_per_shard=max(1, args.series // 8),
                        batch_size=1250,
                        min_workers=workers,
                        max_workers=workers,
                        worker_num_cpus=args.cpus / workers * 0.8,
                        fetch_num_cpus=0.1,
                    )
                    start = end_ms - 10 * MIN * window
                    began = time.perf_counter()
                    window_ms = {"start_ms": start - 10 * MIN, "end_ms": start}
                    result = run_job(settings, pipeline, **window_ms, options=options)
                    seconds = time.perf_counter() - began
                    row = {
                        "model": model_name,
                        "workers": workers,
                        "series": result.series_in,
                        "series_scored": result.series_scored,
                        "samples_written": result.samples_written,
                        "shards": result.shards,
                        "seconds": round(seconds, 2),
                        "series_per_s": round(result.series_in / seconds, 1),
                    }
                    print(row, flush=True)
                    runs.append(row)
                    _write(args, runs, load_s)
            _write(args, runs, load_s)
            print(Path(args.out).read_text())
        finally:
            vm.terminate()
            vm.wait(10)
            ray.shutdown()


def _write(args: argparse.Namespace, runs: list[dict], load_s: float) -> None:
    """Write the results so far (a failed later run keeps the earlier numbers)."""
    for model_name in {r["model"] for r in runs}:
        by_workers = {r["workers"]: r["seconds"] for r in runs if r["model"] == model_name}
        if 1 in by_workers and 2 in by_workers:
            for r in runs:
                if r["model"] == model_name and r["workers"] == 2:
                    r["scale_out_1_to_2"] = round(by_workers[1] / by_workers[2], 2)
    out = {
        "benchmark": "job_throughput",
        "series": args.series,
        "points_per_series_loaded": 1441,
        "window": "10m at 1m step, 1h context",
        "ray_cpus": args.cpus,
        "load_seconds": round(load_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "shared 2-core machine with other workloads running; numbers are noisy",
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
