"""Where a pipeline's windows and fits run on Ray: warm model actors, and Ray Data where it pays.

**Scheduled windows** (:meth:`JobRunner.run_window`) go through the one window path
(:func:`openanomaly.runtime.window.run_window`): the scheduler's worker thread fetches the
window, a *warm model actor* scores it, the thread writes what is new; a pipeline of more
than ``series_per_shard`` series shard by shard (:func:`_run_shards`: the actor scores
one shard while the thread writes the one before and fetches the next). The fetched
contexts are kept between windows (:class:`~openanomaly.runtime.contexts.ContextCache`),
so a window fetches only its new points. A model actor
(:class:`~openanomaly.runtime.scorer.WindowScorer` on Ray) is started once per model and
kept across windows and pipelines (one per zero-shot model spec and params; one per fitted
pipeline, holding its per-series models), so a window costs a fetch, one forecast call and
a write: no job, pool or model load per window. It reserves no CPU (``num_cpus=0``): a
long-lived model that held a core would starve fits and tasks on a small cluster (on 2
CPUs a held core plus the scheduler left Ray Data's fetch stage waiting forever); the OS
shares the cores, Ray only needs to *place* it. GPU models reserve their GPU.

**Ray Data** runs what is big: fits (:func:`~openanomaly.runtime.fits.fit_job`:
per-series models in parallel tasks, one global NHITS in one task) and windows of
pipelines with very many series (:func:`~openanomaly.runtime.window_job.run_job`, used
once the runner's own measurements say the job is faster than the warm path, see
:meth:`JobRunner.uses_ray_data`), sized to the free cluster (:mod:`openanomaly.runtime.raydata`).

Failure model: the TSDB client retries with backoff; if reads or writes still fail the
window raises (``QueryError``/``RemoteWriteError``) and the scheduler retries it later.
Writes skip samples already stored (:func:`openanomaly.runtime.window.claim` and
:func:`~openanomaly.runtime.window.write`), so a retried or overlapping window never stores
a second sample. A model actor that dies is restarted
by Ray; the window in flight fails and is retried on the next tick.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from openanomaly.core.config import Pipeline, Settings
from openanomaly.core.detect import Detection, check_input
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import DataError, ModelError, OpenAnomalyError, WindowTimeout
from openanomaly.runtime.contexts import ContextCache
from openanomaly.runtime.fits import FitResult, fit_job
from openanomaly.runtime.options import JobOptions, num_gpus
from openanomaly.runtime.scorer import WindowScorer
from openanomaly.runtime.shards import plan_shards
from openanomaly.runtime.window import (
    RunResult,
    Scorer,
    Tally,
    TSDBClient,
    check_block,
    claim,
    fetch_start,
    run_window,
)
from openanomaly.runtime.window_job import run_job

__all__ = ["JobRunner"]


def _model_key(pipeline: Pipeline) -> str:
    """Which model actor serves the pipeline: one per zero-shot model, one per fitted pipeline."""
    if pipeline.schedule.fit_every is not None:
        return f"fitted:{pipeline.name}"
    return "model:" + json.dumps([pipeline.model.spec, pipeline.model.params], sort_keys=True, default=str)


_JOB_OVERHEAD_S = 15.0
"""What a Ray Data window job costs beyond its work until one was measured here: its
pool of scoring actors starts and loads the model for every job (benchmarks/scale_out.py)."""


class JobRunner:
    """Runs the scheduler's windows and fits on the Ray cluster this process is connected to.

    Keeps one warm model actor per model (see the module docstring) and drops the actors
    no configured pipeline uses (:meth:`prune`). Measures what it runs: the warm path's
    seconds per series of each pipeline, and a Ray Data job's fixed cost (its seconds
    beyond that work spread over the cluster's CPUs), which pick the path of the next
    window (:meth:`uses_ray_data`).
    """

    def __init__(self, options: JobOptions | None = None) -> None:
        self.options = options or JobOptions()
        self._actors: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._per_series_s: dict[str, float] = {}
        self._job_overhead_s = _JOB_OVERHEAD_S
        self.contexts = ContextCache(self.options.context_cache_mb * 2**20)

    def uses_ray_data(self, pipeline: Pipeline, series: int) -> bool:
        """Whether a window of ``series`` series is faster as a Ray Data job than on the warm path.

        The warm path is one process: ``series x s`` (``s``: seconds per series of this
        pipeline's last warm window). A job spreads the same work over the cluster's CPUs
        and pays a fixed cost first: ``overhead + series x s / cpus``. Until the pipeline
        ran warm once there is no ``s``, so its first windows run warm; the first window
        whose contexts were then kept is not measured (it fetched what the next ones will
        not, see :class:`~openanomaly.runtime.contexts.ContextCache`). An explicit
        ``JobOptions.ray_data_min_series`` decides instead.
        """
        import ray

        if self.options.ray_data_min_series is not None:
            return series >= self.options.ray_data_min_series
        per_series = self._per_series_s.get(pipeline.name)
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if per_series is None or series == 0 or cpus <= 1:
            return False
        warm = per_series * series
        return self._job_overhead_s + warm / cpus < warm

    def _measured(self, pipeline: Pipeline, result: RunResult, *, job: bool) -> RunResult:
        """Keep what ``result`` says about the path it took (see :meth:`uses_ray_data`)."""
        import ray

        if result.series_in == 0:
            return result
        if not job:
            self._per_series_s[pipeline.name] = result.duration_s / result.series_in
        elif pipeline.name in self._per_series_s:
            cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1.0)))
            work = self._per_series_s[pipeline.name] * result.series_in / cpus
            self._job_overhead_s = max(0.0, result.duration_s - work)
        return result

    def _actor(self, pipeline: Pipeline) -> Any:
        import ray

        key = _model_key(pipeline)
        with self._lock:
            if key not in self._actors:
                remote = ray.remote(WindowScorer).options(
                    num_cpus=0,
                    num_gpus=num_gpus(pipeline, self.options),
                    max_restarts=-1,
                    max_task_retries=0,
                )
                self._actors[key] = remote.remote(
                    model_cache=self.options.model_cache, model_factory=self.options.model_factory
                )
            return self._actors[key]

    def _call(self, pipeline: Pipeline, method: str, *args: Any, deadline: float | None) -> Any:
        """Call the pipeline's model actor; WindowTimeout past ``deadline`` (monotonic seconds)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        actor = self._actor(pipeline)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return ray.get(getattr(actor, method).remote(*args), timeout=timeout)
        except GetTimeoutError:
            raise WindowTimeout(
                f"pipeline {pipeline.name!r}: the model actor for {pipeline.model.spec!r} did not answer "
                f"in time (it may be waiting for resources: GPU {num_gpus(pipeline, self.options):g}; "
                "see `ray status`)"
            ) from None
        except RayActorError as error:
            with self._lock:
                self._actors.pop(_model_key(pipeline), None)  # a fresh one next time
            raise ModelError(f"the model actor died: {error}", spec=pipeline.model.spec) from None
        except RayTaskError as error:
            cause = error.cause
            if isinstance(cause, OpenAnomalyError):
                raise cause from None
            raise ModelError(f"scoring failed: {cause!r}", spec=pipeline.model.spec) from None

    def scorer(
        self, settings: Settings, pipeline: Pipeline, *, fit_time_ms: int | None, deadline: float | None
    ) -> Scorer:
        """A :data:`openanomaly.runtime.window.Scorer` that scores in the pipeline's warm model actor."""

        def score(series: SeriesMatrix, start_ms: int, end_ms: int) -> Detection:
            return self._call(
                pipeline,
                "score",
                series,
                pipeline,
                settings,
                start_ms,
                end_ms,
                fit_time_ms,
                deadline=deadline,
            )

        return score

    def run_window(
        self,
        settings: Settings,
        pipeline: Pipeline,
        *,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None = None,
        series_hint: int = 0,
        timeout_s: float | None = None,
    ) -> RunResult:
        """Score and write one window: warm actor, or a Ray Data job for very many series.

        Args:
            series_hint: series the pipeline's last window had (0: not known yet); see
                :meth:`uses_ray_data`.
            timeout_s: give up (WindowTimeout) after this long.

        Raises:
            QueryError, RemoteWriteError, DataError, ModelError, ArtifactError, WindowTimeout.
        """
        from openanomaly.io.tsdb import PrometheusClient

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.uses_ray_data(pipeline, series_hint):
            result = run_job(
                settings,
                pipeline,
                start_ms=start_ms,
                end_ms=end_ms,
                fit_time_ms=fit_time_ms,
                options=self.options,
                deadline=deadline,
            )
            return self._measured(pipeline, result, job=True)
        if deadline is not None:  # wait for placement before the fetch, so a stuck model costs no I/O
            self._call(pipeline, "ready", deadline=deadline)
        scorer = self.scorer(settings, pipeline, fit_time_ms=fit_time_ms, deadline=deadline)
        one_query = 0 < series_hint <= self.options.series_per_shard
        joins = self.contexts.holds(pipeline.name)
        with PrometheusClient(settings.tsdb) as client:
            result = _run_shards(
                client,
                pipeline,
                scorer,
                self.contexts,
                start_ms=start_ms,
                end_ms=end_ms,
                series_per_shard=None if one_query else self.options.series_per_shard,
            )
        if not joins and self.contexts.holds(pipeline.name):
            return result  # it fetched what the next window will not: measure that one
        return self._measured(pipeline, result, job=False)

    def run_fit(
        self, settings: Settings, pipeline: Pipeline, *, fit_time_ms: int, timeout_s: float | None = None
    ) -> FitResult:
        """Fit the pipeline's models (a Ray Data job); see :func:`fit_job`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return fit_job(settings, pipeline, fit_time_ms=fit_time_ms, options=self.options, deadline=deadline)

    def prune(self, pipelines: Iterable[Pipeline]) -> None:
        """Stop the model actors that none of ``pipelines`` uses (after a config change)."""
        import ray

        pipelines = list(pipelines)
        self.contexts.forget(pipeline.name for pipeline in pipelines)
        wanted = {_model_key(pipeline) for pipeline in pipelines}
        with self._lock:
            for key in [key for key in self._actors if key not in wanted]:
                ray.kill(self._actors.pop(key))

    def close(self) -> None:
        """Stop every model actor."""
        self.prune(())


def _run_shards(
    client: TSDBClient,
    pipeline: Pipeline,
    scorer: Scorer,
    contexts: ContextCache,
    *,
    start_ms: int,
    end_ms: int,
    series_per_shard: int | None,
) -> RunResult:
    """One window in this process, shard by shard (the Ray Data job's shard plan), each
    shard's block from ``contexts``; ``series_per_shard=None``: one query, no plan.

    Why: one query for all of a very large pipeline makes this process parse the whole
    answer at once, and the parsed JSON takes tens of times the matrix it becomes; shard
    by shard (fetch, score in the warm actor, write), parsing takes one shard's memory
    whatever the series count (the contexts kept between windows are bounded apart, by
    ``JobOptions.context_cache_mb``). The actor scores a shard while this thread writes
    the one before and fetches the next, so the window takes about the longer of the two,
    not their sum; at most two shards are in flight. A pipeline whose last window fit one
    shard, or whose query is not a plain selector, is one query as before. The window is
    claimed once, before its first shard. A shard that fails fails the window after the
    shards before it were written; the retry finds the range claimed and skips what they
    wrote.
    """
    began = time.perf_counter()
    queries = [pipeline.query]
    if series_per_shard is not None:
        first = fetch_start(pipeline, start_ms)
        queries, _ = plan_shards(
            client, pipeline, start_ms=first, end_ms=end_ms, series_per_shard=series_per_shard
        )
    if len(queries) == 1:
        block = contexts.query_block(client, pipeline, start_ms=start_ms, end_ms=end_ms)
        check_input(block, pipeline)
        return run_window(pipeline, scorer, start_ms=start_ms, end_ms=end_ms, source=block, sink=client)[1]
    tally = Tally()
    fresh = claim(client, pipeline, start_ms=start_ms, end_ms=end_ms)
    with ThreadPoolExecutor(2, thread_name_prefix="score") as pool:
        scoring: list[tuple[Pipeline, SeriesMatrix, Future[Detection]]] = []
        try:
            for query in [*queries, None]:
                if query is not None:
                    shard = pipeline.model_copy(update={"query": query})
                    block = contexts.query_block(client, shard, start_ms=start_ms, end_ms=end_ms)
                    if check_block(block, shard) is None:  # else: silent in the window, the others count
                        scoring.append((shard, block, pool.submit(scorer, block, start_ms, end_ms)))
                while len(scoring) > (0 if query is None else 1):
                    done, fetched, scored = scoring.pop(0)
                    detection, result = run_window(
                        done,
                        lambda *_: scored.result(),  # noqa: B023 - called before the loop moves on
                        start_ms=start_ms,
                        end_ms=end_ms,
                        source=fetched,
                        sink=client,
                        fresh=fresh,
                    )
                    tally.add(detection, result.samples_written, result.samples_present)
        finally:
            for _, _, scored in scoring:
                scored.cancel()  # a failed window: what is not scoring yet never starts
    if not tally.series:
        raise DataError(
            f"no series of query {pipeline.query!r} has a finite value in the requested range",
            pipeline=pipeline.name,
        )
    return tally.result(pipeline, start_ms, end_ms, time.perf_counter() - began)
