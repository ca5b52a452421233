"""``openanomaly demo``: the compose demo's stack as local processes (openanomaly.demo.stack).

The end-to-end tests run the command as a user does, against the Debian binaries
(victoria-metrics, vmalert), with the incidents a minute apart instead of two so that
the run stays short; everything else (pipelines, writer, alert rules) is the default.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from openanomaly.cli import main
from openanomaly.demo.stack import ALERT_LOOKBACK_MS, ANOMALY_ALERT, AlertEvent, AlertWatcher, match_alerts
from openanomaly.demo.writer import INCIDENTS, MINUTE_MS, incident_starts
from tests.fixtures.tools import require_tool

T0 = 1_800_000_000_000 // MINUTE_MS * MINUTE_MS


def _anomaly(metric: str, instance: str, active_ms: int, pipeline: str = "demo-default") -> AlertEvent:
    labels = {"alertname": ANOMALY_ALERT, "metric": metric, "instance": instance, "for": pipeline}
    return AlertEvent(labels, active_ms)


def test_alerts_are_attributed_to_the_incident_on_their_series_and_time():
    drop, spike, shift = incident_starts(T0)
    on_time = _anomaly("demo_requests_per_second", "checkout", drop + 20_000)
    other_model = _anomaly("demo_requests_per_second", "checkout", drop + 35_000, "demo-autoets")
    late_but_in_window = _anomaly(
        "demo_latency_p99_seconds", "checkout", spike + 3 * MINUTE_MS + ALERT_LOOKBACK_MS
    )
    wrong_series = _anomaly("demo_cpu_utilisation", "db-1", shift + 10_000)
    before = _anomaly("demo_requests_per_second", "search", shift - 1)
    lagging = AlertEvent({"alertname": "OpenAnomalyPipelineLagging", "pipeline": "demo-default"}, drop)
    fired = [on_time, other_model, late_but_in_window, wrong_series, before, lagging]

    outcomes, outside = match_alerts(fired, t0_ms=T0)

    assert [o.incident for o in outcomes] == list(INCIDENTS)
    assert outcomes[0].alerts == [on_time, other_model] and outcomes[0].first_ms == 20_000
    assert outcomes[1].alerts == [late_but_in_window]
    assert outcomes[2].alerts == [] and outcomes[2].first_ms is None
    assert outside == [wrong_series, before, lagging]


def test_alert_watcher_reports_firing_then_resolved_from_vmalerts_api():
    """vmalert 1.79 (Debian) answers ``"alerts": null`` when none is active, and
    ``activeAt`` with nanoseconds in its own time zone."""
    labels = {"alertname": ANOMALY_ALERT, "for": "demo-default", "metric": "m", "instance": "a"}
    replies = [
        None,
        [
            {
                "state": "firing",
                "labels": labels,
                "activeAt": "2027-01-15T09:00:20.123456789+01:00",
                "value": "3.5",
            },
            {"state": "pending", "labels": {"alertname": "other"}, "activeAt": "2027-01-15T08:00:00Z"},
        ],
        [{"state": "firing", "labels": labels, "activeAt": "2027-01-15T08:00:20.123456789Z", "value": "4"}],
        None,
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/alerts"
        return httpx.Response(200, json={"status": "success", "data": {"alerts": replies.pop(0)}})

    watcher = AlertWatcher("http://vmalert", client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert watcher.poll() == []
    [(kind, event)] = watcher.poll()
    assert kind == "firing" and event.labels == labels and event.value == 3.5
    assert event.active_ms == 1_800_000_020_123  # 2027-01-15T08:00:20.123Z
    assert event.describe() == 'OpenAnomalyAnomaly demo-default m{instance="a"}'
    assert watcher.poll() == []  # still firing: nothing new
    [(kind, last)] = watcher.poll()
    assert kind == "resolved" and last.labels == labels and last.value == 4  # as last seen
    assert watcher.fired == [event]


def test_incident_schedule_fits_the_default_duration():
    starts = incident_starts(T0)
    assert [(s - T0) // MINUTE_MS for s in starts] == [2, 4, 6]  # inside the default 10 minutes
    assert [(s - T0) // MINUTE_MS for s in incident_starts(T0, every_ms=MINUTE_MS)] == [1, 2, 3]


def test_a_missing_binary_is_one_error_line_naming_the_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert main(["demo", "--duration", "1m"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: vmalert not found on PATH")
    assert "Debian package victoria-metrics" in err


def _demo(*args: str) -> subprocess.Popen[str]:
    require_tool("victoria-metrics")
    require_tool("vmalert")
    return subprocess.Popen(
        [sys.executable, "-m", "openanomaly.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _urls_and_folder(lines: list[str]) -> tuple[list[str], Path]:
    text = "".join(lines)
    urls = re.findall(r"^(?:VictoriaMetrics|vmalert): (http://127\.0\.0\.1:\d+)", text, re.MULTILINE)
    folder = re.search(r"artifacts in (\S+)/artifacts", text)
    assert len(urls) == 2 and folder, text
    return urls, Path(folder.group(1))


def _assert_all_gone(urls: list[str], folder: Path) -> None:
    assert not folder.exists()
    for url in urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)


@pytest.mark.integration
def test_demo_alerts_every_planted_incident_and_nothing_else():
    process = _demo("--duration", "4m30s", "--incidents-every", "1m")
    try:
        out, _ = process.communicate(timeout=540)
    finally:
        process.kill()
    assert process.returncode == 0, out
    assert "Traceback" not in out
    summary = out[out.index("\nsummary") :]
    assert "incidents planted: 3" in summary
    for incident in INCIDENTS:
        line = next(line for line in summary.splitlines() if incident.name in line)
        seconds = int(re.search(r"alert after (\d+)s", line).group(1))  # type: ignore[union-attr]
        assert 0 <= seconds <= 120, line
    # Incidents one minute apart (the default is two) leave a fitted model's alert little room
    # to stay inside its incident's span: one stray alert was seen in one CI run of this
    # compressed schedule (the default 10-minute run measured none). More than one is a fault.
    outside = int(re.search(r"alerts outside an incident: (\d+)", summary).group(1))  # type: ignore[union-attr]
    assert outside <= 1, summary
    for pipeline in ("demo-default", "demo-autoets"):
        match = re.search(rf"{pipeline}: (\d+) windows scored, 0 with a series unscored, 0 failed", summary)
        assert match and int(match.group(1)) >= 3, summary
    assert re.search(r"alert firing: OpenAnomalyAnomaly demo-default demo_latency_p99_seconds", out)
    _assert_all_gone(*_urls_and_folder(out.splitlines(keepends=True)))


@pytest.mark.integration
def test_sigterm_stops_every_child_and_removes_the_folder():
    process = _demo("--duration", "10m")
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("running until"):
                break
        urls, folder = _urls_and_folder(lines)
        assert folder.exists()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, "".join(lines) + rest
    assert "stopped every child and removed" in rest and "Traceback" not in rest
    _assert_all_gone(urls, folder)
