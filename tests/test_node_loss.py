"""A worker node lost in the middle of a Ray Data window: no sample lost, none written twice;
and in the middle of a fit: the fit stops with ``NodeLost`` and runs again on what is left.

Real multi-node Ray (``ray_nodes``: a head with no CPUs and two one-CPU worker nodes),
real VictoriaMetrics with default flags (it keeps a sample written twice, so a double
write would show), the scheduler as users run it. The scoring actor stalls in its first
forecast of the armed window; the test removes the node it runs on
(``cluster.remove_node``) and lets it go on. Ray Data reruns the lost work on the other
node, or the window fails and the scheduler's next tick runs it again; either way every
output series must hold exactly one sample per timestamp.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from openanomaly.core.series import SeriesMatrix
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.runtime.options import JobOptions
from tests.fixtures.proxy import TSDBProxy
from tests.fixtures.servers import unique_metric

STEP = 300_000
N_SERIES = 40


class _StallOnce:
    """A model factory that, once armed, stalls the first scoring actor that loads the model.

    Called when an actor scores its first block: after ``armed`` exists, the first call
    writes the node id of its process to ``stalled`` and waits (up to a minute) for
    ``released``; the test removes that node meanwhile. Module-level, so Ray pickles it
    by reference.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, pipeline):
        import ray

        from openanomaly.models.registry import load_forecaster

        folder = Path(self.folder)
        if (folder / "armed").exists():
            try:
                fd = os.open(folder / "stalled", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, ray.get_runtime_context().get_node_id().encode())
                os.close(fd)
                for _ in range(600):
                    if (folder / "released").exists():
                        break
                    time.sleep(0.1)
        return load_forecaster(pipeline.model.spec, **pipeline.model.params)


