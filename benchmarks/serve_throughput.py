"""Serve throughput: what serving costs against the model alone, and what batching gains.

One process, one run, one model, three measures:

* ``model_only``: the forecaster called directly in this process (no Ray, no HTTP),
  ``forecast_batch`` on batches of the configured ``max_batch_size`` (and of the mean
  batch the HTTP run formed), with as many torch threads as the replica has CPUs;
* ``batched``: the app on a local Ray Serve, ``--clients`` concurrent HTTP clients each
  sending ``/v1/forecast`` requests of ``--series-per-request`` series (default 1) for
  ``--duration`` seconds;
* ``unbatched``: the same with ``max_batch_size: 1`` (every request its own model call);
* ``healthz_requests_per_s``: the same clients sending bodiless ``GET /healthz`` to the
  batched app: how many requests/s the proxy and ingress pass at all on this machine.

``http_over_model_only`` is batched HTTP series/s over model-only series/s at the
configured batch size: the share of the model's own throughput that reaches clients.
Prints a table and writes ``benchmarks/results/serve_throughput.json``.

The model is the serve default, the shipped ``chronos:openanomaly-bolt-mini``, unless
``--model`` names another spec or a checkpoint directory. ``--random base`` builds a
randomly initialised Chronos-Bolt with the real ``amazon/chronos-bolt-small``
architecture (T5, d_model 512, 6+6 layers, 8 heads, patch 16), whose compute per call is
that of the real checkpoint; ``--random tiny`` the test suite's tiny Bolt.

    uv run python benchmarks/serve_throughput.py                     # CPU, ~3 minutes
    uv run python benchmarks/serve_throughput.py --device cuda       # one GPU replica (bf16)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import RESULTS, write_result

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SHIPPED = "chronos:openanomaly-bolt-mini"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LEVELS = (0.1, 0.5, 0.9)


def _requests(context: int, series: int) -> list[np.ndarray]:
    """The 16 requests every measure cycles through, ``(series, context)`` each: noisy sines."""
    rng = np.random.default_rng(0)
    steps = np.arange(context)
    return [100 + 10 * np.sin(steps / 12) + rng.normal(0, 1, (series, context)) for _ in range(16)]


def _summary(latencies: list[float], *, wall: float, errors: int, series: int) -> dict[str, Any]:
    """Requests, series/s and latency percentiles of one load run."""
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "series_per_s": round(len(latencies) * series / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
    }


async def _load(
    url: str,
    *,
    clients: int,
    duration: float,
    context: int,
    horizon: int,
    series: int,
    get: str | None = None,
) -> dict[str, Any]:
    """``clients`` loops, each one request at a time, for ``duration`` seconds: forecasts,
    or with ``get`` a bodiless GET of that path (what the serving path alone allows)."""
    import httpx

    payloads = [
        {"series": [{"values": row.tolist()} for row in block], "horizon": horizon, "quantiles": list(LEVELS)}
        for block in _requests(context, series)
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
                if get is None:
                    response = await client.post("/v1/forecast", json=payloads[k % len(payloads)])
                else:
                    response = await client.get(get)
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
    return _summary(latencies, wall=wall, errors=errors, series=series)


async def _load_handle(
    handle: Any, *, clients: int, duration: float, context: int, horizon: int, series: int
) -> dict[str, Any]:
    """Like :func:`_load`, but each client calls the forecaster deployment's handle.

    Leaves out the HTTP proxy and the ingress (JSON, validation), which on a small CPU
    machine share the cores with the model and the load generator: this isolates what
    ``@serve.batch`` itself gains.
    """
    from openanomaly.serve.forecaster import ForecastItem

    items = [ForecastItem(block, horizon, LEVELS) for block in _requests(context, series)]
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
    return _summary(latencies, wall=wall, errors=0, series=series)


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


def _params(spec: str, *, device: str, batch_size: int) -> dict[str, Any]:
    """The adapter params both the deployment and the model-only run use."""
    params: dict[str, Any] = {"device": device}
    if spec.startswith("chronos:"):
        params["batch_size"] = max(batch_size, 1)
    return params


def run_model_only(args: argparse.Namespace, *, spec: str, batch_size: int) -> dict[str, Any]:
    """The forecaster called directly, ``batch_size`` requests per call, for ``--duration`` s.

    The same ``forecast_batch`` the replica runs, on as many torch threads as the replica
    has CPUs (Ray sets ``OMP_NUM_THREADS`` to an actor's ``num_cpus``), so the only
    difference from the batched HTTP run is the serving around it.
    """
    import torch

    from openanomaly.models.registry import load_forecaster
    from openanomaly.serve.forecaster import ForecastItem, forecast_batch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, round(args.num_cpus)))
    try:
        model = load_forecaster(spec, **_params(spec, device=args.device, batch_size=batch_size))
        blocks = _requests(args.context, args.series_per_request)
        items = [ForecastItem(block, args.horizon, LEVELS) for block in blocks]
        batch = [items[i % len(items)] for i in range(batch_size)]
        forecast_batch(model, batch, spec=spec)  # warm-up: first-call allocations
        latencies: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.duration:
            call = time.perf_counter()
            forecast_batch(model, batch, spec=spec)
            latencies.append(time.perf_counter() - call)
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    summary = _summary(latencies, wall=wall, errors=0, series=batch_size * args.series_per_request)
    result = {
        "mode": "model_only",
        "batch_size": batch_size,
        "calls": summary["requests"],
        "wall_s": summary["wall_s"],
        "series_per_s": summary["series_per_s"],
        "call_p50_ms": summary["p50_ms"],
    }
    print(f"[model_only] {result}", file=sys.stderr)
    return result


def run_mode(
    args: argparse.Namespace, *, spec: str, port: int, max_batch_size: int, label: str
) -> dict[str, Any]:
    from ray import serve

    from openanomaly.serve.app import build
    from openanomaly.serve.settings import AppSettings

    params = _params(spec, device=args.device, batch_size=max_batch_size)
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
    shape = {"context": args.context, "horizon": args.horizon, "series": args.series_per_request}
    asyncio.run(load(clients=min(args.clients, 8), duration=3, **shape))
    before = _batch_sizes(url)
    result = asyncio.run(load(clients=args.clients, duration=args.duration, **shape))
    after = _batch_sizes(url)
    batches = after["batches"] - before["batches"]
    result["mean_batch_size"] = (
        round((after["requests"] - before["requests"]) / batches, 2) if batches else None
    )
    result.update(mode=label, max_batch_size=max_batch_size)
    if args.via == "http" and label == "batched":
        floor = asyncio.run(load(clients=args.clients, duration=args.duration, **shape, get="/healthz"))
        result["healthz_requests_per_s"] = round(floor["requests"] / floor["wall_s"], 1)
    print(f"[{label}] {result}", file=sys.stderr)
    serve.delete("bench")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=SHIPPED, help=f"model spec or chronos checkpoint dir (default {SHIPPED})"
    )
    parser.add_argument(
        "--random",
        choices=["base", "tiny"],
        help="instead of --model: a random Bolt with bolt-small dims (base) or the tests' tiny one",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per measure")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--series-per-request", type=int, default=1, help="series in each request")
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
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_throughput.json")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        if args.random is not None:
            from openanomaly.models.tiny import build_tiny_chronos

            path = build_tiny_chronos("bolt", Path(tmp) / "bolt", context_length=2048, size=args.random)
            spec = f"chronos:{path}"
            model_name = {
                "base": "chronos-bolt-small architecture, random weights",
                "tiny": "tiny Chronos-Bolt (test model), random weights",
            }[args.random]
        elif Path(args.model).exists():
            spec, model_name = f"chronos:{args.model}", args.model
        else:  # a spec: chronos:<shipped or hub name>, mad, statsforecast:…
            spec, model_name = args.model, args.model
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
        # After the cluster is gone, so the model has the cores the replica shared.
        sizes = sorted({args.max_batch_size, max(1, round(batched["mean_batch_size"] or 1))}, reverse=True)
        model_only = [run_model_only(args, spec=spec, batch_size=size) for size in sizes]

    speedup = batched["series_per_s"] / unbatched["series_per_s"] if unbatched["series_per_s"] else None
    ceiling = model_only[0]["series_per_s"]
    share = batched["series_per_s"] / ceiling if ceiling else None
    same_batch = model_only[-1]["series_per_s"]
    share_same_batch = batched["series_per_s"] / same_batch if same_batch else None
    print(
        f"\nmodel: {model_name} | device: {args.device} | via: {args.via} | clients: {args.clients} | "
        f"context: {args.context} | horizon: {args.horizon}"
    )
    columns = ("batch", "mean_batch", "series/s", "p50 ms", "p99 ms", "errors")
    print(f"{'mode':<10} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, (9, 10, 9, 8, 8, 6), strict=True)))
    for r in model_only:
        print(
            f"{'model':<10} {r['batch_size']:>9} {r['batch_size']:>10} {r['series_per_s']:>9} "
            f"{r['call_p50_ms']!s:>8} {'':>8} {0:>6}"
        )
    for r in (batched, unbatched):
        print(
            f"{r['mode']:<10} {r['max_batch_size']:>9} {r['mean_batch_size']!s:>10} {r['series_per_s']:>9} "
            f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['errors']:>6}"
        )
    for label, value, size in (
        ("configured", share, model_only[0]["batch_size"]),
        ("mean", share_same_batch, model_only[-1]["batch_size"]),
    ):
        print(
            f"{args.via} / model-only at the {label} batch ({size}): " + (f"{value:.0%}" if value else "n/a")
        )
    print(f"batching speedup: {speedup:.1f}x series/s" if speedup else "batching speedup: n/a")
    floor = batched.get("healthz_requests_per_s")
    floor_share = floor * args.series_per_request / ceiling if floor and ceiling else None
    if floor_share is not None:
        print(
            f"GET /healthz through the same proxy and ingress: {floor} requests/s; at "
            f"{args.series_per_request} series per request that caps HTTP at "
            f"{floor_share:.0%} of model-only, whatever the model"
        )

    import torch

    record = {
        "benchmark": "serve_throughput",
        "model": model_name,
        "spec": spec if args.random is None else f"chronos:<random Bolt, size {args.random}>",
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "clients": args.clients,
        "via": args.via,
        "duration_s": args.duration,
        "context": args.context,
        "horizon": args.horizon,
        "series_per_request": args.series_per_request,
        "forecaster_num_cpus": args.num_cpus,
        "batch_wait_timeout_s": args.batch_wait,
        "model_only": model_only,
        "results": [batched, unbatched],
        f"{args.via}_over_model_only": round(share, 3) if share else None,
        f"{args.via}_over_model_only_at_mean_batch": round(share_same_batch, 3) if share_same_batch else None,
        "speedup": round(speedup, 2) if speedup else None,
        "healthz_requests_per_s": floor,
        "healthz_over_model_only": round(floor_share, 3) if floor_share is not None else None,
    }
    write_result(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
