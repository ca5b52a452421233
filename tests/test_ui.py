"""The Gradio playground: the compute path against a real VictoriaMetrics, CSV mode, readable
errors, and the page built and mounted on a FastAPI app (no browser)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from openanomaly.core.config import TSDBSettings, parse_duration
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import DataError, QueryError
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.ui import Playground, build_playground, make_chart, mount_playground, run_csv, run_query
from openanomaly.ui.compute import (
    PlaygroundInputError,
    build_pipeline,
    chart_json,
    infer_step,
    resolve_range,
)
from openanomaly.ui.explore_tab import AD_HOC, SOURCES
from tests.fixtures.servers import TSDBServer, free_port, unique_metric

MINUTE = 60_000
POINTS = 240  # 4 h at 1 min: 1 h context + 3 h scored
SPIKE_AT = 200


def _series(seed: int, *, spike: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = 10 + np.sin(np.arange(POINTS) / 15) + rng.normal(0, 0.1, POINTS)
    if spike:
        values[SPIKE_AT] += 8
    return values


@pytest.fixture(scope="module")
def spiky(victoria_metrics: TSDBServer) -> tuple[str, int, int]:
    """Two series of one new metric in VictoriaMetrics: ``host=a`` with a spike, ``host=b`` without.

    Returns ``(metric, first_ms, last_ms)``.
    """
    metric = unique_metric("ui")
    last = (1_700_000_000_000 // MINUTE) * MINUTE
    stamps = last - MINUTE * np.arange(POINTS - 1, -1, -1, dtype=np.int64)
    values = np.stack([_series(1, spike=True), _series(2, spike=False)])
    labels = ({"__name__": metric, "host": "a"}, {"__name__": metric, "host": "b"})
    with PrometheusClient(victoria_metrics.settings) as client:
        client.remote_write(SeriesMatrix(labels, stamps, values))
    victoria_metrics.flush()
    return metric, int(stamps[0]), int(stamps[-1])


def _pipeline(query: str, **overrides: object):
    form = {"query": query, "model": "mad", "step": "1m", "context": "1h", "infer_every": "1m"}
    return build_pipeline(**(form | overrides))


# ----------------------------------------------------------------------------- compute, real TSDB


@pytest.mark.integration
def test_run_query_flags_the_spike_and_draws_band(
    victoria_metrics: TSDBServer, spiky: tuple[str, int, int]
) -> None:
    metric, first, last = spiky
    # last_over_time: the raw samples, not the lookback-filled ones (see tests/fixtures/servers.py).
    pipeline = _pipeline(f"last_over_time({metric}[59s])")
    with PrometheusClient(victoria_metrics.settings) as client:
        result = run_query(client, pipeline, start_ms=first + 60 * MINUTE, end_ms=last)

    detection = result.detection
    assert [dict(labels)["host"] for labels in detection.labels] == ["a", "b"]
    assert result.shown == (0, 1) and result.hidden == ()
    spike_ms = first + SPIKE_AT * MINUTE
    column = int(np.flatnonzero(detection.timestamps == spike_ms)[0])
    assert detection.anomaly_score[0, column] > 1
    assert np.isfinite(detection.yhat_lower[0]).sum() > 100
    assert np.nanmax(detection.anomaly_score[1]) < np.nanmax(detection.anomaly_score[0])
    top = result.episodes.iloc[0]
    assert 'host="a"' in top["series"] and top["max_score"] > 1
    spike_text = str(np.datetime64(spike_ms, "ms")).replace("T", " ")[:19] + "Z"
    assert top["start"] <= spike_text <= top["end"]

    frame = result.frame(0)
    assert list(frame.columns) == ["time", "value", "yhat", "yhat_lower", "yhat_upper", "score", "anomalous"]
    assert bool(frame["anomalous"].iloc[column])
    spec = json.loads(chart_json(make_chart(result)))
    assert len(spec["vconcat"]) == 2  # one (values, score) pair per series
    marks = json.dumps(spec)
    assert '"area"' in marks and '"yhat_upper"' in marks and "anomaly (score > 1)" in marks
    assert f"**{result.anomalies} anomalous**" in result.summary() and result.anomalies >= 1


@pytest.mark.integration
def test_run_query_limits_series_shown_and_says_how_many_hidden(
    victoria_metrics: TSDBServer, spiky: tuple[str, int, int]
) -> None:
    metric, _, last = spiky
    with PrometheusClient(victoria_metrics.settings) as client:
        result = run_query(
            client,
            _pipeline(f"last_over_time({metric}[59s])"),
            start_ms=last - 90 * MINUTE,
            end_ms=last,
            max_series=1,
        )
    # The most anomalous series is drawn; the other is named as hidden.
    assert result.shown == (0,)
    assert [dict(labels)["host"] for labels in result.hidden] == ["b"]
    assert "Showing 1 of 2 series" in result.summary() and 'host="b"' in result.summary()
    assert len(json.loads(chart_json(make_chart(result)))["vconcat"]) == 1


@pytest.mark.integration
def test_bad_promql_no_series_and_unreachable_tsdb_are_readable_errors(victoria_metrics: TSDBServer) -> None:
    now = 1_700_000_000_000
    with PrometheusClient(victoria_metrics.settings) as client:
        with pytest.raises(QueryError) as bad:
            run_query(client, _pipeline("rate(up[5m]"), start_ms=now - 30 * MINUTE, end_ms=now)
        assert "rate(up[5m]" in str(bad.value)
        with pytest.raises(DataError, match="returned no series"):
            run_query(client, _pipeline(unique_metric("absent")), start_ms=now - 30 * MINUTE, end_ms=now)
    nowhere = TSDBSettings(url=f"http://127.0.0.1:{free_port()}", retries=0, timeout=2)
    with PrometheusClient(nowhere) as client, pytest.raises(QueryError) as down:
        run_query(client, _pipeline("up"), start_ms=now - 30 * MINUTE, end_ms=now)
    assert nowhere.url in str(down.value)


# ----------------------------------------------------------------------------- the Run handler


def _form(**overrides: object) -> list[object]:
    form = {
        "source": SOURCES[0],
        "pipeline_name": AD_HOC,
        "query": "",
        "tsdb_url": "",
        "range_choice": "last 6h",
        "start": "",
        "end": "",
        "csv_path": None,
        "model": "mad",
        "step": "1m",
        "context": "1h",
        "infer_every": "1m",
        "q_low": 0.05,
        "q_high": 0.95,
        "max_series": 6,
    } | overrides
    return list(form.values())


@pytest.mark.integration
def test_handler_runs_a_configured_pipeline_and_shows_errors_as_gr_error(
    victoria_metrics: TSDBServer, spiky: tuple[str, int, int], tmp_path: Path
) -> None:
    metric, _, last = spiky
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "settings": {"tsdb": {"url": victoria_metrics.url, "retries": 0}},
                "pipelines": [
                    {
                        "name": "spiky",
                        "query": f"last_over_time({metric}[59s])",
                        "model": "zscore",
                        "schedule": {"infer_every": "2m", "context": "1h"},
                        "scoring": {"quantiles": [0.01, 0.99]},
                    }
                ],
            }
        )
    )
    from openanomaly.configstore.files import YamlConfigStore

    playground = Playground(config=YamlConfigStore(path), clock=lambda: last)
    assert playground.pipeline_names() == [AD_HOC, "spiky"]
    form = playground.form_for("spiky")
    assert form["model"] == "zscore" and form["infer_every"] == "2m" and form["q_low"] == 0.01

    plot, summary, episodes = playground.handle(
        *_form(
            pipeline_name="spiky",
            query=form["query"],
            model="zscore",
            infer_every="2m",
            q_low=0.01,
            q_high=0.99,
        )
    )
    assert plot is not None and plot.type == "altair" and json.loads(plot.plot)["vconcat"]
    assert "**spiky**" in summary and "zscore" in summary
    assert len(episodes) >= 1

    with pytest.raises(gr.Error) as bad:
        playground.handle(*_form(pipeline_name=AD_HOC, query="sum(", tsdb_url=victoria_metrics.url))
    assert "sum(" in bad.value.message and "Traceback" not in bad.value.message
    with pytest.raises(gr.Error, match="returned no series"):
        playground.handle(*_form(query=unique_metric("absent"), tsdb_url=victoria_metrics.url))
    with pytest.raises(gr.Error, match="Query: enter a PromQL query"):
        playground.handle(*_form(query="  "))
    with pytest.raises(gr.Error, match="no pipeline named 'gone'"):
        playground.handle(*_form(pipeline_name="gone", query="up"))


def _page_function(blocks: gr.Blocks, name: str):
    """The page's event handler called ``name`` (as Gradio wired it: its inputs and outputs)."""
    return next(fn for fn in blocks.fns.values() if getattr(fn.fn, "__name__", None) == name)


