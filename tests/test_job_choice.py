"""The scheduler's path for a window: warm path (shard by shard when large, contexts kept
between windows) or a Ray Data job."""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.core.config import Pipeline, Settings
from openanomaly.core.series import SeriesMatrix
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.runtime.options import JobOptions
from openanomaly.runtime.runner import JobRunner
from openanomaly.runtime.window import RunResult
from tests.fixtures.servers import unique_metric

MIN = 60_000


def _result(pipeline: Pipeline, series: int, seconds: float) -> RunResult:
    return RunResult(pipeline.name, 0, MIN, series, series, series, 0, 4 * series, duration_s=seconds)


def test_ray_data_only_where_the_measurements_say_it_is_faster(ray_cluster) -> None:
    import ray

    pipeline = Pipeline(name="p", query="m", model="mad")
    runner = JobRunner()
    cpus = ray.cluster_resources()["CPU"]
    assert not runner.uses_ray_data(pipeline, 10**7), "no warm window measured yet: warm first"
    runner._measured(pipeline, _result(pipeline, 1000, 1.0), job=False)  # 1 ms per series, warm
    overhead = runner._job_overhead_s
    # warm: n x 1 ms; job: overhead + n x 1 ms / cpus. Even where the job wins by a hair:
    even = overhead / (1e-3 * (1 - 1 / cpus))
    assert not runner.uses_ray_data(pipeline, int(even * 0.9))
    assert runner.uses_ray_data(pipeline, int(even * 1.1))
    # a measured job replaces the first estimate of its fixed cost
    runner._measured(pipeline, _result(pipeline, 100_000, 100_000 * 1e-3 / cpus + 5.0), job=True)
    assert runner._job_overhead_s == pytest.approx(5.0)
    # an explicit threshold decides instead
    assert JobRunner(JobOptions(ray_data_min_series=50)).uses_ray_data(pipeline, 50)


@pytest.mark.integration
def test_a_large_warm_window_runs_shard_by_shard(ray_cluster, victoria_metrics) -> None:
    metric = unique_metric("shards")
    n = 35
    end_ms = (1_760_000_000_000 // (60 * MIN)) * (60 * MIN)
    stamps = np.arange(end_ms - 60 * MIN, end_ms + 1, MIN, dtype=np.int64)
    values = 10 + np.random.default_rng(0).normal(0, 1, (n, len(stamps)))
    labels = tuple({"__name__": metric, "instance": f"host-{i:02d}"} for i in range(n))
    with PrometheusClient(victoria_metrics.settings) as client:
        client.remote_write(SeriesMatrix(labels, stamps, values))
    victoria_metrics.flush()
    pipeline = Pipeline(
        name=metric,
        query=f"{metric}{{}}",
        model="mad",
        schedule={"infer_every": "10m", "context": "30m"},
        scoring={"calibration": {"enabled": False}},
    )
    settings = Settings(tsdb=victoria_metrics.settings)
    runner = JobRunner(JobOptions(series_per_shard=10))
    try:
        first = runner.run_window(
            settings, pipeline, start_ms=end_ms - 20 * MIN, end_ms=end_ms - 10 * MIN, series_hint=n
        )
        # Its shards' contexts are kept: the next window fetches only its new points, so
        # this one, which fetched them all, does not count as the warm path's cost.
        assert runner.contexts.holds(pipeline.name) and pipeline.name not in runner._per_series_s
        result = runner.run_window(
            settings, pipeline, start_ms=end_ms - 10 * MIN, end_ms=end_ms, series_hint=n
        )
        assert pipeline.name in runner._per_series_s
    finally:
        runner.close()
    assert first.series_in == n
    assert (result.series_in, result.series_scored, result.points_in) == (n, n, 10 * n)
    assert result.samples_written == 4 * 10 * n
