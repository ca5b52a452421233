"""Client-side remote-write throughput: encode + snappy + batching, no network.

Runs ``PrometheusClient.remote_write`` against an ``httpx.MockTransport`` that accepts
every request, so the time is the client's alone (labels, numpy encoding, compression,
httpx request building). Also times the protobuf-objects reference encoder on a slice.
Reports wall time and this process' CPU time; trust the CPU figure on a shared, loaded
machine.

    uv run python benchmarks/remote_write_encode.py [--series 10000] [--points 1440]

Writes ``benchmarks/results/remote_write_encode.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import httpx
import numpy as np
from _results import RESULTS, write_result

from openanomaly.core.config import TSDBSettings
from openanomaly.core.series import SeriesMatrix
from openanomaly.io import remote_write as _remote_write
from openanomaly.io.tsdb import PrometheusClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_440)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    step = 60_000
    start = 1_700_000_040_000
    labels = tuple(
        {
            "__name__": "anomaly_score",
            "instance": f"host-{i}:9100",
            "job": "node",
            "for": "cpu",
            "model": "chronos",
        }
        for i in range(args.series)
    )
    # Scores rounded like real floats: few trailing digits compress a little, as in practice.
    values = np.round(np.abs(rng.normal(size=(args.series, args.points))), 4)
    values[rng.random(values.shape) < 0.01] = np.nan
    matrix = SeriesMatrix(labels, start + step * np.arange(args.points, dtype=np.int64), values)
    samples = int(np.sum(~np.isnan(values)))

    sent = {"bytes": 0, "requests": 0}

    def accept(request: httpx.Request) -> httpx.Response:
        sent["bytes"] += len(request.content)
        sent["requests"] += 1
        return httpx.Response(204)

    settings = TSDBSettings(url="http://bench.invalid:8428")
    timings, cpu = [], []
    with PrometheusClient(settings, transport=httpx.MockTransport(accept)) as client:
        for _ in range(args.repeat):
            began, began_cpu = time.perf_counter(), time.process_time()
            written = client.remote_write(matrix)
            timings.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
    if written != samples:
        raise SystemExit(f"wrote {written} samples, expected {samples}")
    best = min(timings)

    slice_rows = max(1, min(200, args.series))
    present = ~np.isnan(values[:slice_rows])
    began = time.process_time()
    _remote_write.encode_write_request_protobuf(
        labels[:slice_rows],
        [matrix.timestamps[row] for row in present],
        [values[i][present[i]] for i in range(slice_rows)],
    )
    reference_rate = int(present.sum()) / (time.process_time() - began)

    result = {
        "series": args.series,
        "points": args.points,
        "samples": samples,
        "seconds_best": round(best, 3),
        "seconds_all": [round(t, 3) for t in timings],
        "samples_per_s": round(samples / best),
        "cpu_seconds_best": round(min(cpu), 3),
        "samples_per_cpu_s": round(samples / min(cpu)),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "protobuf_objects_samples_per_cpu_s": round(reference_rate),
        "requests": sent["requests"] // args.repeat,
        "compressed_mb": round(sent["bytes"] / args.repeat / 1e6, 1),
        "batch_samples": settings.write_batch_samples,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    print(json.dumps(result, indent=2))
    write_result(RESULTS / "remote_write_encode.json", result)


if __name__ == "__main__":
    main()
