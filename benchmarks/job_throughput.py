"""Scheduled-window throughput: 10,000 series, one 10-minute window, job paths vs one plain process.

Starts a throw-away VictoriaMetrics, loads 10k series x 1 day at 1-minute step, starts a
local Ray (``--cpus``, default 2) and times, in the same run, one window (10 new points,
1 h of context) per row, each on a window of its own so every row writes new samples:

- ``raw``: one plain process, no Ray: ``query_range`` → ``mad`` → ``remote_write``. The
  floor: what any implementation has to pay.
- ``warm``: :meth:`openanomaly.runtime.runner.JobRunner.run_window`, what the scheduler runs: the
  window path with its scoring in a warm model actor and the idempotent write (it reads
  the existing outputs first). Timed after one warm-up window that starts the actor.
- ``ray_data-N``: :func:`openanomaly.runtime.window_job.run_job`, the Ray Data job for very many series,
  with at most N scoring actors.

    uv run python benchmarks/job_throughput.py                 # full size
    uv run python benchmarks/job_throughput.py --series 1000   # quick

Writes ``benchmarks/results/job_throughput.json``: every run's seconds and
``job_over_raw`` (the best job time / the raw time). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _cluster import MIN, load, machine, start_ray, start_vm
from _results import RESULTS, write_result

METRIC = "bench_metric"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="Ray Data scoring actors to try")
    parser.add_argument("--out", default=str(RESULTS / "job_throughput.json"))
    args = parser.parse_args()

    import ray

    from openanomaly.core.config import Pipeline, Settings
    from openanomaly.core.detect import score_range
    from openanomaly.io.tsdb import PrometheusClient
    from openanomaly.models.registry import load_forecaster
    from openanomaly.runtime.options import JobOptions
    from openanomaly.runtime.runner import JobRunner
    from openanomaly.runtime.window import fetch, output_matrix
    from openanomaly.runtime.window_job import run_job

    end_ms = (int(time.time() * 1000) // (60 * MIN) - 1) * 60 * MIN
    with tempfile.TemporaryDirectory() as tmp:
        vm, url = start_vm(Path(tmp) / "vm")
        try:
            load_s = load(url, metric=METRIC, series=args.series, start_ms=end_ms - 1440 * MIN, end_ms=end_ms)
            print(f"loaded {args.series} series x 1441 points in {load_s:.1f} s", flush=True)
            start_ray(args.cpus)
            settings = Settings(tsdb={"url": url, "timeout": 120})
            runs: list[dict] = []
            windows = iter(range(1, 100))

            def pipeline(name: str) -> tuple[Pipeline, int, int]:
                k = next(windows)
                p = Pipeline(
                    name=name,
                    query=f'{METRIC}{{job="bench"}}',
                    model="mad",
                    schedule={"infer_every": "10m", "context": "1h"},
                )
                return p, end_ms - 10 * MIN * (k + 1), end_ms - 10 * MIN * k

            def record(path: str, seconds: float, series: int, written: int) -> None:
                row = {
                    "path": path,
                    "seconds": round(seconds, 2),
                    "series": series,
                    "samples_written": written,
                    "series_per_s": round(series / seconds, 1),
                }
                print(row, flush=True)
                runs.append(row)
                _write(args, runs, load_s)

            # raw: one process, no Ray, nothing but fetch → score → write
            p, start, end = pipeline("raw")
            began = time.perf_counter()
            with PrometheusClient(settings.tsdb) as client:
                series = fetch(client, p, start_ms=start, end_ms=end)
                detection = score_range(series, p, load_forecaster("mad"), start_ms=start, end_ms=end)
                written = client.remote_write(output_matrix(detection, p))
            record("raw", time.perf_counter() - began, len(series), written)

            # warm: the scheduler's path (warm-up window first: it starts the model actor)
            runner = JobRunner()
            p, start, end = pipeline("warm")
            runner.run_window(settings, p, start_ms=start, end_ms=end)
            for _ in range(2):
                p, start, end = pipeline("warm")
                began = time.perf_counter()
                result = runner.run_window(settings, p, start_ms=start, end_ms=end)
                record("warm", time.perf_counter() - began, result.series_in, result.samples_written)
            runner.close()

            for workers in [int(w) for w in args.workers.split(",")]:
                p, start, end = pipeline(f"data-{workers}")
                options = JobOptions(
                    series_per_shard=max(1, args.series // 8), batch_size=1250, max_workers=workers
                )
                began = time.perf_counter()
                result = run_job(settings, p, start_ms=start, end_ms=end, options=options)
                record(
                    f"ray_data-{workers}",
                    time.perf_counter() - began,
                    result.series_in,
                    result.samples_written,
                )
            print(Path(args.out).read_text())
        finally:
            vm.terminate()
            vm.wait(10)
            ray.shutdown()


def _write(args: argparse.Namespace, runs: list[dict], load_s: float) -> None:
    """Write the results so far (a failed later run keeps the earlier numbers)."""
    raw = next((r["seconds"] for r in runs if r["path"] == "raw"), None)
    jobs = [r["seconds"] for r in runs if r["path"] != "raw"]
    out = {
        "benchmark": "job_throughput",
        "series": args.series,
        "points_per_series_loaded": 1441,
        "window": "10m at 1m step, 1h context, model mad",
        "ray_cpus": args.cpus,
        "load_seconds": round(load_s, 1),
        "raw_seconds": raw,
        "best_job_seconds": min(jobs) if jobs else None,
        "job_over_raw": round(min(jobs) / raw, 2) if jobs and raw else None,
        "machine": machine(),
        "note": "shared 2-core machine; every row in one run, compare ratios",
        "runs": runs,
    }
    write_result(args.out, out)


if __name__ == "__main__":
    main()
