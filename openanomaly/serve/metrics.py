"""Prometheus self-metrics of the HTTP API (``GET /metrics``).

Two kinds of numbers live in two kinds of process:

* request counts, latencies and series/points scored are counted in the ingress
  replica that served the request, in its own ``CollectorRegistry`` (never the global
  one, so tests and several apps in one process do not collide);
* batch sizes are counted where batches form, in each forecaster replica
  (``BatchStats``). The ingress asks every model deployment for a snapshot at scrape
  time and exports it through ``BatchStatsCollector``, labelled by model and replica.
  A handle call reaches one replica, so with several forecaster replicas each scrape
  shows one of them (counters stay monotonic per ``replica`` label); Ray's own
  ``ray_serve_actual_batch_size`` covers every replica when the cluster's metrics are
  scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE", "BatchStatsCollector", "ServeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The ``*_created`` gauges double the exposition for no use to a dashboard.
disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class BatchStatsCollector:
    """Exports the latest forecaster ``BatchStats`` snapshots as Prometheus metrics."""

    def __init__(self) -> None:
        self.snapshots: dict[str, dict[str, Any]] = {}

    def update(self, snapshots: Mapping[str, dict[str, Any]]) -> None:
        """Replace the snapshots: model name → ``ForecasterDeployment.stats()``."""
        self.snapshots = dict(snapshots)

    def collect(self) -> Iterator[Metric]:
        sizes = HistogramMetricFamily(
            "openanomaly_batch_size",
            "Requests per model call, as batched by @serve.batch in the forecaster replica",
            labels=["model", "replica"],
        )
        series = CounterMetricFamily(
            "openanomaly_batch_series", "Series forecast by the model", labels=["model", "replica"]
        )
        seconds = CounterMetricFamily(
            "openanomaly_batch_model_seconds", "Time spent in model calls", labels=["model", "replica"]
        )
        errors = CounterMetricFamily(
            "openanomaly_batch_errors", "Model calls that failed", labels=["model", "replica"]
        )
        for model, snap in sorted(self.snapshots.items()):
            labels = [model, str(snap.get("replica", ""))]
            cumulative, buckets = 0, []
            for bound, count in zip(snap["buckets"], snap["bucket_counts"], strict=True):
                cumulative += count
                buckets.append((str(float(bound)), cumulative))
            buckets.append(("+Inf", snap["batches"]))
            sizes.add_metric(labels, buckets, sum_value=float(snap["requests"]))
            series.add_metric(labels, float(snap["series"]))
            seconds.add_metric(labels, float(snap["seconds"]))
            errors.add_metric(labels, float(snap["errors"]))
        yield from (sizes, series, seconds, errors)


class ServeMetrics:
    """The ingress replica's metrics; one instance per replica."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "openanomaly_http_requests",
            "HTTP requests by endpoint, model and status code",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "openanomaly_http_request_duration_seconds",
            "HTTP request latency in the ingress",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.series = Counter(
            "openanomaly_series", "Series forecast or scored", ["endpoint", "model"], registry=self.registry
        )
        self.points_scored = Counter(
            "openanomaly_points_scored", "Points given an anomaly score", ["model"], registry=self.registry
        )
        self.anomalies = Counter(
            "openanomaly_anomalies", "Scored points with anomaly_score > 1", ["model"], registry=self.registry
        )
        self.batches = BatchStatsCollector()
        self.registry.register(self.batches)

    def render(self) -> bytes:
        """Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


class ObserveRequests:
    """ASGI middleware: count every request and time it, by route, model and status.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware``
    runs the rest of the app in a new task behind memory streams on every request, and
    the per-request path is what limits serving on a small machine (docs/serve.md,
    Throughput). A request that raises is counted as the 500 the client gets.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = getattr(scope.get("route"), "path", "other")  # set by the router, in place
            metrics: ServeMetrics | None = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
            if metrics is not None and endpoint != "/metrics":
                model = scope.get("state", {}).get("model", "")
                metrics.requests.labels(endpoint, model, str(status)).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
