"""Scale out: one window of 10k / 50k / 100k series on 1, 2 and 3 Ray nodes, vs one plain process.

Starts a throw-away VictoriaMetrics (no dedup flag, so a sample written twice stays
visible), loads the series, then in one run measures, each on a window of its own:

- ``reference``: one plain process, no Ray: the window path's fetch, score and idempotent
  write (the window claimed once, then shard by shard: the job's own shard plan), with
  the seconds of each stage.
- ``cells``: :func:`openanomaly.runtime.window_job.run_job` (the Ray Data window job, default
  ``JobOptions``) on a fresh multi-node cluster per node count (``benchmarks/_multinode.py``:
  a head with no CPUs plus N worker nodes with their own CPUs and object store), with the
  peak PSS and I/O bytes of every node and of the driver.
- ``fetch_decode``: at the sizes ``--decode`` lists, the plain process's fetch of one
  window twice, decoded as shipped (orjson, garbage collector paused) and as before
  (stdlib ``json`` with the collector running), in alternating order.
- ``warm``: :meth:`openanomaly.runtime.runner.JobRunner.run_window` on the warm model actor, at
  the sizes ``--warm`` lists, from a Ray actor as the scheduler actor runs it: a first
  window (it starts the model actor and keeps the contexts), then ``--warm-windows``
  consecutive windows, each reported, ``seconds`` their median.
- ``node_loss``: a window on the largest node count with one worker node removed while
  the job runs (``cluster.remove_node``); a window that fails is run again, as the
  scheduler's next tick would; then the output samples in the TSDB are counted.

The pipeline is what a user writes with the defaults: model ``default``, calibration on
with its defaults, step 5m, ``infer_every`` 5m and a 3-day context (the shortest at 5m
whose residual record holds the default ``min_history`` of one day).

    uv run python benchmarks/scale_out.py --series 1000 --nodes 1,2     # quick
    uv run python benchmarks/scale_out.py                               # 10k/50k/100k x 1/2/3

Writes ``benchmarks/results/scale_out.json`` after every measurement (a failure keeps
what was measured). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _cluster import machine, start_vm
from _multinode import GB, Meter, raylet_pid, start_cluster, stop_cluster
from _results import RESULTS, write_result

METRIC = "scale_metric"
STEP_MS = 300_000
WINDOWS = 40  # windows loaded after the context: one per measurement


def pipeline_for(name: str, series: int, group: int) -> Any:
    """The pipeline over the first ``series`` loaded series (``group`` series per ``group`` label)."""
    from openanomaly.core.config import Pipeline

    groups = -(-series // group)
    query = f'{METRIC}{{group=~"{"|".join(f"g{g:02d}" for g in range(groups))}"}}'
    return Pipeline.model_validate(
        {
            "name": name,
            "query": query,
            "step": "5m",
            "model": "default",
            "schedule": {"infer_every": "5m", "context": "3d"},
        }
    )


def shard_queries(client: Any, pipeline: Any, start: int, end: int) -> list[str]:
    """The window's shard queries, as the job plans them (default ``JobOptions``)."""
    from openanomaly.runtime.options import JobOptions
    from openanomaly.runtime.shards import plan_shards
    from openanomaly.runtime.window import fetch_start

    queries, _ = plan_shards(
        client,
        pipeline,
        start_ms=fetch_start(pipeline, start),
        end_ms=end,
        series_per_shard=JobOptions().series_per_shard,
    )
    return list(queries)


def load(url: str, *, series: int, group: int, start_ms: int, end_ms: int) -> float:
    """``series`` daily-seasonal series at 5-minute step over ``[start, end]`` (remote write)."""
    from openanomaly.core.config import TSDBSettings
    from openanomaly.core.series import SeriesMatrix
    from openanomaly.io.tsdb import PrometheusClient

    t = np.arange(start_ms, end_ms + 1, STEP_MS, dtype=np.int64)
    day = 86_400_000 // STEP_MS
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    with PrometheusClient(TSDBSettings(url=url, timeout=300)) as client:
        for first in range(0, series, 2000):
            n = min(2000, series - first)
            phase = rng.uniform(0, 2 * np.pi, (n, 1))
            values = (
                50 + 10 * np.sin(2 * np.pi * np.arange(len(t)) / day + phase) + rng.normal(0, 1, (n, len(t)))
            )
            labels = tuple(
                {
                    "__name__": METRIC,
                    "instance": f"host-{i:06d}",
                    "group": f"g{i // group:02d}",
                    "job": "bench",
                }
                for i in range(first, first + n)
            )
            client.remote_write(SeriesMatrix(labels, t, values))
    httpx.get(url + "/internal/force_flush", timeout=120)
    return time.perf_counter() - began


