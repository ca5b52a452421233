"""The CLI without a TSDB: validate, the bundled example, argument errors."""

import textwrap
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from openanomaly.cli import EXAMPLES_DIR, _parser, main
from openanomaly.core.times import parse_time
from openanomaly.errors import UsageError

VALID = """\
settings: {tsdb: {url: "http://127.0.0.1:1"}}
pipelines:
  - {name: cpu, query: up, model: mad}
"""


def test_parse_time_forms():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    expected = int(now.timestamp() * 1000)
    assert parse_time("2024-05-01T12:00:00Z") == expected
    assert parse_time("2024-05-01T14:00:00+02:00") == expected
    assert parse_time("2024-05-01 12:00:00") == expected  # naive = UTC
    assert parse_time(str(expected // 1000)) == expected
    assert parse_time("1714564800.5") == expected + 500
    assert parse_time("now", now=now) == expected
    assert parse_time("now-1h30m", now=now) == expected - 5_400_000
    with pytest.raises(UsageError, match="invalid time 'yesterday'"):
        parse_time("yesterday")


def test_validate_ok(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(VALID)
    assert main(["validate", str(path)]) == 0
    assert "OK (1 pipelines: cpu)" in capsys.readouterr().out


def test_validate_lists_every_error_without_traceback(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            settings: {tsdb: {url: "http://127.0.0.1:1"}}
            pipelines:
              - {name: cpu, query: up, model: "chronoz:x", step: 5 minutes}
            """
        )
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"error: {path}: pipeline 'cpu': field 'pipelines[0].") for line in lines)
    assert "unknown model" in err and "invalid duration '5 minutes'" in err
    assert "Traceback" not in err


def test_validate_reports_what_a_run_would_reject(tmp_path, capsys, monkeypatch):
    """Quantiles, context, params, fit schedule and an unset variable: all listed, exit 2."""
    monkeypatch.delenv("QUERY", raising=False)
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            settings: {tsdb: {url: "http://127.0.0.1:1"}}
            pipelines:
              - {name: bolt, query: up, model: "chronos:amazon/chronos-bolt-small"}
              - name: naive
                query: ${QUERY}
                model: {spec: "statsforecast:SeasonalNaive", params: {season_length: 1440}}
              - {name: dflt, query: up, model: {spec: default, params: {histroy: 100}}}
              - {name: nhits, query: up, model: "neuralforecast:NHITS"}
            """
        )
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    expected = [
        ("bolt", "pipelines[0].scoring.quantiles", "0.1..0.9 only"),
        ("naive", "pipelines[1].query", "'QUERY' is not set"),
        ("naive", "pipelines[1].schedule.context", "needs at least 1441"),
        ("dflt", "pipelines[2].model.params", "unknown params ['histroy']"),
        ("nhits", "pipelines[3].schedule.fit_every", "must be trained"),
    ]
    assert len(lines) == len(expected), err
    for pipeline, field, message in expected:
        prefix = f"error: {path}: pipeline {pipeline!r}: field {field!r}: "
        assert any(line.startswith(prefix) and message in line for line in lines), (prefix, err)


def test_validate_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("pipelines: [\n  {name: a\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: malformed YAML: line ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "-c", "{cfg}", "--pipeline", "cpu"], "--pipeline works with --once"),
        (["backtest", "-c", "{cfg}", "--start", "now-1h", "--top", "-1"], "--top must be 0 or more"),
        (["run", "-c", "{cfg}", "--once", "--pipeline", "nope"], "no pipeline named 'nope' (defined: cpu)"),
        (["backtest", "-c", "{cfg}", "--start", "now-1h", "--end", "now-2h"], "is not after --start"),
        (["backtest", "-c", "{cfg}", "--start", "now-1h", "--out", "x.json"], "must end in .csv or .parquet"),
        (["backtest", "-c", "{cfg}", "--start", "soon"], "invalid time 'soon'"),
        (["backtest", "-c", "{cfg}", "--start", "now-5q"], "invalid time 'now-5q'"),
        (["validate", "{dir}/missing.yaml"], "missing.yaml: file not found"),
        (["example", "--model", "prophet"], "--model 'prophet': model 'prophet': unknown model"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, argv, message):
    path = tmp_path / "p.yaml"
    path.write_text(VALID)
    argv = [a.format(cfg=path, dir=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err


def test_example_runs_without_tsdb(tmp_path, capsys):
    out = tmp_path / "example.csv"
    assert main(["example", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "with model default" in text  # the quick start runs the default model and policy
    assert text.count(": detected by ") == 3  # all three labelled NAB windows
    assert "false alarms: none" in text
    assert "recall 3/3 windows = 1.00" in text
    frame = pd.read_csv(out)
    assert list(frame.columns) == [
        "timestamp",
        "pipeline",
        "series",
        "value",
        "anomaly_score",
        "yhat",
        "yhat_lower",
        "yhat_upper",
    ]
    assert len(frame) == 2592  # 14 days less 5 days of context, at 5 min
    assert (frame["yhat_lower"] <= frame["yhat_upper"]).all()


def test_example_parquet_and_other_model(tmp_path, capsys):
    out = tmp_path / "example.parquet"
    assert main(["example", "--out", str(out), "--model", "mad"]) == 0
    text = capsys.readouterr().out
    assert "with model mad" in text
    # Every model reports its false alarms next to its detections (mad goes through the
    # calibration stage too, so it no longer floods).
    assert "false alarms" in text and "precision" in text and "recall 3/3 windows" in text
    assert len(pd.read_parquet(out)) == 2592


def test_example_with_the_shipped_chronos(tmp_path, capsys):
    """``example --model chronos:openanomaly-bolt-mini`` runs as the README writes it: the
    example's 0.05/0.95 band is narrowed, aloud, to the 0.1/0.9 that Bolt forecasts."""
    out = tmp_path / "example.csv"
    assert main(["example", "--out", str(out), "--model", "chronos:openanomaly-bolt-mini"]) == 0
    text = capsys.readouterr().out
    assert "band [0.05, 0.95] narrowed to [0.1, 0.9]" in text
    assert "with model chronos:openanomaly-bolt-mini" in text and "recall" in text
    frame = pd.read_csv(out)
    assert len(frame) == 2592 and (frame["yhat_lower"] <= frame["yhat_upper"]).all()


def test_bundled_pipelines_file_validates(capsys, monkeypatch):
    monkeypatch.delenv("TSDB_URL", raising=False)
    monkeypatch.delenv("TSDB_TOKEN", raising=False)
    assert main(["validate", str(EXAMPLES_DIR / "pipelines.yaml")]) == 0
    assert main(["validate", str(EXAMPLES_DIR / "example.yaml")]) == 0
    assert capsys.readouterr().out.count(": OK (") == 2


def test_bundled_pipelines_file_runs(monkeypatch):
    """What validate accepts in the shipped file also runs: every pipeline scores a window,
    the Chronos one with the Chronos-Bolt shipped in the package, as a user's would."""
    from openanomaly.configstore.files import YamlConfigStore
    from openanomaly.core.detect import score_range
    from openanomaly.core.series import SeriesMatrix
    from openanomaly.models.registry import load_forecaster

    config = YamlConfigStore(EXAMPLES_DIR / "pipelines.yaml", env={}).load()
    step = 60_000
    points = 1440 + 20
    t = np.arange(points, dtype=np.int64) * step + 1_700_000_000_000 // step * step
    noise = np.random.default_rng(0).normal(0, 0.1, (2, points))
    values = 10 + np.sin(np.arange(points) / 30)[None, :] + noise
    series = SeriesMatrix(({"instance": "a"}, {"instance": "b"}), t, values)
    for pipeline in config.pipelines:
        forecaster = load_forecaster(pipeline.model.spec, **pipeline.model.params)
        start = int(t[-1]) - 10 * pipeline.step_ms
        detection = score_range(series, pipeline, forecaster, start_ms=start, end_ms=int(t[-1]))
        assert np.isfinite(detection.anomaly_score).all(), pipeline.name


@pytest.mark.parametrize(
    ("argv", "level"),
    [(["validate"], 0), (["-v", "validate"], 1), (["validate", "-v"], 1), (["-vv", "validate"], 2)],
)
def test_verbose_flag_before_or_after_command(argv, level):
    assert _parser().parse_args([*argv, "p.yaml"]).verbose == level


def test_playground_bad_config_is_a_user_error(tmp_path, capsys):
    assert main(["playground", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_playground_serves_its_page(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "openanomaly.cli", "playground", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "playground did not start in 120 s"
                time.sleep(0.5)
        assert page.status_code == 200
        assert "gradio" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_backtest_summary_says_how_many_points_were_warm_up(capsys):
    # Points whose residual record is shorter than min_history get no score: they are not
    # in the CSV or the episodes, and the summary counts them and says why.
    from openanomaly.cli import _print_result
    from openanomaly.runtime.window import RunResult

    _print_result(RunResult("p", 0, 3_600_000, 1, 1, 40, 0, 160, points_in=60))
    out = capsys.readouterr().out
    assert "20 points not scored: warm-up" in out and "min_history" in out
