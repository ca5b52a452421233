"""End to end on real servers: series in the TSDB → ``openanomaly backtest`` → scores read by PromQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from openanomaly.cli import main
from openanomaly.core.config import Pipeline
from openanomaly.core.detect import score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.core.times import parse_time
from openanomaly.io.csvseries import read_csv_series
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.models.registry import load_forecaster
from openanomaly.runtime.window import fetch
from tests.fixtures.servers import TSDBServer, unique_metric

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
MINUTE = 60_000


def _now_ms(step_ms: int) -> int:
    return int(time.time() * 1000) // step_ms * step_ms


def _config(tmp_path: Path, server_url: str, *pipelines: dict, name: str = "pipelines.yaml", **tsdb) -> Path:
    path = tmp_path / name
    settings = {"tsdb": {"url": server_url, "retries": 1, "backoff": "50ms", "timeout": "10s", **tsdb}}
    path.write_text(yaml.safe_dump({"settings": settings, "pipelines": list(pipelines)}, sort_keys=False))
    return path


def _write(server: TSDBServer, series: SeriesMatrix) -> None:
    with PrometheusClient(server.settings) as client:
        client.remote_write(series)
    server.flush()


def _read(server: TSDBServer, query: str, *, start_ms: int, end_ms: int, step_ms: int) -> SeriesMatrix:
    server.flush()
    with PrometheusClient(server.settings) as client:
        return client.query_range(query, start_ms=start_ms, end_ms=end_ms, step_ms=step_ms)


def _synthetic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Level 100 + N(0, 1) noise, a +15 spike and a 30-point +10 level shift.

    Returns the values and the mask of anomalous points."""
    values = 100 + rng.normal(0, 1, n)
    anomalous = np.zeros(n, dtype=bool)
    spike, shift = n - 900, n - 500
    values[spike] += 15
    anomalous[spike] = True
    values[shift : shift + 30] += 10
    anomalous[shift : shift + 30] = True
    return values, anomalous


