"""Serve throughput: series/s and latency with dynamic batching on vs off.

Same process, same Ray cluster, same model: the app is deployed twice, once with the
configured ``max_batch_size`` and once with ``max_batch_size: 1`` (every request is
its own model call), and ``--clients`` concurrent HTTP clients each send single-series
``/v1/forecast`` requests for ``--duration`` seconds. Prints a table and writes
``benchmarks/results/serve_throughput.json``.

Without ``--model`` it builds a randomly initialised Chronos-Bolt with the real
``amazon/chronos-bolt-small`` architecture (``openanomaly.models.tiny``, ``--size base``:
T5, d_model 512, 6+6 layers, 8 heads, patch 16), so the compute per call, and hence the
figure, is that of the real checkpoint; the forecasts themselves are meaningless.
``--size tiny`` uses the test suite's tiny Bolt instead: per-call overhead then
dominates, as it does for a real model on a GPU. ``--model /path/to/chronos-bolt-small`` (a local
checkpoint directory) or ``--model chronos:amazon/chronos-bolt-small`` (hub access)
uses real weights.

    uv run python benchmarks/serve_throughput.py                     # CPU, ~2 minutes
    uv run python benchmarks/serve_throughput.py --device cuda       # one GPU replica
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

RESULTS = Path(__file__).parent / "results" / "serve_throughput.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _summary(latencies: list[float], *, wall: float, errors: int) -> dict[str, Any]:
    """Requests, series/s and latency percentiles of one load run."""
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "series_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
    }


async def _load(url: str, *, clients: int, duration: float, context: int, horizon: int) -> dict[str, Any]:
    """``clients`` loops, each one request at a time, for ``duration`` seconds."""
    import httpx

    rng = np.random.default_rng(0)
    payloads = [
        {
            "series": [
                {"values": (100 + 10 * np.sin(np.arange(context) / 12) + rng.normal(0, 1, context)).tolist()}
            ],
            "horizon": horizon,
            "quantiles": [0.1, 0.5, 0.9],
        }
        for _ in range(16)
    ]
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        deadline = time.perf_counter() + duration

        async def worker(index: int) -> None:
            nonlocal errors
            k = index
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post("/v1/forecast", json=payloads[k % len(payloads)])
                if response.status_code != 200:
                    errors += 1
                    if errors == 1:
                        print(f"  error {response.status_code}: {response.text[:300]}", file=sys.stderr)
                else:
                    latencies.append(time.perf_counter() - start)
                k += clients

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - start
    return _summary(latencies, wall=wall, errors=errors)


async def _load_handle(
    handle: Any, *, clients: int, duration: float, context: int, horizon: int
) -> dict[str, Any]:
    """Like :func:`_load`, but each client calls the forecaster deployment's handle.

    Leaves out the HTTP proxy and the ingress (JSON, validation), which on a small CPU
    machine share the cores with the model and the load generator: this isolates what
    ``@serve.batch`` itself gains.
    """
    from openanomaly.serve.forecaster import ForecastItem

    rng = np.random.default_rng(0)
    items = [
        ForecastItem(
            (100 + 10 * np.sin(np.arange(context) / 12) + rng.normal(0, 1, context))[None, :],
            horizon,
            (0.1, 0.5, 0.9),
        )
        for _ in range(16)
    ]
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def worker(index: int) -> None:
        k = index
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await handle.forecast.remote(items[k % len(items)])
            latencies.append(time.perf_counter() - start)
            k += clients

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - start
    return _summary(latencies, wall=wall, errors=0)


def _batch_sizes(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {"batches": 0.0, "requests": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=60).text):
        if family.name == "openanomaly_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    out["batches"] += sample.value
                elif sample.name.endswith("_sum"):
                    out["requests"] += sample.value
    return out


def run_mode(
    args: argparse.Namespace, *, spec: str, port: int, max_batch_size: int, label: str
) -> dict[str, Any]:
    from ray import serve

    from openanomaly.serve.app import AppSettings, build

    params: dict[str, Any] = {"device": args.device}
    if spec.startswith("chronos:"):
        params["batch_size"] = max(max_batch_size, 1)
    settings = AppSettings.model_validate(
        {
            "models": {
                "bench": {
                    "spec": spec,
                    "params": params,
                    "max_batch_size": max_batch_size,
                    "batch_wait_timeout_s": args.batch_wait,
                }
            },
            "limits": {"max_points": max(10_000, args.context)},
        }
    )
    actor: dict[str, Any] = {"num_cpus": args.num_cpus}
    if args.device == "cuda":
        actor["num_gpus"] = 1
    app = build(
        settings,
        ingress_options={"num_replicas": args.ingress_replicas, "ray_actor_options": {"num_cpus": 0.25}},
        forecaster_options={"ray_actor_options": actor, "max_ongoing_requests": max(2 * max_batch_size, 8)},
    )
    serve.run(app, name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    print(f"[{label}] deployed (max_batch_size={max_batch_size}); warming up", file=sys.stderr)
    if args.via == "http":
        load = functools.partial(_load, url)
    else:
        load = functools.partial(_load_handle, serve.get_deployment_handle("Forecaster-bench", "bench"))
    asyncio.run(load(clients=min(args.clients, 8), duration=3, context=args.context, horizon=args.horizon))
    before = _batch_sizes(url)
    result = asyncio.run(
        load(clients=args.clients, duration=args.duration, context=args.context, horizon=args.horizon)
    )
    after = _batch_sizes(url)
    batches = after["batches"] - before["batches"]
    result["mean_batch_size"] = (
        round((after["requests"] - before["requests"]) / batches, 2) if batches else None
    )
    result.update(mode=label, max_batch_size=max_batch_size)
    print(f"[{label}] {result}", file=sys.stderr)
    serve.delete("bench")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="chronos checkpoint dir or a model spec; default: a random Bolt of --size"
    )
    parser.add_argument(
        "--size", choices=["base", "tiny"], default="base", help="random Bolt: bolt-small dims or tiny"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per mode")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait", type=float, default=0.01)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the forecaster replica")
    parser.add_argument("--ingress-replicas", type=int, default=1)
    parser.add_argument(
        "--via",
        choices=["http", "handle"],
        default="http",
        help="clients call the HTTP API, or the forecaster deployment's handle (no proxy/ingress)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from openanomaly.models.tiny import build_tiny_chronos

            path = build_tiny_chronos("bolt", Path(tmp) / "bolt", context_length=2048, size=args.size)
            spec = f"chronos:{path}"
            model_name = {
                "base": "chronos-bolt-small architecture, random weights",
                "tiny": "tiny Chronos-Bolt (test model), random weights",
            }[args.size]
        elif not Path(args.model).exists():  # a spec: chronos:<hub id>, mad, statsforecast:…
            spec, model_name = args.model, args.model
        else:
            spec, model_name = f"chronos:{args.model}", args.model
        ray.init(include_dashboard=False, log_to_driver=False)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            batched = run_mode(
                args, spec=spec, port=port, max_batch_size=args.max_batch_size, label="batched"
            )
            unbatched = run_mode(args, spec=spec, port=port, max_batch_size=1, label="unbatched")
        finally:
            serve.shutdown()
            ray.shutdown()

    speedup = batched["series_per_s"] / unbatched["series_per_s"] if unbatched["series_per_s"] else None
    header = (
        f"{'mode':<10} {'max_batch':>9} {'mean_batch':>10} {'series/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    print(
        f"\nmodel: {model_name} | device: {args.device} | via: {args.via} | clients: {args.clients} | "
        f"context: {args.context} | horizon: {args.horizon}"
    )
    print(header)
    for r in (batched, unbatched):
        print(
            f"{r['mode']:<10} {r['max_batch_size']:>9} {r['mean_batch_size']!s:>10} {r['series_per_s']:>9} "
            f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['errors']:>6}"
        )
    print(f"batching speedup: {speedup:.1f}x series/s" if speedup else "batching speedup: n/a")

    import torch

    record = {
        "benchmark": "serve_throughput",
        "model": model_name,
        "spec": spec if args.model else f"chronos:<random Bolt, size {args.size}>",
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "clients": args.clients,
        "via": args.via,
        "duration_s": args.duration,
        "context": args.context,
        "horizon": args.horizon,
        "forecaster_num_cpus": args.num_cpus,
        "batch_wait_timeout_s": args.batch_wait,
        "results": [batched, unbatched],
        "speedup": round(speedup, 2) if speedup else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
