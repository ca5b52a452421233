"""The one window path on real servers: every path writes the same samples, exactly once.

- Idempotent writes on a VictoriaMetrics and a Prometheus started with default flags:
  a backtest, the scheduler, ``run --once``, a backtest again and a scheduler restart
  mid-window over overlapping ranges leave one sample per output series and timestamp,
  each with the value a fresh in-memory scoring gives.
- A range nobody claimed is written without reading back the outputs; a claimed one (a
  retry) reads them back and sends only what is missing; the marker holds each grid
  point once.
- A write that timed out after it landed, retried by the client, is stored once on a
  VictoriaMetrics with the documented ``-dedup.minScrapeInterval`` (twice without it).
- The scheduler (warm model actor on Ray), ``run --once``, ``backtest`` (TSDB and
  ``--out``) and the playground give bit-identical outputs for the same data.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from openanomaly.cli import main
from openanomaly.core.config import TSDBSettings
from openanomaly.core.detect import score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.models.registry import load_forecaster
from openanomaly.runtime.scheduler import Scheduler
from openanomaly.runtime.window import claim, fetch, local_scorer, marker_labels, run_window, write
from tests.fixtures.proxy import TSDBProxy
from tests.fixtures.servers import TSDBServer

pytestmark = pytest.mark.integration

MIN = 60_000
N = 3


def _now_grid() -> int:
    """A 5-minute boundary safely in the past (VictoriaMetrics hides the last 30 s by default)."""
    return (int(time.time() * 1000) - 10 * MIN) // (5 * MIN) * (5 * MIN)


def _load(server: TSDBServer, metric: str, start_ms: int, end_ms: int) -> None:
    t = np.arange(start_ms, end_ms + 1, MIN, dtype=np.int64)
    rng = np.random.default_rng(7)
    values = 50 + 5 * np.sin(np.arange(len(t)) / 9)[None, :] + rng.normal(0, 1, (N, len(t)))
    values[1, -40] += 60  # a spike
    labels = tuple({"__name__": metric, "host": f"h{i}"} for i in range(N))
    with PrometheusClient(server.settings) as client:
        client.remote_write(SeriesMatrix(labels, t, values))
    server.flush()


def _config(tmp_path: Path, server: TSDBServer, metric: str, names: tuple[str, ...]) -> Path:
    pipelines = "".join(
        f"  - name: {name}\n    query: '{metric}'\n    model: mad\n"
        "    schedule: {infer_every: 5m, context: 30m}\n"
        for name in names
    )
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        f"settings:\n  tsdb:\n    url: {server.url}\n    retries: 1\n  artifacts:\n    kind: none\n"
    )
    path.write_text(path.read_text() + f"pipelines:\n{pipelines}")
    return path


def _raw(
    server: TSDBServer, pipeline: str, start_ms: int, end_ms: int
) -> dict[tuple, list[tuple[int, float]]]:
    """Every raw output sample of ``pipeline`` in ``(start, end]``: (metric, host) → [(t, value)]."""
    server.flush()
    response = httpx.post(
        f"{server.url}/api/v1/query",
        data={"query": f'{{for="{pipeline}"}}[{end_ms - start_ms}ms]', "time": f"{end_ms / 1000:.3f}"},
        timeout=30,
    )
    response.raise_for_status()
    out = {}
    for result in response.json()["data"]["result"]:
        key = (result["metric"]["__name__"], result["metric"]["host"])
        out[key] = [(round(float(t) * 1000), float(v)) for t, v in result["values"]]
    return out


def _settle(server: TSDBServer, pipeline: str, start_ms: int, end_ms: int, series: int) -> None:
    """Wait until the server lets queries see ``series`` output series of ``pipeline``.

    VictoriaMetrics makes new series searchable seconds after a write (up to ~7 s after a
    lookup that found nothing: it caches that answer). Overlaps in production are minutes
    apart; a test that overlaps at once waits for what time would have done.
    """
    server.flush()
    deadline = time.monotonic() + 60
    with PrometheusClient(server.settings) as client:
        while len(client.sample_times(f'{{for="{pipeline}"}}', start_ms=start_ms, end_ms=end_ms)) < series:
            assert time.monotonic() < deadline, "written samples never became searchable"
            time.sleep(0.5)
        marker = f'openanomaly_window{{pipeline="{pipeline}"}}'
        marked = lambda: client.sample_times(marker, start_ms=start_ms, end_ms=end_ms).values()  # noqa: E731
        while end_ms not in set().union(*marked()):
            assert time.monotonic() < deadline, "the window's marker never became searchable"
            time.sleep(0.5)


def _expected(server: TSDBServer, config: Path, name: str, start_ms: int, end_ms: int):
    from openanomaly.configstore.files import YamlConfigStore

    pipeline = YamlConfigStore(config).load().pipeline(name)
    with PrometheusClient(server.settings) as client:
        series = fetch(client, pipeline, start_ms=start_ms, end_ms=end_ms)
    return score_range(series, pipeline, load_forecaster("mad"), start_ms=start_ms, end_ms=end_ms)


@pytest.mark.parametrize("server_name", ["victoria_metrics_defaults", "prometheus_defaults"])
def test_overlapping_runs_store_each_sample_once_on_default_servers(
    server_name, request, ray_cluster, tmp_path, capsys
) -> None:
    server: TSDBServer = request.getfixturevalue(server_name)
    metric = f"idem_{uuid.uuid4().hex[:8]}"
    t = _now_grid()
    _load(server, metric, t - 180 * MIN, t + 5 * MIN)
    config = _config(tmp_path, server, metric, ("p",))
    iso = lambda ms: str(ms // 1000)  # noqa: E731

    # Prometheus (default flags) refuses samples over an hour older than its newest one:
    # every write below stays within (T-45m, T+5m].
    # 1. backtest (T-45m, T-30m]
    first = ["--start", iso(t - 45 * MIN), "--end", iso(t - 30 * MIN)]
    assert main(["backtest", "-c", str(config), *first]) == 0
    _settle(server, "p", t - 35 * MIN, t - 30 * MIN, 4 * N)
    # 2. the scheduler (its warm model actor on Ray): first the window (T-35m, T-30m],
    #    already written by the backtest, then catching up to T
    scheduler = Scheduler(str(config), now=lambda: t)
    try:
        scheduler.tick(t - 30 * MIN, wait=True)
        scheduler.tick(t, wait=True)
        status = scheduler.status(t)["pipelines"][0]
        assert status["state"] == "idle", status
        assert status["windows_total"] == 7
        # 3. run --once after the scheduler: the same window again
        _settle(server, "p", t - 5 * MIN, t, 4 * N)
        assert main(["run", "-c", str(config), "--once", "--now", iso(t)]) == 0
        assert "0 samples written (60 already present" in capsys.readouterr().out
        # 4. a backtest over everything scored so far
        assert main(["backtest", "-c", str(config), "--start", iso(t - 45 * MIN), "--end", iso(t)]) == 0
        assert "0 samples written" in capsys.readouterr().out
        # 5. a scheduler that died mid-window: it claimed (T, T+5m], one series' outputs
        #    landed, progress was not saved; the restarted scheduler runs the whole window
        pipeline = scheduler.config.pipeline("p")
        with PrometheusClient(server.settings) as client:
            series = fetch(client, pipeline, start_ms=t, end_ms=t + 5 * MIN)
            partial = score_range(
                series.select([0]), pipeline, load_forecaster("mad"), start_ms=t, end_ms=t + 5 * MIN
            )
            assert claim(client, pipeline, start_ms=t, end_ms=t + 5 * MIN) is True
            assert write(client, pipeline, partial, fresh=True) == (20, 0)
        _settle(server, "p", t, t + 5 * MIN, 4)
        scheduler.tick(t + 5 * MIN, wait=True)
        status = scheduler.status(t + 5 * MIN)["pipelines"][0]
        assert status["state"] == "idle" and status["samples_written"] == 40, status
    finally:
        scheduler.stop(wait=True)

    raw = _raw(server, "p", t - 55 * MIN, t + 5 * MIN)
    assert len(raw) == 4 * N
    expected = _expected(server, config, "p", t - 45 * MIN, t + 5 * MIN)
    for (metric_name, host), samples in raw.items():
        stamps = [s for s, _ in samples]
        assert len(stamps) == len(set(stamps)) == 50, f"{metric_name}{{host={host}}} has duplicates or gaps"
        row = int(host[1:])
        want = getattr(expected, metric_name)[row]
        got = np.array([v for _, v in sorted(samples)])
        # VictoriaMetrics stores 12 significant digits (docs/tsdb.md); Prometheus float64.
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=0)


class _Counting:
    """A TSDB client that remembers the selectors the window path read samples of."""

    def __init__(self, client: PrometheusClient) -> None:
        self.client = client
        self.selectors: list[str] = []

    def query_range(self, query: str, **kwargs):
        return self.client.query_range(query, **kwargs)

    def sample_times(self, selector: str, **kwargs):
        self.selectors.append(selector)
        return self.client.sample_times(selector, **kwargs)

    def remote_write(self, series: SeriesMatrix) -> int:
        return self.client.remote_write(series)


def test_only_a_claimed_range_reads_its_outputs_back(victoria_metrics_defaults, tmp_path) -> None:
    from openanomaly.configstore.files import YamlConfigStore

    server = victoria_metrics_defaults
    metric = f"claim_{uuid.uuid4().hex[:8]}"
    t = _now_grid()
    _load(server, metric, t - 60 * MIN, t)
    pipeline = YamlConfigStore(_config(tmp_path, server, metric, ("c",))).load().pipeline("c")
    scorer = local_scorer(pipeline, load_forecaster("mad"))
    window = {"start_ms": t - 10 * MIN, "end_ms": t - 5 * MIN}
    marker = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(marker_labels(pipeline).items())) + "}"
    with PrometheusClient(server.settings) as plain:
        client = _Counting(plain)
        _, first = run_window(pipeline, scorer, **window, source=client, sink=client)
        assert (first.samples_written, first.samples_present) == (4 * N * 5, 0)
        assert client.selectors == [marker], "a range nobody claimed reads only the marker"
        _settle(server, "c", window["start_ms"], window["end_ms"], 4 * N)
        client.selectors.clear()
        _, again = run_window(pipeline, scorer, **window, source=client, sink=client)
        assert (again.samples_written, again.samples_present) == (0, 4 * N * 5)
        assert client.selectors[0] == marker and 'for="c"' in client.selectors[1]
        # A range overlapping the claimed one is claimed; the marker gains only its new points.
        assert claim(plain, pipeline, start_ms=t - 7 * MIN, end_ms=t) is False
    server.flush()
    response = httpx.post(
        f"{server.url}/api/v1/query",
        data={"query": f"{marker}[20m]", "time": f"{t / 1000:.3f}"},
        timeout=30,
    )
    (series,) = response.json()["data"]["result"]
    assert [round(float(s) * 1000) for s, _ in series["values"]] == list(range(t - 9 * MIN, t + 1, MIN))
    raw = _raw(server, "c", window["start_ms"], window["end_ms"])
    assert len(raw) == 4 * N and all(len({s for s, _ in v}) == len(v) == 5 for v in raw.values())


@pytest.mark.parametrize(
    ("server_name", "copies"), [("victoria_metrics_defaults", 2), ("victoria_metrics_dedup", 1)]
)
def test_a_retried_write_that_landed_needs_the_dedup_flag(server_name, copies, request) -> None:
    server: TSDBServer = request.getfixturevalue(server_name)
    writes: list[str] = []

    def answer_the_first_late(path: str) -> None:  # it landed; the client gives up meanwhile
        writes.append(path)
        if len(writes) == 1:
            time.sleep(2.0)

    proxy = TSDBProxy(server.url, after=answer_the_first_late)
    metric = f"retried_{uuid.uuid4().hex[:8]}"
    t = _now_grid()
    stamps = np.arange(t - 9 * MIN, t + 1, MIN, dtype=np.int64)
    matrix = SeriesMatrix(({"__name__": metric, "host": "h0"},), stamps, np.arange(10.0)[None, :])
    settings = TSDBSettings(
        url=server.url, write_url=f"{proxy.url}/api/v1/write", timeout="1s", retries=2, backoff="10ms"
    )
    try:
        with PrometheusClient(settings) as client:
            assert client.remote_write(matrix) == 10
    finally:
        proxy.close()
    assert len(writes) == 2, "the first write landed, the client retried it"
    server.flush()
    response = httpx.post(
        f"{server.url}/api/v1/query", data={"query": f"{metric}[10m]", "time": f"{t / 1000:.3f}"}, timeout=30
    )
    values = response.json()["data"]["result"][0]["values"]
    assert len(values) == 10 * copies


def test_every_path_writes_the_same_samples(victoria_metrics, ray_cluster, tmp_path, capsys) -> None:
    """Scheduler, run --once, backtest (TSDB and --out) and the playground agree bit for bit."""
    from openanomaly.configstore.files import YamlConfigStore
    from openanomaly.ui.compute import run_query

    metric = f"paths_{uuid.uuid4().hex[:8]}"
    t = _now_grid()
    _load(victoria_metrics, metric, t - 180 * MIN, t)
    scheduled_config = _config(tmp_path, victoria_metrics, metric, ("sched",))
    config = _config(tmp_path, victoria_metrics, metric, ("once", "back"))
    start = t - 10 * MIN

    scheduler = Scheduler(str(scheduled_config), now=lambda: t)
    try:
        scheduler.tick(start, wait=True)
        scheduler.tick(t, wait=True)
        assert scheduler.status(t)["pipelines"][0]["windows_total"] == 3
    finally:
        scheduler.stop(wait=True)
    for now in (t - 5 * MIN, t):
        once = ["--once", "--pipeline", "once", "--now", str(now // 1000)]
        assert main(["run", "-c", str(config), *once]) == 0
    span = ["--start", str(start // 1000), "--end", str(t // 1000)]
    assert main(["backtest", "-c", str(config), "--pipeline", "back", *span]) == 0
    out = tmp_path / "back.csv"
    assert main(["backtest", "-c", str(config), "--pipeline", "back", *span, "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    with PrometheusClient(victoria_metrics.settings) as client:
        playground = run_query(
            client, YamlConfigStore(config).load().pipeline("back"), start_ms=start, end_ms=t
        )

    paths = {name: _raw(victoria_metrics, name, start, t) for name in ("sched", "once", "back")}
    for row in range(N):
        host = f"h{row}"
        for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper"):
            scheduled = np.array([v for _, v in sorted(paths["sched"][(name, host)])])
            assert len(scheduled) == 10
            for other in ("once", "back"):
                np.testing.assert_array_equal(
                    np.array([v for _, v in sorted(paths[other][(name, host)])]), scheduled
                )
            # In memory (playground, --out) bit for bit; against the TSDB's copy to its
            # storage precision (VictoriaMetrics keeps 12 significant digits).
            in_memory = getattr(playground.detection, name)[row]
            csv = frame[frame["series"].str.contains(f'host="{host}"')][name].to_numpy()
            np.testing.assert_array_equal(csv, in_memory)
            np.testing.assert_allclose(in_memory, scheduled, rtol=1e-11, atol=0)


def test_three_pipelines_with_default_options_complete_every_window_on_two_cpus(
    ray_cluster, victoria_metrics, s3, tmp_path
) -> None:
    """The stall users met: fits, scoring and the scheduler on ``ray.init(num_cpus=2)`` with defaults."""
    import ray

    from openanomaly.runtime.scheduler_actor import start_scheduler

    assert ray.cluster_resources()["CPU"] == 2
    metric = f"three_{uuid.uuid4().hex[:8]}"
    t = _now_grid()
    _load(victoria_metrics, metric, t - 240 * MIN, t)
    bucket = s3.create_bucket(f"three-{uuid.uuid4().hex[:8]}")
    path = tmp_path / "three.yaml"
    path.write_text(
        f"settings:\n  tsdb:\n    url: {victoria_metrics.url}\n"
        f"  artifacts:\n    kind: s3\n    bucket: {bucket}\n    endpoint_url: {s3.endpoint_url}\n"
        "pipelines:\n"
        f"  - name: a-mad\n    query: '{metric}'\n    model: mad\n"
        "    schedule: {infer_every: 5m, context: 30m}\n"
        f"  - name: b-default\n    query: '{metric}'\n    model: default\n"
        "    schedule: {infer_every: 5m, context: 2h}\n"
        f"  - name: c-ets\n    query: '{metric}'\n    model: statsforecast:AutoETS\n"
        "    schedule: {infer_every: 5m, context: 30m, fit_every: 1h, fit_window: 2h}\n"
    )
    name = f"three-{uuid.uuid4().hex[:6]}"
    actor = start_scheduler(
        str(path), name=name, namespace="oa-three", autostart=False, runtime_env={"env_vars": s3.env()}
    )
    try:
        ray.get(actor.tick.remote(t - 15 * MIN, wait=True), timeout=600)
        ray.get(actor.tick.remote(t, wait=True), timeout=600)
        status = {p["name"]: p for p in ray.get(actor.status.remote(t))["pipelines"]}
        for record in status.values():
            assert record["state"] == "idle", record
            assert record["last_end_ms"] == t and record["windows_total"] == 4, record
            assert record["series_scored"] == N
        assert status["c-ets"]["fits_total"] == 1
        metrics = ray.get(actor.metrics.remote(t))
        assert 'openanomaly_pipeline_state{pipeline="c-ets",state="idle"} 1.0' in metrics
    finally:
        ray.kill(actor, no_restart=True)