@pytest.mark.parametrize("server_name", ["victoria_metrics", "prometheus"])
def test_backtest_finds_injected_spike_and_level_shift(server_name, request, tmp_path, capsys):
    server: TSDBServer = request.getfixturevalue(server_name)
    metric = unique_metric("e2e_synth")
    end = _now_ms(10 * MINUTE) - 10 * MINUTE
    start = end - 1440 * MINUTE  # one day scored, after two hours of context
    stamps = np.arange(start - 120 * MINUTE + MINUTE, end + 1, MINUTE, dtype=np.int64)
    rng = np.random.default_rng(7)
    values, anomalous = _synthetic(rng, len(stamps))
    quiet = [50 + rng.normal(0, 2, len(stamps)), 10 + rng.normal(0, 0.1, len(stamps))]  # no anomalies
    labels = [{"__name__": metric, "instance": f"web-{i}", "job": "api"} for i in (1, 2, 3)]
    labels.append({"__name__": metric, "instance": "db-1", "job": "db"})  # not selected by the query
    _write(server, SeriesMatrix.from_rows(labels, stamps, [values, *quiet, values + 1]))

    pipeline = {
        "name": f"{metric}-p",
        "query": f'{metric}{{job="api"}}',
        "step": "1m",
        "model": {"spec": "mad", "alias": "mad-robust"},
        "schedule": {"infer_every": "10m", "context": "2h"},
        "scoring": {"quantiles": [0.0005, 0.9995]},
        "output": {"extra_labels": {"env": "test"}},
    }
    once = pipeline | {"name": f"{metric}-once"}
    config = _config(tmp_path, server.url, pipeline, once)
    argv = ["backtest", "-c", str(config), "--start", str(start // 1000), "--end", str(end // 1000)]
    assert main([*argv, "--pipeline", pipeline["name"], "--batch-chunks", "50"]) == 0
    printed = capsys.readouterr().out
    assert "3/3 series scored, 4320 points" in printed

    scores = _read(
        server,
        f'anomaly_score{{for="{pipeline["name"]}"}}',
        start_ms=start + MINUTE,
        end_ms=end,
        step_ms=MINUTE,
    )
    assert [lab["instance"] for lab in scores.labels] == ["web-1", "web-2", "web-3"]  # sorted by labels
    assert dict(scores.labels[0]) == {
        "__name__": "anomaly_score",
        "instance": "web-1",
        "job": "api",
        "env": "test",
        "for": pipeline["name"],
        "model": "mad-robust",
    }
    assert np.isfinite(scores.values).all()
    score = scores.values[0]
    truth = anomalous[-1440:]
    # The calibration stage alerts once per incident: the spike and the shift's first
    # point cross 1. Every point is scored one step ahead, so the rest of the shift is
    # inside the band and ranks by its sustained rarity (a 60-point mean): above the
    # normal points once it has lasted four points, whatever the 10-point windows.
    spike, *shift = np.flatnonzero(truth)
    assert (score[[spike, shift[0]]] > 1).all(), score[truth]
    assert score[shift[3:]].min() > np.quantile(score[~truth], 0.9), score[truth]
    normal = np.concatenate([score[~truth], scores.values[1], scores.values[2]])
    assert np.mean(normal > 1) < 0.02

    outputs = _read(
        server, f'{{for="{pipeline["name"]}"}}', start_ms=start + MINUTE, end_ms=end, step_ms=MINUTE
    )
    names = sorted(lab["__name__"] for lab in outputs.labels)
    assert names == sorted(["anomaly_score", "yhat", "yhat_lower", "yhat_upper"] * 3)
    rows = {
        (lab["__name__"], lab["instance"]): row
        for lab, row in zip(outputs.labels, outputs.values, strict=True)
    }
    for instance in ("web-1", "web-2", "web-3"):
        lower, yhat, upper = (rows[(name, instance)] for name in ("yhat_lower", "yhat", "yhat_upper"))
        assert (lower <= yhat).all() and (yhat <= upper).all()

    # The TSDB backtest equals the in-memory one over the same input ...
    spec = Pipeline.model_validate(pipeline)
    with PrometheusClient(server.settings) as client:
        series = fetch(client, spec, start_ms=start, end_ms=end)
    expected = score_range(series, spec, load_forecaster("mad"), start_ms=start, end_ms=end)
    np.testing.assert_allclose(scores.values, expected.anomaly_score, rtol=1e-12)

    # ... and a scheduled `run --once` writes exactly what the backtest wrote for its window.
    assert (
        main(["run", "-c", str(config), "--once", "--pipeline", once["name"], "--now", str(end // 1000)]) == 0
    )
    assert "3/3 series scored, 30 points" in capsys.readouterr().out
    live = _read(
        server,
        f'anomaly_score{{for="{once["name"]}"}}',
        start_ms=end - 9 * MINUTE,
        end_ms=end,
        step_ms=MINUTE,
    )
    np.testing.assert_allclose(live.values, scores.values[:, -10:], rtol=1e-12)


def test_backtest_on_labelled_nab_series(victoria_metrics, tmp_path, capsys):
    name = "ec2_request_latency_system_failure.csv"  # a NAB file with its labels, in the repository
    windows = json.loads((EXAMPLES / "labels.json").read_text())[name]
    step = 5 * MINUTE
    metric = unique_metric("e2e_nab")
    series = read_csv_series(EXAMPLES / name, step_ms=step, name=metric)
    shift = _now_ms(step) - step - int(series.timestamps[-1])  # end near now: no retention limits
    stamps = series.timestamps + shift
    _write(victoria_metrics, SeriesMatrix(({"__name__": metric},), stamps, series.values))

    pipeline = {
        "name": f"{metric}-p",
        "query": metric,
        "step": "5m",
        "model": "default",
        "schedule": {"infer_every": "5m", "context": "1d"},
        "scoring": {"quantiles": [0.005, 0.995]},
    }
    config = _config(tmp_path, victoria_metrics.url, pipeline)
    start, end = int(stamps[0]), int(stamps[-1])
    assert (
        main(["backtest", "-c", str(config), "--start", str(start // 1000), "--end", str(end // 1000)]) == 0
    )
    assert "top 10 of" in capsys.readouterr().out

    scores = _read(
        victoria_metrics,
        f'anomaly_score{{for="{pipeline["name"]}"}}',
        start_ms=start,
        end_ms=end,
        step_ms=step,
    )
    assert len(scores) == 1
    score, ts = scores.values[0], scores.timestamps
    # Warm-up (no score) lies within the first day: the pipeline's whole context.
    assert np.isfinite(score).sum() >= np.isfinite(series.values).sum() - 288
    for begin, finish in windows:
        inside = (ts >= parse_time(begin) + shift) & (ts <= parse_time(finish) + shift)
        assert inside.sum() > 50
        assert np.nanmax(score[inside]) > 1, (begin, finish)


# ------------------------------------------------------------------------------------------ bad input


def _assert_nothing_written(
    server: TSDBServer, pipeline_names: list[str], *, start_ms: int, end_ms: int
) -> None:
    for name in pipeline_names:
        found = _read(server, f'{{for="{name}"}}', start_ms=start_ms, end_ms=end_ms, step_ms=MINUTE)
        assert len(found) == 0, (name, found.labels)


def _fail(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.startswith("error: ")
    return captured.err


@pytest.fixture
def loaded_metric(victoria_metrics):
    """A one-hour 1m series in VM; yields (metric, start_ms, end_ms)."""
    metric = unique_metric("e2e_bad")
    end = _now_ms(MINUTE)
    stamps = np.arange(end - 120 * MINUTE, end + 1, MINUTE, dtype=np.int64)
    _write(victoria_metrics, SeriesMatrix.from_rows([{"__name__": metric}], stamps, [np.ones(len(stamps))]))
    return metric, end - 60 * MINUTE, end


def _pipe(name: str, query: str, model: str = "mad") -> dict:
    return {"name": name, "query": query, "model": model, "schedule": {"context": "30m"}}


def test_malformed_yaml_and_unknown_model(victoria_metrics, loaded_metric, tmp_path, capsys):
    metric, start, end = loaded_metric
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text(f"settings: {{tsdb: {{url: {victoria_metrics.url}}}\npipelines: [\n")
    err = _fail(["backtest", "-c", str(bad_yaml), "--start", str(start // 1000)], capsys)
    assert f"{bad_yaml}: malformed YAML: line" in err

    config = _config(
        tmp_path,
        victoria_metrics.url,
        _pipe(f"{metric}-ok", metric),
        _pipe(f"{metric}-x", metric, "chronoz:bolt"),
    )
    err = _fail(["backtest", "-c", str(config), "--start", str(start // 1000)], capsys)
    assert (
        f"pipeline '{metric}-x': field 'pipelines[1].model.spec': model 'chronoz:bolt': unknown model" in err
    )
    _assert_nothing_written(victoria_metrics, [f"{metric}-ok", f"{metric}-x"], start_ms=start, end_ms=end)


def test_query_with_no_series_fails_before_any_write(victoria_metrics, loaded_metric, tmp_path, capsys):
    metric, start, end = loaded_metric
    good, empty = _pipe(f"{metric}-ok", metric), _pipe(f"{metric}-none", f"{metric}_missing")
    config = _config(tmp_path, victoria_metrics.url, good, empty)
    argv = ["-c", str(config), "--start", str(start // 1000), "--end", str(end // 1000)]
    err = _fail(["backtest", *argv], capsys)
    assert f"pipeline '{metric}-none': query '{metric}_missing' returned no series" in err
    err = _fail(["run", "--once", "-c", str(config), "--now", str(end // 1000)], capsys)
    assert "returned no series" in err
    _assert_nothing_written(victoria_metrics, [good["name"], empty["name"]], start_ms=start, end_ms=end)


def test_all_nan_series(prometheus, tmp_path, capsys):
    # Prometheus returns NaN samples as such (VictoriaMetrics drops them: "no series").
    metric = unique_metric("e2e_nan")
    end = _now_ms(MINUTE)
    stamps = np.arange(end - 90 * MINUTE, end + 1, MINUTE, dtype=np.int64)
    _write(
        prometheus,
        SeriesMatrix.from_rows([{"__name__": metric}], stamps, [np.arange(len(stamps), dtype=float)]),
    )
    pipeline = _pipe(f"{metric}-p", f"({metric} - {metric}) / 0")
    config = _config(tmp_path, prometheus.url, pipeline)
    err = _fail(
        [
            "backtest",
            "-c",
            str(config),
            "--start",
            str((end - 60 * MINUTE) // 1000),
            "--end",
            str(end // 1000),
        ],
        capsys,
    )
    assert "have no finite value (all NaN)" in err
    _assert_nothing_written(prometheus, [pipeline["name"]], start_ms=end - 60 * MINUTE, end_ms=end)


def test_unreachable_tsdb_in_a_real_process(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _config(tmp_path, f"http://127.0.0.1:{port}", _pipe("p", "up"), retries=0, timeout="2s")
    done = subprocess.run(
        [sys.executable, "-m", "openanomaly.cli", "backtest", "-c", str(config), "--start", "now-1h"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _pipe_every_minute(name: str, query: str) -> dict:
    return {"name": name, "query": query, "model": "mad", "schedule": {"infer_every": "1m", "context": "30m"}}


def test_run_is_the_scheduler_in_the_foreground(victoria_metrics, tmp_path):
    """``openanomaly run -c FILE``: scores on schedule on a local Ray; SIGTERM (``docker
    stop``, Kubernetes) stops it cleanly, through the same path as Ctrl-C."""
    import signal

    metric = unique_metric("fg")
    now = _now_ms(MINUTE)
    stamps = np.arange(now - 60 * MINUTE, now + 1, MINUTE, dtype=np.int64)
    rng = np.random.default_rng(3)
    _write(
        victoria_metrics,
        SeriesMatrix(({"__name__": metric, "host": "a"},), stamps, rng.normal(5, 1, (1, 61))),
    )
    config = _config(tmp_path, victoria_metrics.url, _pipe_every_minute("fg", metric))
    process = subprocess.Popen(
        [sys.executable, "-m", "openanomaly.cli", "run", "-c", str(config), "--tick", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "scheduling 1 pipelines" in first and "Ctrl-C or SIGTERM stops" in first, first
        done = process.stdout.readline()  # the first window (the latest complete minute)
        assert "fg: window to" in done and "1/1 series scored" in done, done
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "stopping" in err and "Traceback" not in err
    scores = _read(
        victoria_metrics,
        'anomaly_score{for="fg"}',
        start_ms=now - 5 * MINUTE,
        end_ms=now + MINUTE,
        step_ms=MINUTE,
    )
    assert len(scores) == 1


def test_run_with_a_bad_config_is_an_error_not_a_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("settings:\n  tsdb:\n    url: ${NOT_SET_ANYWHERE}\npipelines: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "openanomaly.cli", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "NOT_SET_ANYWHERE" in done.stderr
    assert "Traceback" not in done.stderr
