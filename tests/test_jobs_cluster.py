"""Cluster mode end to end: real local Ray, real VictoriaMetrics, real S3 (moto server).

The scheduler runs as the named detached actor and is driven with ``tick(now_ms=...)``
(the injected clock), so windows are deterministic and nothing sleeps on wall time.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from openanomaly.core.series import SeriesMatrix
from openanomaly.io.artifacts import S3Store, list_models, series_key
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.runtime.arrow import matrix_from_table, table_from_matrix
from openanomaly.runtime.options import JobOptions
from openanomaly.runtime.shards import _shard_queries

MIN = 60_000
N_SERIES = 60


def test_arrow_round_trip() -> None:
    matrix = SeriesMatrix.from_rows(
        [{"__name__": "m", "i": "1"}, {"__name__": "m", "i": "2"}],
        [1000, 2000, 3000],
        [[1, np.nan, 3], [4, 5, 6]],
    )
    back = matrix_from_table(table_from_matrix(matrix, step_ms=1000))
    assert back.labels == matrix.labels
    np.testing.assert_array_equal(back.timestamps, matrix.timestamps)
    np.testing.assert_array_equal(back.values, matrix.values)


def test_shard_queries_are_disjoint_and_cover_every_series() -> None:
    series = [{"__name__": "cpu", "instance": f"host-{i}.x", "job": "n"} for i in range(50)]
    queries = _shard_queries('cpu{job="n"}', series, 4)
    assert len(queries) == 4
    assert all(q.startswith('cpu{job="n", instance=~"') for q in queries)
    values = [v for q in queries for v in q.split('=~"')[1].rstrip('"}').split("|")]
    assert sorted(v.replace("\\\\.", ".") for v in values) == sorted(s["instance"] for s in series)
    assert _shard_queries("rate(cpu[5m])", series, 4) == ["rate(cpu[5m])"]


def _load(vm, metric: str, n: int, start_ms: int, end_ms: int) -> None:
    t = np.arange(start_ms, end_ms + 1, MIN, dtype=np.int64)
    rng = np.random.default_rng(0)
    values = 10 + np.sin(np.arange(len(t)) / 15)[None, :] + rng.normal(0, 0.2, (n, len(t)))
    labels = [{"__name__": metric, "instance": f"host-{i:03d}", "job": "test"} for i in range(n)]
    with PrometheusClient(vm.settings) as client:
        client.remote_write(SeriesMatrix(tuple(labels), t, values))
    vm.flush()


def _config(tmp_path, vm, pipelines: str, artifacts: str) -> str:
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        f"settings:\n  tsdb:\n    url: {vm.url}\n    retries: 1\n    backoff: 50ms\n"
        f"{artifacts}\npipelines:\n{pipelines}"
    )
    return str(path)


def _scores(vm, pipeline: str, start_ms: int, end_ms: int) -> SeriesMatrix:
    vm.flush()
    with PrometheusClient(vm.settings) as client:
        return client.query_range(
            f'anomaly_score{{for="{pipeline}"}}', start_ms=start_ms + MIN, end_ms=end_ms, step_ms=MIN
        )


@pytest.fixture
def base_ms() -> int:
    return (1_760_000_000_000 // (60 * MIN)) * (60 * MIN)


@pytest.fixture
def bucket(s3) -> str:
    return s3.create_bucket(f"oa-{uuid.uuid4().hex[:8]}")


def _artifacts(s3, bucket: str) -> str:
    return (
        f"  artifacts:\n    kind: s3\n    bucket: {bucket}\n    prefix: models\n"
        f"    endpoint_url: {s3.endpoint_url}"
    )


def _pid(_actor) -> int:
    return os.getpid()


def _start(config: str, s3, name: str):
    from openanomaly.runtime.scheduler_actor import start_scheduler

    # The defaults a user gets (scheduler CPUs, job options), on the 2-CPU test cluster.
    return start_scheduler(
        config, name=name, namespace="openanomaly-test", autostart=False, runtime_env={"env_vars": s3.env()}
    )


@pytest.mark.integration
def test_scheduler_scores_every_series_survives_kill_and_fills_outage(
    ray_cluster, victoria_metrics, s3, bucket, base_ms, tmp_path
) -> None:
    import ray

    metric = f"jobs_{uuid.uuid4().hex[:8]}"
    _load(victoria_metrics, metric, N_SERIES, base_ms, base_ms + 120 * MIN)
    pipelines = (
        f"  - name: {metric}\n    query: '{metric}{{job=\"test\"}}'\n    model: mad\n"
        "    schedule:\n      infer_every: 10m\n      context: 30m\n"
    )
    config = _config(tmp_path, victoria_metrics, pipelines, _artifacts(s3, bucket))
    name = f"sched-{uuid.uuid4().hex[:6]}"
    actor = _start(config, s3, name)
    launched: list[tuple[int, int]] = []
    try:
        t1 = base_ms + 60 * MIN
        launched += ray.get(actor.tick.remote(t1, wait=True))[metric]
        status = ray.get(actor.status.remote(t1))["pipelines"][0]
        assert status["last_run_ok"], status["last_error"]
        assert status["series_scored"] == N_SERIES
        scores = _scores(victoria_metrics, metric, t1 - 10 * MIN, t1)
        assert len(scores) == N_SERIES, "anomaly_score must exist for every series"
        assert {s["instance"] for s in scores.labels} == {f"host-{i:03d}" for i in range(N_SERIES)}

        # Kill the actor, and take the TSDB down while it is away. Ray restarts the actor
        # (max_restarts=-1); it reads its progress back from S3, so at t2 it resumes
        # with the two windows after t1 (a fresh start would run only the latest one).
        pid = ray.get(actor.__ray_call__.remote(_pid))
        ray.kill(actor, no_restart=False)
        for _ in range(300):  # until the restarted process answers (ray.kill is asynchronous)
            try:
                if ray.get(actor.__ray_call__.remote(_pid), timeout=30) != pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the scheduler actor was not restarted")
        t2 = t1 + 20 * MIN
        missed = [(t1, t1 + 10 * MIN), (t1 + 10 * MIN, t2)]
        victoria_metrics.stop()
        try:
            # the outage: the run fails, progress does not move
            assert ray.get(actor.tick.remote(t2, wait=True))[metric] == missed
            status = ray.get(actor.status.remote(t2))["pipelines"][0]
            assert status["errors_total"] == 1 and not status["last_run_ok"]
            assert status["last_end_ms"] == t1
        finally:
            victoria_metrics.start()
        # TSDB back: the next tick fills the missed windows
        launched += ray.get(actor.tick.remote(t2, wait=True))[metric]
        status = ray.get(actor.status.remote(t2))["pipelines"][0]
        assert status["last_run_ok"], status["last_error"]
        assert status["last_end_ms"] == t2

        # windows: contiguous, none twice (no gap, no duplicate scoring)
        assert launched == [(t1 - 10 * MIN, t1), *missed]
        # output: every series has a score at every minute of the 3 windows
        scores = _scores(victoria_metrics, metric, t1 - 10 * MIN, t2)
        assert len(scores) == N_SERIES
        assert scores.values.shape[1] == 30
        assert np.isfinite(scores.values).all(), "no gaps in the output"
        metrics = ray.get(actor.metrics.remote(t2))
        assert f'openanomaly_pipeline_errors_total{{pipeline="{metric}"}} 1.0' in metrics
    finally:
        ray.kill(actor, no_restart=True)


@pytest.mark.integration
def test_fitted_model_lands_in_bucket_and_is_reused(
    ray_cluster, victoria_metrics, s3, bucket, base_ms, tmp_path
) -> None:
    import ray

    metric = f"fit_{uuid.uuid4().hex[:8]}"
    n = 8
    _load(victoria_metrics, metric, n, base_ms, base_ms + 240 * MIN)
    pipelines = (
        f"  - name: {metric}\n    query: '{metric}'\n    model: statsforecast:AutoETS\n"
        "    schedule:\n      infer_every: 10m\n      context: 30m\n"
        "      fit_every: 1h\n      fit_window: 2h\n"
    )
    config = _config(tmp_path, victoria_metrics, pipelines, _artifacts(s3, bucket))
    actor = _start(config, s3, f"sched-{uuid.uuid4().hex[:6]}")
    store = S3Store(bucket=bucket, prefix="models", endpoint_url=s3.endpoint_url, client=s3.client())
    try:
        t1 = base_ms + 180 * MIN
        ray.get(actor.tick.remote(t1, wait=True))
        status = ray.get(actor.status.remote(t1))["pipelines"][0]
        assert status["last_run_ok"], status["last_error"]
        assert status["fits_total"] == 1 and status["series_scored"] == n
        refs = list_models(store, pipeline=metric)
        assert len(refs) == n
        assert {r.fit_time_ms for r in refs} == {t1 - 10 * MIN}
        keys = {
            series_key({"__name__": metric, "instance": f"host-{i:03d}", "job": "test"}) for i in range(n)
        }
        assert {r.series_key for r in refs} == keys

        # second window, within fit_every: models are loaded from the bucket, not refitted
        t2 = t1 + 10 * MIN
        ray.get(actor.tick.remote(t2, wait=True))
        status = ray.get(actor.status.remote(t2))["pipelines"][0]
        assert status["last_run_ok"], status["last_error"]
        assert status["fits_total"] == 1, "the second run must not refit"
        assert status["series_scored"] == n
        assert list_models(store, pipeline=metric) == refs
        scores = _scores(victoria_metrics, metric, t1 - 10 * MIN, t2)
        assert len(scores) == n and np.isfinite(scores.values).all()
    finally:
        ray.kill(actor, no_restart=True)


class _CrashOnce:
    """A model factory whose forecaster kills its process on the first forecast call.

    The marker file makes the crash happen once across processes: the restarted actor
    finds it and scores normally. Module-level, so Ray pickles it by reference.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, pipeline):
        from openanomaly.models.registry import load_forecaster

        return _CrashingForecaster(load_forecaster(pipeline.model.spec, **pipeline.model.params), self.marker)


