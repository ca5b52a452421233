"""The playground's Pipelines tab handlers with plain calls: a real YAML store, a real
VictoriaMetrics for the backtest, and the admin's change log (who, what)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from openanomaly.configstore.admin import PipelineAdmin, PipelineInvalid
from openanomaly.configstore.stores import open_stores
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import PipelineNotFound, PlaygroundInputError, PreconditionFailed
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.ui.app import Playground
from openanomaly.ui.pipelines_tab import NEW, TEMPLATE, PipelinesPanel
from tests.fixtures.servers import TSDBServer, unique_metric

MINUTE = 60_000
ADMIN = ({"authorization": "Bearer admin"}, {})
NOBODY = ({}, {})


def _panel(path: Path, *, writer=None, trigger=None) -> PipelinesPanel:
    admin = PipelineAdmin(path)
    now = 1_700_000_000_000 // MINUTE * MINUTE
    playground = Playground(config=open_stores(path)[0], clock=lambda: now)
    return PipelinesPanel(admin=lambda: admin, playground=playground, writer=writer, trigger=trigger)


@pytest.fixture
def pipelines_file(tmp_path: Path, victoria_metrics: TSDBServer) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"settings": {"tsdb": {"url": victoria_metrics.url}}, "pipelines": []}))
    return path


def test_create_edit_validate_delete_through_the_tab(pipelines_file: Path, caplog) -> None:
    panel = _panel(pipelines_file)
    assert panel.names() == [NEW] and panel.open(NEW) == (TEMPLATE, "")
    with caplog.at_level(logging.INFO, logger="openanomaly.configstore.admin"):
        name, etag, message = panel.save(NEW, TEMPLATE, "", *NOBODY)
    assert name == "my-pipeline" and "created" in message
    assert any(
        "created by playground" in r.getMessage() and "my-pipeline" in r.getMessage() for r in caplog.records
    )
    text, opened = panel.open(name)
    assert opened == etag and yaml.safe_load(text)["model"] == "default"
    row = panel.table().iloc[0]
    assert (row["name"], row["state"], row["model"], row["every"]) == (
        "my-pipeline",
        "pending",
        "default",
        "5m",
    )

    # A second editor saves first: the first one's save is refused, nothing is lost.
    edited = text.replace("model: default", "model: mad")
    panel.save(name, edited, etag, *NOBODY)
    with pytest.raises(PreconditionFailed):
        panel.save(name, text.replace("model: default", "model: zscore"), etag, *NOBODY)
    assert yaml.safe_load(panel.open(name)[0])["model"] == "mad"
    # Saving the template again under the same name creates nothing over it.
    with pytest.raises(PreconditionFailed):
        panel.save(NEW, TEMPLATE, "", *NOBODY)

    with pytest.raises(PipelineInvalid) as invalid:
        panel.validate(edited.replace("context: 7d", "context: 5x"))
    assert [p.field for p in invalid.value.problems] == ["schedule.context"]
    assert "is valid" in panel.validate(edited)

    assert "deleted" in panel.delete(name, panel.open(name)[1], *NOBODY)
    with pytest.raises(PipelineNotFound):
        panel.open(name)
    assert panel.names() == [NEW]


def test_only_a_writer_changes_pipelines(pipelines_file: Path) -> None:
    writer = {"admin": "admin"}.get
    panel = _panel(
        pipelines_file, writer=lambda headers, cookies: writer(headers.get("authorization", "")[7:])
    )
    with pytest.raises(PlaygroundInputError, match="admin token"):
        panel.save(NEW, TEMPLATE, "", *NOBODY)
    assert panel.names() == [NEW]
    panel.save(NEW, TEMPLATE, "", *ADMIN)
    for action in (
        lambda: panel.delete("my-pipeline", "", *NOBODY),
        lambda: panel.run_now("my-pipeline", *NOBODY),
    ):
        with pytest.raises(PlaygroundInputError, match="admin token"):
            action()
    with pytest.raises(PlaygroundInputError, match="no scheduler"):
        panel.run_now("my-pipeline", *ADMIN)


def test_run_now_goes_to_the_scheduler(pipelines_file: Path) -> None:
    calls: list[str] = []
    panel = _panel(
        pipelines_file, trigger=lambda name: calls.append(name) or {"status": "started", "windows": [[1, 2]]}
    )
    panel.save(NEW, TEMPLATE, "", *NOBODY)
    assert panel.run_now("my-pipeline", *NOBODY) == "`my-pipeline`: started (1 windows)"
    assert calls == ["my-pipeline"]


@pytest.mark.integration
def test_backtest_scores_the_editors_pipeline_and_writes_nothing(
    pipelines_file: Path, victoria_metrics: TSDBServer
) -> None:
    metric = unique_metric("tab")
    panel = _panel(pipelines_file)
    now = panel.playground.clock()
    stamps = now - MINUTE * np.arange(359, -1, -1, dtype=np.int64)
    values = 10 + np.random.default_rng(3).normal(0, 0.1, (1, 360))
    values[0, -30] += 9
    with PrometheusClient(victoria_metrics.settings) as client:
        client.remote_write(SeriesMatrix(({"__name__": metric},), stamps, values))
    victoria_metrics.flush()
    text = f"name: bt\nquery: {metric}\nstep: 1m\nmodel: mad\nschedule: {{infer_every: 5m, context: 1h}}\n"
    result = panel.backtest(text, "last 6h", "", "")
    assert result.shown == (0,) and "1/1 series scored" in result.summary()
    assert result.anomalies >= 1  # the spike
    assert panel.names() == [NEW]  # not saved: a backtest writes nothing
    with PrometheusClient(victoria_metrics.settings) as client:
        assert client.series('{for="bt"}', start_ms=int(stamps[0]), end_ms=now) == []
