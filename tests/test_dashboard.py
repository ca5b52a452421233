"""The Grafana dashboard's every panel query returns data from a real VictoriaMetrics.

Grafana itself is not installable here, so the test does what Grafana would do with
the JSON: the demo data (``openanomaly.demo.writer``) goes into the session's VictoriaMetrics,
the production backtest scores it with ``default`` and remote-writes the scores, a real
``scheduler.metrics_text`` is imported as the ``/metrics`` scrape would store it; then
each template variable is resolved from the TSDB (``label_values`` through the labels
API, "All" expanded as Grafana expands it) and each panel's PromQL runs as a range query
with the variables substituted.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from openanomaly.core.config import Pipeline
from openanomaly.core.series import SeriesMatrix
from openanomaly.demo.writer import INCIDENTS, demo_series
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.models.registry import load_forecaster
from openanomaly.runtime.status import PipelineStatus, metrics_text
from openanomaly.runtime.window import Tally, iter_blocks, local_scorer, run_window
from tests.fixtures.servers import TSDBServer, unique_metric

DASHBOARD = (
    Path(__file__).resolve().parents[1] / "charts" / "openanomaly" / "files" / "openanomaly-dashboard.json"
)
MINUTE = 60_000
LIVE_MINUTES = 60

pytestmark = pytest.mark.integration


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def scored(victoria_metrics: TSDBServer) -> dict[str, Any]:
    """Demo data for the last 2 days + 1 h, scored over the last 90 minutes with the compose
    pipeline's query and model; scheduler metrics for the same pipeline. Returns the time range."""
    job = unique_metric("dash")
    now = int(time.time() * 1000) // MINUTE * MINUTE
    t0 = now - LIVE_MINUTES * MINUTE  # the demo "started" an hour ago: its incidents are in range
    raw = demo_series(t0 - 2 * 86_400_000, now, step_ms=MINUTE, t0_ms=t0)
    data = SeriesMatrix(tuple(dict(labels, job=job) for labels in raw.labels), raw.timestamps, raw.values)
    pipeline = Pipeline.model_validate(
        {
            "name": f"{job}-default",
            # As examples/compose-pipelines.yaml: keep the metric name as a `metric` label.
            "query": (
                f'label_replace({{__name__=~"demo_.+", job="{job}"}}, "metric", "$1", "__name__", "(.+)")'
            ),
            "step": "1m",
            "model": "default",
            "schedule": {"infer_every": "1m", "context": "1d"},
        }
    )
    with PrometheusClient(victoria_metrics.settings) as client:
        client.remote_write(data)
        victoria_metrics.flush()
        tally = Tally()
        scorer = local_scorer(pipeline, load_forecaster("default"))
        for start, end, block in iter_blocks(client, pipeline, start_ms=now - 90 * MINUTE, end_ms=now):
            window = {"start_ms": start, "end_ms": end, "source": block, "sink": client}
            detection, done = run_window(pipeline, scorer, **window)
            tally.add(detection, done.samples_written, done.samples_present)
        result = tally.result(pipeline, now - 90 * MINUTE, now)
    assert result.anomalies >= len(INCIDENTS)  # every injected incident scores above 1
    for minutes_ago, errors in ((10, 0), (5, 1), (0, 2)):
        status = PipelineStatus(
            name=pipeline.name,
            lag_s=40.0 + minutes_ago,
            series_scored=4,
            last_run_duration_s=0.7,
            errors_total=errors,
            windows_total=100 - minutes_ago,
        )
        text = metrics_text([status.__dict__])
        httpx.post(
            f"{victoria_metrics.url}/api/v1/import/prometheus",
            params={"timestamp": now - minutes_ago * MINUTE},
            content=text,
            timeout=10,
        ).raise_for_status()
    victoria_metrics.flush()
    return {"pipeline": pipeline.name, "start": now - 3 * 3_600_000, "end": now}


_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?([\w$]+)\)$")
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


def _escape(value: str) -> str:
    """Grafana's regex escape for Prometheus multi-value variables (backslash doubled in the string)."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", value)


def _substitute(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        text = text.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return text


def _resolve(server: TSDBServer, scored: dict[str, Any], *, pick_pipeline: bool) -> dict[str, str]:
    """Every template variable's value, as Grafana would set it with "All" selected (or,
    with ``pick_pipeline``, the test's own pipeline)."""
    values = {"__rate_interval": "4m", "__interval": "1m", "datasource": "VictoriaMetrics"}
    for variable in _dashboard()["templating"]["list"]:
        name, kind = variable["name"], variable["type"]
        if kind == "textbox":
            values[name] = variable["query"]
        elif kind == "query":
            match = _LABEL_VALUES.match(_substitute(variable["definition"], values))
            assert match, variable["definition"]
            selector, label = match.groups()
            response = httpx.get(
                f"{server.url}/api/v1/label/{label}/values",
                params={"match[]": selector, "start": scored["start"] // 1000, "end": scored["end"] // 1000},
                timeout=10,
            )
            response.raise_for_status()
            found = response.json()["data"]
            assert found, f"variable {name!r}: {selector} has no {label!r} values"
            if name == "pipeline" and pick_pipeline:
                assert scored["pipeline"] in found
                found = [scored["pipeline"]]
            all_value = variable.get("allValue")
            values[name] = all_value or "(" + "|".join(_escape(v) for v in found) + ")"
    return values


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


@pytest.mark.parametrize("pick_pipeline", [True, False], ids=["one-pipeline", "all-pipelines"])
def test_every_panel_query_returns_data(
    victoria_metrics: TSDBServer, scored: dict[str, Any], pick_pipeline: bool
) -> None:
    values = _resolve(victoria_metrics, scored, pick_pipeline=pick_pipeline)
    checked = 0
    for panel in _panels():
        for target in panel["targets"]:
            query = _substitute(target["expr"], values)
            response = httpx.get(
                f"{victoria_metrics.url}/api/v1/query_range",
                params={
                    "query": query,
                    "start": scored["start"] / 1000,
                    "end": scored["end"] / 1000,
                    "step": 60,
                },
                timeout=30,
            )
            assert response.status_code == 200, f"{panel['title']}: {query}: {response.text}"
            result = response.json()["data"]["result"]
            assert result, f"panel {panel['title']!r} query {target['refId']} returns no data: {query}"
            checked += 1
    assert checked == sum(len(panel["targets"]) for panel in _panels()) >= 9


def test_alert_state_panel_shows_each_incident(victoria_metrics: TSDBServer, scored: dict[str, Any]) -> None:
    values = _resolve(victoria_metrics, scored, pick_pipeline=True)
    (panel,) = [p for p in _panels() if p["type"] == "state-timeline"]
    query = _substitute(panel["targets"][0]["expr"], values)
    response = httpx.get(
        f"{victoria_metrics.url}/api/v1/query_range",
        params={"query": query, "start": scored["start"] / 1000, "end": scored["end"] / 1000, "step": 60},
        timeout=30,
    )
    firing = {
        series["metric"]["instance"] + "/" + series["metric"]["metric"]
        for series in response.json()["data"]["result"]
        if any(float(value) == 1 for _, value in series["values"])
    }
    assert firing == {
        "checkout/demo_requests_per_second",
        "checkout/demo_latency_p99_seconds",
        "search/demo_requests_per_second",
    }


def test_dashboard_is_well_formed_for_grafana() -> None:
    dashboard = _dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert {"datasource", "pipeline", "series"} <= set(names)
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"])
    titles = {panel["title"] for panel in _panels()}
    assert {"Metric, forecast and band", "Anomaly score", "Pipeline lag", "Failed runs"} <= titles