class _CrashingForecaster:
    def __init__(self, inner, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def forecast(self, contexts, horizon, quantiles):
        import os

        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner.forecast(contexts, horizon, quantiles)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)  # the worker process dies mid-job, before this batch is written


@pytest.mark.integration
def test_worker_dying_mid_job_is_retried_by_ray(ray_cluster, victoria_metrics, base_ms, tmp_path) -> None:
    import pathlib

    from openanomaly.core.config import Pipeline, Settings
    from openanomaly.runtime.window_job import run_job

    metric = f"crash_{uuid.uuid4().hex[:8]}"
    n = 24
    end_ms = base_ms + 60 * MIN
    _load(victoria_metrics, metric, n, base_ms, end_ms)
    marker = tmp_path / "crashed"
    pipeline = Pipeline(
        name=metric,
        query=f'{metric}{{job="test"}}',
        model="mad",
        schedule={"infer_every": "10m", "context": "30m"},
    )
    settings = Settings(tsdb=victoria_metrics.settings)
    # Two fetch shards and blocks of 8: the sharded Ray Data path, otherwise default options.
    options = JobOptions(series_per_shard=n // 2, batch_size=8, model_factory=_CrashOnce(str(marker)))
    result = run_job(settings, pipeline, start_ms=end_ms - 10 * MIN, end_ms=end_ms, options=options)

    assert marker.exists(), "the scoring actor must have died once"
    assert int(pathlib.Path(marker).read_text()) != os.getpid()
    assert result.series_in == n and result.series_scored == n, "every series scored once"
    assert result.points_scored == n * 10
    assert result.samples_written == 4 * n * 10, "no batch written twice, none lost"
    scores = _scores(victoria_metrics, metric, end_ms - 10 * MIN, end_ms)
    assert len(scores) == n and np.isfinite(scores.values).all()