@pytest.mark.integration
def test_run_reads_the_tsdb_url_of_the_file_now_without_a_restart(
    victoria_metrics: TSDBServer, spiky: tuple[str, int, int], tmp_path: Path
) -> None:
    """The file's ``settings.tsdb.url`` is edited after the page was built (and loaded): the next
    Run, with the values the unreloaded page holds, queries the new URL and shows it."""
    metric, first, last = spiky

    def write(url: str) -> None:
        pipeline = {"name": "spiky", "query": f"last_over_time({metric}[59s])", "model": "mad"}
        tsdb = {"url": url, "retries": 0, "timeout": 2}
        path.write_text(
            yaml.safe_dump({"settings": {"tsdb": tsdb}, "pipelines": [pipeline | {"step": "1m"}]})
        )

    path = tmp_path / "pipelines.yaml"
    nowhere = f"http://127.0.0.1:{free_port()}"
    write(nowhere)
    blocks = build_playground(config=path)
    handle, clear = _page_function(blocks, "handle"), _page_function(blocks, "clear")
    shown = next(c for c in blocks.blocks.values() if isinstance(c, gr.Textbox) and c.label == "TSDB URL")
    assert shown.value == nowhere and shown.interactive is False  # shown, not typed
    page = {component: getattr(component, "value", None) for component in handle.inputs}
    by_label = {getattr(component, "label", None): component for component in handle.inputs}
    page[by_label["Range"]] = "custom"
    page[by_label["Start"]] = str((first + 60 * MINUTE) // 1000)
    page[by_label["End"]] = str(last // 1000)
    values = [page[component] for component in handle.inputs]
    with pytest.raises(gr.Error, match=nowhere.removeprefix("http://")):
        handle.fn(*values)

    write(victoria_metrics.url)  # as `serve run`'s log asks: edit the file, no restart
    assert clear.fn()[-1] == victoria_metrics.url  # the page shows the URL this run queries
    plot, summary, episodes = handle.fn(*values)  # the same, unreloaded page
    assert plot is not None and "**spiky**" in summary and len(episodes) >= 1
    load = _page_function(blocks, "<lambda>")
    assert load.fn()[1] == victoria_metrics.url  # and a reload shows it too


def test_credentials_stay_with_the_configured_tsdb() -> None:
    configured = TSDBSettings(url="http://vm.internal:8428", bearer_token="secret")
    playground = Playground(tsdb=configured)
    assert playground.tsdb_settings("") is configured
    assert playground.tsdb_settings("http://vm.internal:8428/") is configured
    for other in ("http://127.0.0.1:8428/metrics#", "localhost:9090", "file:///etc/passwd"):
        with pytest.raises(PlaygroundInputError, match="only the configured TSDB"):
            playground.tsdb_settings(other)
    with pytest.raises(PlaygroundInputError, match="no TSDB is configured"):
        Playground().tsdb_settings("http://127.0.0.1:8428")


def test_only_registry_names_configured_models_and_the_models_root_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's allow-list (openanomaly.models.trust), the one check for both."""
    from openanomaly.models.trust import MODELS_ROOT_ENV

    monkeypatch.delenv(MODELS_ROOT_ENV, raising=False)
    playground = Playground(tsdb=TSDBSettings(url="http://vm.internal:8428"))
    for spec in (
        "statsforecast:AutoETS",
        "chronos:amazon/chronos-bolt-small",
        "chronos:openanomaly-bolt-mini",
    ):
        playground.check_model(spec)
    inside = tmp_path / "models" / "bolt"
    inside.mkdir(parents=True)
    evil = (
        "chronos:/tmp/evil-checkpoint",
        "chronos:../../../tmp/x",
        "chronos:someone/model",
        f"chronos:{inside}",
    )
    for spec in evil:
        with pytest.raises(PlaygroundInputError, match="a checkpoint can run code"):
            playground.check_model(spec)
    monkeypatch.setenv(MODELS_ROOT_ENV, str(tmp_path / "models"))
    playground.check_model(f"chronos:{inside}")
    with pytest.raises(PlaygroundInputError, match=r"under .*models \(an absolute path\)"):
        playground.check_model(f"chronos:{inside}/../../elsewhere")


# ----------------------------------------------------------------------------- CSV mode


def _write_csv(path: Path, *, spike: bool = True) -> Path:
    stamps = np.datetime64("2024-05-01T00:00:00") + np.arange(POINTS) * np.timedelta64(5, "m")
    lines = ["timestamp,value"] + [
        f"{str(t).replace('T', ' ')},{v:.4f}" for t, v in zip(stamps, _series(3, spike=spike), strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_mode_scores_an_uploaded_file_without_a_tsdb(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "upload.csv")
    result = run_csv(path, _pipeline("unused", step="5m", context="2h", infer_every="5m"))
    detection = result.detection
    assert detection.timestamps[0] == np.datetime64("2024-05-01T02:00", "ms").astype(np.int64)
    spike_ms = int(np.datetime64("2024-05-01T00:00", "ms").astype(np.int64)) + SPIKE_AT * 5 * MINUTE
    column = int(np.flatnonzero(detection.timestamps == spike_ms)[0])
    assert detection.anomaly_score[0, column] > 1
    assert result.episodes.iloc[0]["max_score"] == pytest.approx(np.nanmax(detection.anomaly_score), abs=1e-3)

    plot, summary, episodes = Playground().handle(
        *_form(source=SOURCES[1], csv_path=str(path), step="5m", context="2h", infer_every="5m")
    )
    assert plot is not None and "1/1 series scored" in summary and len(episodes) >= 1


def test_csv_step_is_inferred_from_the_file(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "five-minutes.csv")
    assert infer_step(path) == "5m"
    # A blank step (what the upload handler would have filled in) takes the file's own.
    plot, summary, _ = Playground().handle(
        *_form(source=SOURCES[1], csv_path=str(path), step="", infer_every="", context="2h")
    )
    assert plot is not None and "step 5m" in summary and "0/1 series" not in summary
    single = tmp_path / "one.csv"
    single.write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    with pytest.raises(PlaygroundInputError, match=r"CSV file: 'one\.csv' needs at least two timestamps"):
        infer_step(single)


def test_ad_hoc_form_defaults_give_default_days_of_context() -> None:
    form = Playground().form_for(AD_HOC)
    assert form["model"] == "default"
    assert parse_duration(form["context"]) >= timedelta(days=5)  # not the config's 1h
    pipeline = build_pipeline(
        **{key: form[key] for key in ("model", "step", "context", "infer_every")}, query="up"
    )
    assert pipeline.context_points >= 2 * 1440  # a record of days beside two past days


def test_the_playground_and_example_agree_on_the_example_file(capsys, tmp_path: Path) -> None:
    # The same CSV through the playground's ad-hoc form (the file's own step) and through
    # `openanomaly example`: the same context, so the same anomalies; the page says which.
    from openanomaly.cli import EXAMPLES_DIR, main

    data = EXAMPLES_DIR / "data" / "ec2_request_latency_system_failure.csv"
    _plot, summary, episodes = Playground().handle(
        *_form(source=SOURCES[1], csv_path=str(data), model="default", step="", infer_every="", context="5d")
    )
    assert Playground().form_for(AD_HOC)["context"] == "5d" and "context 5d" in summary
    assert main(["example", "--out", str(tmp_path / "example.csv")]) == 0
    printed = capsys.readouterr().out
    assert f"above 1 in {len(episodes)} episodes" in printed


def test_csv_mode_errors_name_the_file_or_field(tmp_path: Path) -> None:
    playground = Playground()
    with pytest.raises(gr.Error, match="CSV file: upload"):
        playground.handle(*_form(source=SOURCES[1]))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,v\n2024-01-01,1\n")
    with pytest.raises(gr.Error, match="expected columns 'timestamp,value'"):
        playground.handle(*_form(source=SOURCES[1], csv_path=str(wrong)))
    short = _write_csv(tmp_path / "short.csv")
    with pytest.raises(gr.Error, match="needs more than the context"):
        playground.handle(
            *_form(source=SOURCES[1], csv_path=str(short), step="5m", infer_every="5m", context="1d")
        )
    with pytest.raises(gr.Error, match=r"Forecast every: schedule.infer_every .* whole multiple of step"):
        playground.handle(
            *_form(source=SOURCES[1], csv_path=str(short), step="5m", infer_every="1m", context="1d")
        )


# ----------------------------------------------------------------------------- form checks


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"step": "5 minutes"}, "Step"),
        ({"context": "0s"}, "Context"),
        ({"infer_every": "x"}, "Forecast every"),
        ({"model": "prophet"}, "Model"),
        ({"model": ""}, "Model"),
        ({"quantiles": (0.6, 0.9)}, "Band quantiles"),
        ({"step": "2h", "context": "1h"}, "Context"),
    ],
)
def test_bad_form_values_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(PlaygroundInputError) as error:
        _pipeline("up", **overrides)
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")


