"""The scheduler's path for a window: warm path (shard by shard when large, contexts kept
between windows) or a Ray Data job."""

from __future__ import annotations

import numpy as np
import pytest

from openanomaly.core.config import Pipeline, Settings
from openanomaly.core.detect import Detection
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import ModelError
from openanomaly.io.tsdb import PrometheusClient
from openanomaly.models.registry import load_forecaster
from openanomaly.runtime.contexts import ContextCache
from openanomaly.runtime.options import JobOptions
from openanomaly.runtime.runner import JobRunner, _run_shards
from openanomaly.runtime.window import WINDOW_MARKER, RunResult, Scorer, local_scorer
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


def _loaded(victoria_metrics, prefix: str, n: int) -> tuple[Pipeline, int]:
    """``n`` series of an hour of minutes in the TSDB; a pipeline over them, and the hour's end."""
    metric = unique_metric(prefix)
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
    return pipeline, end_ms


@pytest.mark.integration
def test_a_large_warm_window_runs_shard_by_shard(ray_cluster, victoria_metrics) -> None:
    n = 35
    pipeline, end_ms = _loaded(victoria_metrics, "shards", n)
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


@pytest.mark.integration
def test_a_shard_is_scored_while_the_next_is_fetched_and_a_failed_one_stops_the_window(
    victoria_metrics,
) -> None:
    """The model scores shard k while the scheduler's thread fetches shard k + 1 and writes
    shard k - 1; a shard whose score fails fails the window after the shards before it
    were written, and the retry writes the rest, nothing twice."""
    n = 40
    pipeline, end_ms = _loaded(victoria_metrics, "overlap", n)
    local = local_scorer(pipeline, load_forecaster("mad"))
    events: list[tuple[str, str, int]] = []  # (fetch | write, the shard's first series, samples)

    def scorer(fail: str | None) -> Scorer:
        def score(block: SeriesMatrix, start: int, end: int) -> Detection:
            if block.labels[0]["instance"] == fail:
                raise ModelError("the model failed on this shard", spec="mad")
            return local(block, start, end)

        return score

    with PrometheusClient(victoria_metrics.settings) as client:
        fetch, write = client.query_range, client.remote_write

        def recorded_fetch(query: str, **kwargs: int) -> SeriesMatrix:
            block = fetch(query, **kwargs)
            events.append(("fetch", block.labels[0]["instance"], 0))
            return block

        def recorded_write(series: SeriesMatrix) -> int:
            written = write(series)
            if series.labels[0]["__name__"] != WINDOW_MARKER:  # the claim's marker: not a shard
                events.append(("write", series.labels[0]["instance"], written))
            return written

        client.query_range, client.remote_write = recorded_fetch, recorded_write  # type: ignore[method-assign]

        def run(window: int, fail: str | None = None) -> RunResult:
            end = end_ms - window * 10 * MIN
            return _run_shards(
                client,
                pipeline,
                scorer(fail),
                ContextCache(0),
                start_ms=end - 10 * MIN,
                end_ms=end,
                series_per_shard=10,
            )

        run(0)
        shards = [name for kind, name, _ in events if kind == "fetch"]
        assert len(shards) >= 3
        # fetch k + 1 before writing k: shard k + 1 is scoring while shard k is written
        fetched_ahead = ["fetch", "fetch", *["write", "fetch"] * (len(shards) - 2), "write", "write"]
        assert [kind for kind, _, _ in events] == fetched_ahead
        assert [name for kind, name, _ in events if kind == "write"] == shards

        events.clear()
        with pytest.raises(ModelError):
            run(1, fail=shards[2])
        writes = [(name, written) for kind, name, written in events if kind == "write"]
        assert [name for name, _ in writes] == shards[:2]  # shard 3 fails: nothing from it on
        victoria_metrics.flush()  # the retry comes a tick later, when they are searchable
        retried = run(1)
    before = sum(written for _, written in writes)
    assert (retried.samples_present, retried.samples_written) == (before, 4 * 10 * n - before)
