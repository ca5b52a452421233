"""Scheduled-window latency: a 2-series, 1-minute pipeline through the real scheduler actor.

Starts a throw-away VictoriaMetrics with 2 series x 1 day, a local Ray (``--cpus``,
default 2) and the scheduler as users run it (the detached actor, default options, its
warm model actor), then drives its clock one minute at a time: each ``tick`` scores the
one new window and writes it. Timed per window, end to end, from the tick to the written
samples; the first window (which starts the model actor and loads the model) is reported
apart as ``cold_s``.

    uv run python benchmarks/job_latency.py [--windows 20] [--model mad]

Writes ``benchmarks/results/job_latency.json`` with ``p50_s``, ``p99_s`` and ``windows``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _cluster import MIN, load, machine, start_ray, start_vm
from _results import RESULTS, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--model", default="mad")
    parser.add_argument("--out", default=str(RESULTS / "job_latency.json"))
    args = parser.parse_args()

    import ray

    from openanomaly.runtime.scheduler_actor import start_scheduler

    end_ms = (int(time.time() * 1000) // (60 * MIN) - 1) * 60 * MIN
    with tempfile.TemporaryDirectory() as tmp:
        vm, url = start_vm(Path(tmp) / "vm")
        try:
            load(url, metric="latency_metric", series=2, start_ms=end_ms - 1440 * MIN, end_ms=end_ms)
            start_ray(args.cpus)
            config = Path(tmp) / "pipelines.yaml"
            config.write_text(
                f"settings:\n  tsdb:\n    url: {url}\n"
                "pipelines:\n  - name: latency\n    query: latency_metric\n"
                f"    model: {args.model}\n    schedule: {{infer_every: 1m, context: 1h}}\n"
            )
            actor = start_scheduler(str(config), name="latency-bench", namespace="bench", autostart=False)
            first = end_ms - (args.windows + 1) * MIN
            seconds, durations = [], []
            for k in range(args.windows + 1):
                now = first + k * MIN
                began = time.perf_counter()
                launched = ray.get(actor.tick.remote(now, wait=True))
                elapsed = time.perf_counter() - began
                status = ray.get(actor.status.remote(now))["pipelines"][0]
                if not launched or status["state"] != "idle":
                    raise RuntimeError(f"window at {now} did not complete: {status}")
                seconds.append(elapsed)
                durations.append(status["last_window_duration_s"])
                inside = status["last_window_duration_s"]
                print(f"window {k}: {elapsed:.3f} s end to end, {inside:.3f} s in the run", flush=True)
            ray.kill(actor)
            warm = np.array(seconds[1:])
            out = {
                "benchmark": "job_latency",
                "pipeline": f"2 series, step 1m, infer_every 1m, context 1h, model {args.model}",
                "windows": len(warm),
                "p50_s": round(float(np.percentile(warm, 50)), 3),
                "p99_s": round(float(np.percentile(warm, 99)), 3),
                "max_s": round(float(warm.max()), 3),
                "cold_s": round(seconds[0], 3),
                "in_run_p50_s": round(float(np.percentile(durations[1:], 50)), 3),
                "seconds": [round(s, 3) for s in seconds],
                "ray_cpus": args.cpus,
                "machine": machine(),
                "note": "scheduler actor with default options; ticks driven at 1-minute steps of its clock",
            }
            write_result(args.out, out)
            print(json.dumps({k: out[k] for k in ("windows", "p50_s", "p99_s", "cold_s")}))
        finally:
            vm.terminate()
            vm.wait(10)
            ray.shutdown()


if __name__ == "__main__":
    main()