class _WarmScheduler:
    """A :class:`~openanomaly.runtime.runner.JobRunner` in a Ray actor, as in the scheduler actor."""

    def __init__(self, settings: Any) -> None:
        from openanomaly.runtime.runner import JobRunner

        self.settings, self.runner = settings, JobRunner()

    def pid(self) -> int:
        return os.getpid()

    def run(self, pipeline: Any, start: int, end: int) -> tuple[float, int]:
        began = time.perf_counter()
        result = self.runner.run_window(self.settings, pipeline, start_ms=start, end_ms=end)
        return time.perf_counter() - began, result.samples_written

    def close(self) -> None:
        self.runner.close()


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, vm_pid: int, end_ms: int) -> None:
        from openanomaly.core.config import Settings

        self.args, self.url, self.vm_pid = args, url, vm_pid
        self.settings = Settings(tsdb={"url": url, "timeout": 300})
        self.end_ms = end_ms
        self.group = min(int(s) for s in args.series.split(","))
        self.next_window = 0
        self.record: dict[str, Any] = {
            "benchmark": "scale_out",
            "pipeline": {
                "model": "default",
                "calibration": "defaults (on, 1 false alarm/week, cooldown 6h, min_history 1d)",
                "step": "5m",
                "infer_every": "5m",
                "context": "3d",
                "points_fetched_per_series": 865,
                "points_scored_per_series": 1,
            },
            "cluster": {
                "head": "0 CPUs (driver, GCS only)",
                "cpus_per_worker_node": args.cpus_per_node,
                "object_store_gb_per_worker_node": args.object_store_gb,
                "note": "every node is a raylet on this one machine; logical CPUs beyond its "
                "cores are oversubscribed",
            },
            "job_options": "JobOptions() defaults",
            "machine": machine(),
            "note": "shared 2-core machine; every figure in one run, compare ratios",
            "reference": [],
            "cells": [],
            "fetch_decode": [],
            "warm": [],
            "node_loss": None,
        }

    def window(self) -> tuple[int, int]:
        """A fresh window per measurement, so every measurement writes new samples."""
        self.next_window += 1
        end = self.end_ms - STEP_MS * (WINDOWS - self.next_window)
        return end - STEP_MS, end

    def save(self) -> None:
        write_result(self.args.out, self.record)

    # -- the plain process ------------------------------------------------------

    def reference(self, series: int) -> None:
        from openanomaly.core.detect import score_range
        from openanomaly.io.tsdb import PrometheusClient
        from openanomaly.models.registry import load_forecaster
        from openanomaly.runtime.window import claim, fetch, write

        pipeline = pipeline_for(f"ref-{series}", series, self.group)
        start, end = self.window()
        forecaster = load_forecaster("default")
        stages = dict.fromkeys(("plan", "fetch", "score", "write"), 0.0)
        written = 0
        with Meter({"process": os.getpid()}, children=False) as meter:
            began = time.perf_counter()
            with PrometheusClient(self.settings.tsdb) as client:
                t = time.perf_counter()
                queries = shard_queries(client, pipeline, start, end)
                stages["plan"] += time.perf_counter() - t
                t = time.perf_counter()
                fresh = claim(client, pipeline, start_ms=start, end_ms=end)
                stages["write"] += time.perf_counter() - t
                for query in queries:
                    shard = pipeline.model_copy(update={"query": query})
                    t = time.perf_counter()
                    matrix = fetch(client, shard, start_ms=start, end_ms=end)
                    stages["fetch"] += time.perf_counter() - t
                    t = time.perf_counter()
                    detection = score_range(matrix, shard, forecaster, start_ms=start, end_ms=end)
                    stages["score"] += time.perf_counter() - t
                    t = time.perf_counter()
                    written += write(client, shard, detection, fresh=fresh)[0]
                    stages["write"] += time.perf_counter() - t
            seconds = time.perf_counter() - began
        row = {
            "series": series,
            "seconds": round(seconds, 2),
            "stages_s": {k: round(v, 2) for k, v in stages.items()},
            "shards": len(queries),
            "samples_written": written,
            "peak_rss_gb": meter.peak_gb("process"),
        }
        print("reference", row, flush=True)
        self.record["reference"].append(row)
        self.save()

    def fetch_decode(self, series: int) -> None:
        """The window's fetch, shard by shard, decoded as shipped and the way it was before."""
        import contextlib
        import json
        import types

        from openanomaly.io import tsdb
        from openanomaly.runtime.window import fetch

        before = {
            "orjson": types.SimpleNamespace(loads=json.loads, JSONDecodeError=ValueError),
            "_gc_paused": contextlib.nullcontext,
        }
        pipeline = pipeline_for(f"decode-{series}", series, self.group)
        start, end = self.window()
        seconds: dict[str, float] = {}
        with tsdb.PrometheusClient(self.settings.tsdb) as client:
            queries = shard_queries(client, pipeline, start, end)
            for way in ("stdlib_json_gc_on", "shipped", "stdlib_json_gc_on", "shipped"):
                saved = {name: getattr(tsdb, name) for name in before}
                if way != "shipped":
                    for name, value in before.items():
                        setattr(tsdb, name, value)
                try:
                    began = time.perf_counter()
                    for query in queries:
                        shard = pipeline.model_copy(update={"query": query})
                        fetch(client, shard, start_ms=start, end_ms=end)
                    seconds[way] = min(seconds.get(way, np.inf), time.perf_counter() - began)
                finally:
                    for name, value in saved.items():
                        setattr(tsdb, name, value)
        row = {
            "series": series,
            "shipped_s": round(seconds["shipped"], 2),
            "stdlib_json_gc_on_s": round(seconds["stdlib_json_gc_on"], 2),
            "speedup": round(seconds["stdlib_json_gc_on"] / seconds["shipped"], 2),
        }
        print("fetch_decode", row, flush=True)
        self.record["fetch_decode"].append(row)
        self.save()

    # -- on the cluster ---------------------------------------------------------

    def meter(self, workers: list[Any]) -> Meter:
        roots = {f"node{i + 1}": raylet_pid(node) for i, node in enumerate(workers)}
        roots["vm"] = self.vm_pid
        return Meter(roots)

    def cell(self, series: int, workers: list[Any]) -> None:
        from openanomaly.runtime.window_job import run_job

        pipeline = pipeline_for(f"data-{series}", series, self.group)
        start, end = self.window()
        with self.meter(workers) as meter, Meter({"driver": os.getpid()}, children=False) as driver:
            began = time.perf_counter()
            result = run_job(self.settings, pipeline, start_ms=start, end_ms=end)
            seconds = time.perf_counter() - began
        nodes = [f"node{i + 1}" for i in range(len(workers))]
        row = {
            "series": series,
            "nodes": len(workers),
            "seconds": round(seconds, 2),
            "peak_rss_gb_per_node": [meter.peak_gb(n) for n in nodes],
            "io_mb_per_node": [meter.io_mb(n) for n in nodes],
            "vm_io_mb": meter.io_mb("vm"),
            "driver_peak_rss_gb": driver.peak_gb("driver"),
            "series_scored": result.series_scored,
            "samples_written": result.samples_written,
        }
        print("cell", row, flush=True)
        self.record["cells"].append(row)
        self.save()

    def warm(self, series: int, workers: list[Any]) -> None:
        """Consecutive windows on the warm path, run from a Ray actor as the scheduler actor
        runs them (at Ray's worker priority, like the model actor it calls)."""
        import ray

        scheduler = ray.remote(_WarmScheduler).options(num_cpus=0).remote(self.settings)
        pid = ray.get(scheduler.pid.remote())
        pipeline = pipeline_for(f"warm-{series}", series, self.group)
        windows = []
        try:
            for _ in range(1 + self.args.warm_windows):  # the first starts the model actor, keeps contexts
                start, end = self.window()
                with self.meter(workers) as meter, Meter({"scheduler": pid}, children=False) as own:
                    seconds, written = ray.get(scheduler.run.remote(pipeline, start, end))
                windows.append((seconds, written, meter, own))
        finally:
            ray.get(scheduler.close.remote())
            ray.kill(scheduler)
        following = [seconds for seconds, _, _, _ in windows[1:]]
        row = {
            "series": series,
            "nodes": len(workers),
            "seconds": round(float(np.median(following)), 2),
            "windows_seconds": [round(seconds, 2) for seconds in following],
            "first_window_seconds": round(windows[0][0], 2),
            "peak_rss_gb_per_node": [
                max(meter.peak_gb(f"node{i + 1}") for _, _, meter, _ in windows) for i in range(len(workers))
            ],
            "scheduler_peak_rss_gb": max(own.peak_gb("scheduler") for _, _, _, own in windows),
            "samples_written": [written for _, written, _, _ in windows[1:]],
        }
        print("warm", row, flush=True)
        self.record["warm"].append(row)
        self.save()

    def node_loss(self, series: int, cluster: Any, workers: list[Any], after_s: float) -> None:
        """Remove the last worker node ``after_s`` into the job; rerun a failed window once."""
        from openanomaly.runtime.window_job import run_job

        pipeline = pipeline_for(f"loss-{series}", series, self.group)
        start, end = self.window()
        victim = workers[-1]
        timer = threading.Timer(after_s, cluster.remove_node, args=(victim,))
        attempts, errors = 0, []
        timer.start()
        began = time.perf_counter()
        while attempts < 2:
            attempts += 1
            try:
                run_job(self.settings, pipeline, start_ms=start, end_ms=end)
                break
            except Exception as error:  # the scheduler records it and retries next tick
                errors.append(repr(error)[:300])
        seconds = time.perf_counter() - began
        timer.join()
        workers.remove(victim)
        lost, duplicated = self.count(pipeline, series, start, end)
        self.record["node_loss"] = {
            "series": series,
            "nodes_before": len(workers) + 1,
            "removed_after_s": after_s,
            "attempts": attempts,
            "errors": errors,
            "seconds": round(seconds, 2),
            "expected": 4 * series,
            "lost": lost,
            "duplicated": duplicated,
        }
        print("node_loss", self.record["node_loss"], flush=True)
        self.save()

    def count(self, pipeline: Any, series: int, start: int, end: int) -> tuple[int, int]:
        """(lost, duplicated) output samples in ``(start, end]``, from VictoriaMetrics' raw export."""
        import json

        httpx.get(self.url + "/internal/force_flush", timeout=120)
        raw = distinct = 0
        with httpx.stream(
            "POST",
            self.url + "/api/v1/export",
            data={
                "match[]": f'{{for="{pipeline.name}"}}',
                "start": str(start // 1000 + 1),
                "end": str(end // 1000),
            },
            timeout=300,
        ) as response:
            for line in response.iter_lines():
                if line:
                    stamps = json.loads(line)["timestamps"]
                    raw += len(stamps)
                    distinct += len(set(stamps))
        return 4 * series - distinct, raw - distinct


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", default="10000,50000,100000", help="comma list of window sizes (series)")
    parser.add_argument("--nodes", default="1,2,3", help="comma list of worker-node counts")
    parser.add_argument("--warm", default="10000", help="sizes to run on the warm model actor too")
    parser.add_argument(
        "--warm-windows", type=int, default=3, help="warm windows measured after the first (median reported)"
    )
    parser.add_argument(
        "--decode", default="10000,100000", help="sizes whose fetch is also decoded the way it was before"
    )
    parser.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs of each worker node")
    parser.add_argument("--object-store-gb", type=float, default=1.0, help="object store of each worker node")
    parser.add_argument("--loss-series", type=int, default=10_000, help="series in the node-loss window")
    parser.add_argument(
        "--loss-after-s", type=float, default=10.0, help="seconds into that window a worker node is removed"
    )
    parser.add_argument("--out", default=str(RESULTS / "scale_out.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.series.split(",")]
    node_counts = [int(n) for n in args.nodes.split(",") if n]
    warm_sizes = [int(s) for s in args.warm.split(",") if s]
    decode_sizes = [int(s) for s in args.decode.split(",") if s]

    day = 86_400_000
    end_ms = (int(time.time() * 1000) // 3_600_000 - 1) * 3_600_000
    with tempfile.TemporaryDirectory() as tmp:
        vm, url = start_vm(Path(tmp) / "vm", dedup=False)
        try:
            total = max(sizes)
            bench = Bench(args, url, vm.pid, end_ms)
            load_s = load(
                url,
                series=total,
                group=bench.group,
                start_ms=end_ms - 3 * day - (WINDOWS + 2) * STEP_MS,
                end_ms=end_ms,
            )
            print(f"loaded {total} series in {load_s:.1f} s", flush=True)
            bench.record["load_seconds"] = round(load_s, 1)
            for series in sizes:
                bench.reference(series)
            for series in decode_sizes:
                bench.fetch_decode(series)
            for nodes in node_counts:
                cluster, workers = start_cluster(
                    nodes, cpus_per_node=args.cpus_per_node, object_store_bytes=int(args.object_store_gb * GB)
                )
                try:
                    for series in sizes:
                        bench.cell(series, workers)
                    if nodes == node_counts[0]:
                        for series in warm_sizes:
                            bench.warm(series, workers)
                    if nodes == max(node_counts) and nodes > 1 and args.loss_series:
                        bench.node_loss(args.loss_series, cluster, workers, args.loss_after_s)
                finally:
                    stop_cluster(cluster)
        finally:
            vm.terminate()
            vm.wait(30)


if __name__ == "__main__":
    main()