def test_ranges() -> None:
    now = 1_700_000_000_000
    assert resolve_range("last 6h", now_ms=now) == (now - 6 * 3600_000, now)
    assert resolve_range("last 7d", now_ms=now) == (now - 7 * 86_400_000, now)
    assert resolve_range("custom", start="now-2h", end="now-1h", now_ms=now) == (
        now - 7_200_000,
        now - 3_600_000,
    )
    assert resolve_range("custom", start="2024-05-01T00:00:00Z", end="2024-05-01T01:00:00Z", now_ms=now)[
        1
    ] == (1_714_525_200_000)
    with pytest.raises(PlaygroundInputError, match="Start: invalid time 'yesterday'"):
        resolve_range("custom", start="yesterday", end="now", now_ms=now)
    with pytest.raises(PlaygroundInputError, match="End:"):
        resolve_range("custom", start="now-1h", end="now-2h", now_ms=now)


def test_too_many_points_is_refused_before_fetching() -> None:
    # Nothing listens on this port: the range check must fail first.
    nowhere = TSDBSettings(url=f"http://127.0.0.1:{free_port()}", retries=0)
    with (
        PrometheusClient(nowhere) as client,
        pytest.raises(PlaygroundInputError, match=r"Range: .*larger step"),
    ):
        run_query(client, _pipeline("up", step="1s"), start_ms=0, end_ms=86_400_000)