def _export_counts(vm, pipeline: str, start_ms: int, end_ms: int) -> tuple[int, int]:
    """(raw, distinct) output samples of ``pipeline`` in ``(start_ms, end_ms]``, as stored."""
    vm.flush()
    raw = distinct = 0
    response = httpx.post(
        vm.url + "/api/v1/export",
        data={
            "match[]": f'{{for="{pipeline}"}}',
            "start": str(start_ms // 1000 + 1),
            "end": str(end_ms // 1000),
        },
        timeout=30,
    )
    response.raise_for_status()
    for line in response.text.splitlines():
        if line:
            stamps = json.loads(line)["timestamps"]
            raw += len(stamps)
            distinct += len(set(stamps))
    return raw, distinct


@pytest.mark.integration
def test_window_survives_losing_a_worker_node(ray_nodes, victoria_metrics_defaults, tmp_path) -> None:
    from openanomaly.runtime.scheduler import Scheduler

    cluster, workers = ray_nodes
    vm = victoria_metrics_defaults
    metric = unique_metric("nodeloss")
    # Recent data: VictoriaMetrics with default flags keeps one month.
    t2 = (int(time.time() * 1000) // (12 * STEP) - 1) * (12 * STEP)
    t1 = t2 - STEP
    stamps = np.arange(t2 - 4 * 86_400_000, t2 + 1, STEP, dtype=np.int64)
    rng = np.random.default_rng(1)
    values = (
        50 + 10 * np.sin(2 * np.pi * np.arange(len(stamps)) / 288) + rng.normal(0, 1, (N_SERIES, len(stamps)))
    )
    labels = tuple({"__name__": metric, "instance": f"pod-{i:03d}", "job": "loss"} for i in range(N_SERIES))
    with PrometheusClient(vm.settings) as client:
        client.remote_write(SeriesMatrix(labels, stamps, values))
    vm.flush()

    config = tmp_path / "pipelines.yaml"
    config.write_text(
        f"settings:\n  tsdb:\n    url: {vm.url}\n"
        f"pipelines:\n  - name: {metric}\n    query: '{metric}{{job=\"loss\"}}'\n    step: 5m\n"
        "    model: default\n    schedule:\n      infer_every: 5m\n      context: 3d\n"
    )
    folder = tmp_path / "stall"
    folder.mkdir()
    # Ray Data from the second window on (the first one tells the scheduler how many
    # series there are), in two fetch shards and several blocks; otherwise the defaults.
    options = JobOptions(
        ray_data_min_series=1,
        series_per_shard=N_SERIES // 2,
        batch_size=10,
        model_factory=_StallOnce(str(folder)),
    )
    scheduler = Scheduler(str(config), job_options=options)
    try:
        scheduler.tick(t1, wait=True)
        status = scheduler.status(t1)["pipelines"][0]
        assert status["last_run_ok"], status["last_error"]
        assert status["series_in"] == N_SERIES

        (folder / "armed").touch()
        scheduler.tick(t2)
        for _ in range(600):
            if (folder / "stalled").exists():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the Ray Data window never reached a scoring actor")
        node_id = (folder / "stalled").read_text()
        victim = next(node for node in workers if node.node_id == node_id)
        cluster.remove_node(victim)
        (folder / "released").touch()
        assert scheduler.wait_idle(120)
        tries = 1
        if not scheduler.status(t2)["pipelines"][0]["last_run_ok"]:
            scheduler.tick(t2, wait=True)  # what the next tick does: the window was not marked done
            tries += 1
        status = scheduler.status(t2)["pipelines"][0]
        assert status["last_run_ok"], status["last_error"]
        assert status["last_end_ms"] == t2
    finally:
        scheduler.stop(wait=True)

    raw, distinct = _export_counts(vm, metric, t1 - STEP, t2)
    expected = 2 * 4 * N_SERIES  # two windows of one point, four output metrics per series
    print(f"window runs: {tries}; lost {expected - distinct}, duplicated {raw - distinct}")
    assert (expected - distinct, raw - distinct) == (0, 0), f"lost, duplicated after {tries} run(s)"


@pytest.mark.integration
def test_a_fit_stopped_by_a_lost_node_runs_again_on_the_nodes_left(
    ray_nodes, victoria_metrics_defaults, tmp_path
) -> None:
    from openanomaly.core.config import Pipeline, Settings
    from openanomaly.errors import NodeLost
    from openanomaly.io.artifacts import list_models, open_store
    from openanomaly.runtime.fits import fit_job

    cluster, workers = ray_nodes
    vm = victoria_metrics_defaults
    metric = unique_metric("fitloss")
    minute, n = 60_000, 8
    fit_ms = (int(time.time() * 1000) // (10 * minute) - 1) * (10 * minute)
    stamps = np.arange(fit_ms - 3 * 60 * minute, fit_ms + 1, minute, dtype=np.int64)
    rng = np.random.default_rng(2)
    values = 20 + np.sin(np.arange(len(stamps)) / 9)[None, :] + rng.normal(0, 0.2, (n, len(stamps)))
    labels = tuple({"__name__": metric, "instance": f"pod-{i}"} for i in range(n))
    with PrometheusClient(vm.settings) as client:
        client.remote_write(SeriesMatrix(labels, stamps, values))
    vm.flush()

    held, opened = threading.Event(), threading.Event()  # a range query waits / may go on

    def hold_range_queries(path: str) -> None:
        if path.startswith("/api/v1/query_range") and not opened.is_set():
            held.set()
            opened.wait(120)

    proxy = TSDBProxy(vm.url, before=hold_range_queries)
    settings = Settings(tsdb={"url": proxy.url}, artifacts={"kind": "file", "path": str(tmp_path / "models")})
    pipeline = Pipeline(
        name=metric,
        query=metric,
        model="statsforecast:AutoETS",
        schedule={"infer_every": "10m", "context": "30m", "fit_every": "1h", "fit_window": "2h"},
    )

    def remove_a_node_while_the_fetch_waits() -> None:
        if held.wait(120):
            cluster.remove_node(workers[-1])
        opened.set()

    try:
        remover = threading.Thread(target=remove_a_node_while_the_fetch_waits)
        remover.start()
        with pytest.raises(NodeLost):
            fit_job(settings, pipeline, fit_time_ms=fit_ms, deadline=time.monotonic() + 180)
        remover.join()
        # What the scheduler's next tick does: the same fit again, on the node that is left.
        result = fit_job(settings, pipeline, fit_time_ms=fit_ms, deadline=time.monotonic() + 180)
    finally:
        opened.set()
        proxy.close()
    assert (result.series_in, result.models_saved) == (n, n)
    refs = list_models(open_store(settings.artifacts), pipeline=metric)
    assert len(refs) == n and {ref.fit_time_ms for ref in refs} == {fit_ms}
