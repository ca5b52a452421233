"""A window as one Ray Data job, for pipelines with very many series.

The same window as the warm actor (:func:`~openanomaly.runtime.window.run_window`, once
per block): fetched in parallel shards (:mod:`openanomaly.runtime.shards`), each block
scored by a pool of :class:`~openanomaly.runtime.scorer.WindowScorer` actors on every node
and written by the actor that scored it. The job is driven by a Ray task of its own, which
is cancelled when a node leaves or the deadline passes (:func:`run_job`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from openanomaly.core.config import Pipeline, Settings
from openanomaly.core.detect import Detection
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import NoSeries
from openanomaly.runtime.arrow import matrix_from_table
from openanomaly.runtime.options import JobOptions, num_gpus
from openanomaly.runtime.raydata import BIG_JOB, drive, fetch_dataset, ray_data, restart_args
from openanomaly.runtime.scorer import WindowScorer
from openanomaly.runtime.window import RunResult, check_block, claim, fetch_start, run_window

__all__ = ["run_job"]

log = logging.getLogger(__name__)

_COUNTS = ("series_in", "series_scored", "points", "anomalies", "written", "present", "points_in")


class _BlockJob:
    """A Ray Data scoring actor: each block of series is a :func:`~openanomaly.runtime.window.run_window`
    with :class:`WindowScorer` as its scorer; returns the block's counts."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None,
        options: JobOptions,
        fresh: bool,
    ) -> None:
        from openanomaly.io.tsdb import PrometheusClient

        self.pipeline = pipeline
        self.window = (start_ms, end_ms)
        self.fresh = fresh
        model = WindowScorer(model_cache=options.model_cache, model_factory=options.model_factory)

        def scorer(series: SeriesMatrix, start_ms: int, end_ms: int) -> Detection:
            return model.score(series, pipeline, settings, start_ms, end_ms, fit_time_ms)

        self.scorer = scorer
        self.client = PrometheusClient(settings.tsdb)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        block = matrix_from_table(table)
        counts = dict.fromkeys(_COUNTS, 0)
        counts["series_in"] = len(block)
        if check_block(block, self.pipeline) is None:  # else a shard with no data: nothing to do
            start_ms, end_ms = self.window
            _, result = run_window(
                self.pipeline,
                self.scorer,
                start_ms=start_ms,
                end_ms=end_ms,
                source=block,
                sink=self.client,
                fresh=self.fresh,
            )
            counts |= {
                "series_scored": result.series_scored,
                "points": result.points_scored,
                "anomalies": result.anomalies,
                "written": result.samples_written,
                "present": result.samples_present,
                "points_in": result.points_in,
            }
        return pa.table({name: pa.array([value], type=pa.int64()) for name, value in counts.items()})


def run_job(
    settings: Settings,
    pipeline: Pipeline,
    *,
    start_ms: int,
    end_ms: int,
    fit_time_ms: int | None = None,
    options: JobOptions | None = None,
    deadline: float | None = None,
) -> RunResult:
    """Score and write ``(start_ms, end_ms]`` of every series as one Ray Data job.

    For pipelines with very many series (see :class:`JobRunner`); the same window path
    as the warm actor (fetch with context, :class:`WindowScorer`, idempotent write), but
    fetched in parallel shards and scored by a pool of actors on every node.

    The job runs in a driving task of its own (:func:`raydata.drive`), stopped when
    ``deadline`` passes (WindowTimeout) or a node it started with leaves (NodeLost); the
    scheduler then runs the window again, sized to the cluster it finds, finds the window
    claimed (:func:`~openanomaly.runtime.window.claim`), and the write skips what the
    stopped job wrote.

    Raises:
        QueryError, RemoteWriteError: the TSDB stayed unreachable after retries.
        ModelError, ArtifactError: the model could not be loaded. WindowTimeout, NodeLost.
    """
    ray_data()
    options = options or JobOptions()
    began = time.perf_counter()
    what = f"pipeline {pipeline.name!r} window job"
    with BIG_JOB:
        totals = drive(
            _window_job,
            settings,
            pipeline,
            start_ms,
            end_ms,
            fit_time_ms,
            options,
            deadline=deadline,
            what=what,
        )
    if totals["series_in"] == 0:
        raise NoSeries(f"query {pipeline.query!r} returned no series", pipeline=pipeline.name)
    result = RunResult(
        pipeline=pipeline.name,
        start_ms=start_ms,
        end_ms=end_ms,
        series_in=totals["series_in"],
        series_scored=totals["series_scored"],
        points_scored=totals["points"],
        anomalies=totals["anomalies"],
        samples_written=totals["written"],
        samples_present=totals["present"],
        points_in=totals["points_in"],
        duration_s=time.perf_counter() - began,
    )
    log.info("job %s", result)
    return result


def _window_job(
    settings: Settings,
    pipeline: Pipeline,
    start_ms: int,
    end_ms: int,
    fit_time_ms: int | None,
    options: JobOptions,
) -> dict[str, int]:
    """The driving task of :func:`run_job`: the window claimed once, then the Ray Data
    pipeline, summed to its counts."""
    from openanomaly.io.tsdb import PrometheusClient

    with PrometheusClient(settings.tsdb) as client:
        fresh = claim(client, pipeline, start_ms=start_ms, end_ms=end_ms)
    dataset, budget = fetch_dataset(
        settings, pipeline, start_ms=fetch_start(pipeline, start_ms), end_ms=end_ms, options=options
    )
    scored = dataset.map_batches(
        _BlockJob,
        fn_constructor_kwargs={
            "settings": settings,
            "pipeline": pipeline,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "fit_time_ms": fit_time_ms,
            "options": options,
            "fresh": fresh,
        },
        batch_size=None,
        batch_format="pyarrow",
        compute=ray_data().ActorPoolStrategy(min_size=1, max_size=budget.workers),
        num_cpus=budget.worker_cpus,
        num_gpus=num_gpus(pipeline, options),
        **restart_args(options),
    )
    totals = dict.fromkeys(_COUNTS, 0)
    for row in scored.iter_rows():
        for name in totals:
            totals[name] += int(row[name])
    return totals
