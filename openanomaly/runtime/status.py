"""What the scheduler shows: a pipeline's :class:`PipelineStatus`, and all of them as Prometheus text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["STATES", "PipelineStatus", "metrics_text"]


@dataclass
class PipelineStatus:
    """What ``GET /v1/pipelines`` shows for one pipeline (JSON-ready via ``asdict``)."""

    name: str
    model: str = ""
    state: str = "idle"  # idle | running | no_data | failed | stalled | waiting | disabled
    reason: str | None = None  # why the state is not idle/running
    running: bool = False
    running_for_s: float | None = None
    last_end_ms: int | None = None
    last_fit_ms: int | None = None
    last_run_started: float | None = None  # unix seconds
    last_run_finished: float | None = None
    last_run_duration_s: float | None = None
    last_window_duration_s: float | None = None
    last_run_ok: bool | None = None
    lag_s: float | None = None
    series_in: int = 0  # in the last window
    series_scored: int = 0  # in the last window
    samples_written: int = 0  # in the last window
    windows_total: int = 0
    fits_total: int = 0
    errors_total: int = 0
    no_data_total: int = 0
    gaps_total: int = 0  # windows left unscored: no sample arrived within gap_after_ms
    timeouts_total: int = 0
    last_error: str | None = None
    disabled_reason: str | None = None


STATES = ("idle", "running", "no_data", "failed", "stalled", "waiting", "disabled")


def metrics_text(pipelines: Iterable[dict[str, Any]], *, config_error: bool = False) -> str:
    """Status records as Prometheus text format (``GET /metrics``).

    ``openanomaly_scheduler_config_error`` is 1 while the pipelines file does not load
    (then the pipelines of the last good file, if any, are still reported), and
    ``openanomaly_pipeline_state{state=...}`` is 1 for each pipeline's current state, so
    alert rules can fire on ``no_data``, ``failed`` or ``stalled`` as well as on lag.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    records = list(pipelines)

    class _Collector:
        def collect(self) -> Iterable[Any]:
            yield GaugeMetricFamily(
                "openanomaly_scheduler_config_error",
                "1 while the pipelines file fails to load (the last good one stays in force)",
                value=float(config_error),
            )
            state = GaugeMetricFamily(
                "openanomaly_pipeline_state",
                "1 for the pipeline's current state",
                labels=["pipeline", "state"],
            )
            for record in records:
                for name in STATES:
                    state.add_metric([record["name"], name], float(record.get("state") == name))
            yield state
            gauges = {
                "lag_seconds": ("Seconds from the end of the last completed window to now", "lag_s"),
                "last_run_timestamp_seconds": ("Unix time the last run finished", "last_run_finished"),
                "last_run_duration_seconds": ("Duration of the last run", "last_run_duration_s"),
                "last_window_duration_seconds": ("Duration of the last window", "last_window_duration_s"),
                "running_seconds": ("How long the run in flight has been running", "running_for_s"),
                "series": ("Series the query returned in the last window", "series_in"),
                "series_scored": ("Series scored in the last window", "series_scored"),
                "samples_written": ("Samples written in the last window", "samples_written"),
                "running": ("1 while a run is in progress", "running"),
                "last_window_end_timestamp_seconds": ("End of the last completed window", "last_end_ms"),
            }
            for suffix, (doc, key) in gauges.items():
                family = GaugeMetricFamily(f"openanomaly_pipeline_{suffix}", doc, labels=["pipeline"])
                for record in records:
                    value = record.get(key)
                    if value is None:
                        continue
                    if key == "last_end_ms":
                        value = value / 1000
                    family.add_metric([record["name"]], float(value))
                yield family
            counters = {
                "windows": ("Windows scored since the scheduler started", "windows_total"),
                "fits": ("Model fits since the scheduler started", "fits_total"),
                "errors": ("Failed runs since the scheduler started", "errors_total"),
                "no_data": (
                    "Runs whose query returned no series, or no sample in the window",
                    "no_data_total",
                ),
                "gaps": ("Windows reported as gaps: no sample arrived in time", "gaps_total"),
                "timeouts": ("Runs that hit the window time limit", "timeouts_total"),
            }
            for suffix, (doc, key) in counters.items():
                family = CounterMetricFamily(f"openanomaly_pipeline_{suffix}", doc, labels=["pipeline"])
                for record in records:
                    family.add_metric([record["name"]], float(record.get(key) or 0))
                yield family

    registry = CollectorRegistry()
    registry.register(_Collector())
    return generate_latest(registry).decode()