# ----------------------------------------------------------------------------- page and mounting


def test_build_playground_and_mount_on_fastapi(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "settings": {"tsdb": {"url": "http://127.0.0.1:8428"}},
                "pipelines": [{"name": "cpu-busy", "query": "rate(cpu[5m])", "model": "mad"}],
            }
        )
    )
    blocks = build_playground(config=path)
    assert isinstance(blocks, gr.Blocks)
    dropdowns = [c for c in blocks.blocks.values() if isinstance(c, gr.Dropdown) and c.label == "Pipeline"]
    assert [choice[0] for choice in dropdowns[0].choices] == [AD_HOC, "cpu-busy"]

    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    assert mount_playground(app, path="/playground", config=path) is app
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"ok": True}
        page = client.get("/playground/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        config = client.get("/playground/config").json()
        labels = {component.get("props", {}).get("label") for component in config["components"]}
        assert {"Pipeline", "Query", "Model", "Range", "Forecast band and anomalies"} <= labels


def test_mount_refuses_requests_the_auth_dependency_rejects() -> None:
    app = FastAPI()
    mount_playground(app, auth_dependency=lambda request: request.headers.get("x-user"))
    with TestClient(app) as client:
        assert client.get("/playground/config", headers={"x-user": "ana"}).status_code == 200
        assert client.get("/playground/config").status_code in (401, 403)
