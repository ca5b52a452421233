"""Where a pipeline's windows and fits run on Ray: warm model actors, and Ray Data where it pays.

**Scheduled windows** (:class:`JobRunner.run_window`) go through the one window path
(:mod:`openanomaly.runtime.window`): the scheduler's worker thread fetches the window, a *warm
model actor* scores it, the thread writes what is new. A model actor
(:class:`WindowScorer` on Ray) is started once per model and kept across windows and
pipelines (one per zero-shot model spec and params; one per fitted pipeline, holding its
per-series models), so a window costs a fetch, one forecast call and a write: no job,
pool or model load per window. It reserves no CPU (``num_cpus=0``): a long-lived model
that held a core would starve fits and tasks on a small cluster (on 2 CPUs a held core
plus the scheduler left Ray Data's fetch stage waiting forever); the OS shares the
cores, Ray only needs to *place* it. GPU models reserve their GPU.

**Ray Data** runs what is big: fits (:func:`fit_job`: per-series models in parallel
tasks, one global NHITS in one task) and windows of pipelines with very many series
(:func:`run_job`, used by :class:`JobRunner` once a pipeline's last window saw at least
``JobOptions.ray_data_min_series`` series). Its fetch tasks, scoring actors and fit tasks
are sized to the CPUs the cluster has free when the job starts, and one such job runs at a
time (:data:`_BIG_JOB`), so two jobs never each hold half of what both need.

Rows of a Ray Data job are series; blocks are Arrow tables::

    labels: string (the label set as JSON)    values: fixed_size_list<float64>[t]
    t0: int64 (first grid timestamp, ms)      step: int64 (grid step, ms)

Sharding ("list series"): when the pipeline query is a plain selector
(``metric{a="b"}``), the job lists the matching series (``/api/v1/series``), picks the
label with the most distinct values (``instance``, ``pod``...) and gives each shard a
copy of the selector with a ``label=~"v1|v2|…"`` matcher, so shards are disjoint and
together cover every series. Any other PromQL expression is fetched by one read task,
which cuts its rows into blocks itself (no repartition stage to wait for).

Failure model: the TSDB client retries with backoff; if reads or writes still fail the
window raises (``QueryError``/``RemoteWriteError``) and the scheduler retries it later.
Writes skip samples already stored (:func:`openanomaly.runtime.window.write`), so a retried or
overlapping window never stores a second sample. A model actor that dies is restarted
by Ray; the window in flight fails and is retried on the next tick. An artifact store
that cannot be read is an error, never "no model for this series".
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openanomaly.core.config import Pipeline, Settings
from openanomaly.core.detect import Detection, score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import (
    ArtifactError,
    ArtifactNotFound,
    DataError,
    ModelError,
    NoSeries,
    OpenAnomalyError,
    WindowTimeout,
)
from openanomaly.io.artifacts import (
    GLOBAL_SERIES_KEY,
    ArtifactStore,
    latest_model,
    model_key,
    open_store,
    save_model,
    series_key,
)
from openanomaly.models.base import Forecaster
from openanomaly.runtime.window import RunResult, Scorer, check_block, fetch_start, run_window

__all__ = [
    "FitResult",
    "JobOptions",
    "JobRunner",
    "ModelFactory",
    "WindowScorer",
    "fit_job",
    "matrix_from_table",
    "plan_shards",
    "run_job",
    "table_from_matrix",
    "train_global",
]

log = logging.getLogger(__name__)

# A plain instant-vector selector: optional metric name, optional {matchers}, nothing else.
_SELECTOR = re.compile(r"^\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(?P<matchers>[^{}]*)\})?\s*$")
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")
_BIG_JOB = threading.Semaphore(1)
"""One Ray Data job at a time per scheduler: each is sized to the whole free cluster."""

ModelFactory = Callable[[Pipeline], Forecaster]
"""Builds a zero-shot pipeline's forecaster in the model actor (see ``JobOptions.model_factory``)."""


@dataclass(frozen=True)
class JobOptions:
    """How windows and fits are spread over the cluster.

    Attributes:
        series_per_shard: series per fetch task of a Ray Data job (one query per shard).
        batch_size: series per block of a Ray Data job (one forecast call, one write).
        max_workers: Ray Data scoring actors / fit tasks at most; fewer when the cluster
            has fewer CPUs free (each gets ``worker_num_cpus``, or less to fit).
        worker_num_cpus: CPUs reserved per Ray Data scoring actor or fit task.
        fetch_num_cpus: CPUs reserved per Ray Data fetch task (mostly waiting on HTTP).
        num_gpus: GPUs per model actor; None = 1 when the cluster has GPUs and the model
            runs on one (chronos; neuralforecast with ``accelerator: gpu``), else 0.
        ray_data_min_series: a pipeline whose last window had at least this many series
            runs its windows as Ray Data jobs (fetch shards in parallel, several scoring
            actors, on every node); below it, the warm model actor is faster.
        max_restarts / max_task_retries: Ray Data scoring actors: None = Ray Data's own
            default (restart and retry without limit); setting them uses Ray 2.60's
            deprecated ``ray_remote_args`` path.
        model_cache: fitted per-series models kept in each model actor (LRU).
        model_factory: builds the forecaster of a zero-shot pipeline in the model actor
            instead of the registry: for a model of your own, or a test model that fails
            on purpose. It must pickle (a module-level function or class does). Fitted
            pipelines load their models from the ArtifactStore and refuse a factory.
    """

    series_per_shard: int = 1000
    batch_size: int = 512
    max_workers: int = 2
    worker_num_cpus: float = 1.0
    fetch_num_cpus: float = 0.25
    num_gpus: float | None = None
    ray_data_min_series: int = 20_000
    max_restarts: int | None = None
    max_task_retries: int | None = None
    model_cache: int = 50_000
    model_factory: ModelFactory | None = None

    def __post_init__(self) -> None:
        for name in ("series_per_shard", "batch_size", "max_workers", "ray_data_min_series"):
            if getattr(self, name) < 1:
                raise ValueError(f"JobOptions.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("worker_num_cpus", "fetch_num_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"JobOptions.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class FitResult:
    """What one fit job stored."""

    pipeline: str
    fit_time_ms: int
    series_in: int
    models_saved: int
    duration_s: float = 0.0
    keys: tuple[str, ...] = field(default=(), repr=False)


# ----------------------------------------------------------------------------- Arrow <-> numpy


def table_from_matrix(matrix: SeriesMatrix, *, step_ms: int) -> Any:
    """A ``SeriesMatrix`` on a regular grid as an Arrow table, one row per series."""
    import pyarrow as pa

    n, t = matrix.values.shape
    t0 = int(matrix.timestamps[0]) if t else 0
    flat = pa.array(np.ascontiguousarray(matrix.values).reshape(-1), type=pa.float64())
    return pa.table(
        {
            "labels": pa.array([json.dumps(dict(labels), sort_keys=True) for labels in matrix.labels]),
            "values": pa.FixedSizeListArray.from_arrays(flat, max(t, 1)) if t else pa.nulls(n, pa.null()),
            "t0": pa.array(np.full(n, t0, dtype=np.int64)),
            "step": pa.array(np.full(n, step_ms, dtype=np.int64)),
        }
    )


def matrix_from_table(table: Any) -> SeriesMatrix:
    """The inverse of :func:`table_from_matrix` (a block from the job's dataset)."""
    import pyarrow as pa

    n = table.num_rows
    if n == 0:
        return SeriesMatrix.empty()
    column = table.column("values").combine_chunks()
    if pa.types.is_null(column.type):
        return SeriesMatrix.empty()
    # Ray may turn fixed-size lists into variable lists when it concatenates blocks.
    fixed = pa.types.is_fixed_size_list(column.type)
    width = column.type.list_size if fixed else len(column[0].values)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(n, width)
    t0 = int(table.column("t0")[0].as_py())
    step = int(table.column("step")[0].as_py())
    labels = tuple(json.loads(text) for text in table.column("labels").to_pylist())
    timestamps = t0 + step * np.arange(width, dtype=np.int64)
    return SeriesMatrix(labels, timestamps, np.array(values))


# ----------------------------------------------------------------------------- sharding


def _quote(value: str) -> str:
    """A PromQL string literal for a RE2 pattern matching ``value`` exactly."""
    pattern = _RE2_SPECIAL.sub(r"\\\1", value)
    return '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shard_queries(query: str, series: list[dict[str, str]], shards: int) -> list[str]:
    match = _SELECTOR.match(query)
    if match is None or shards <= 1 or not series:
        return [query]
    distinct: dict[str, set[str]] = {}
    for labels in series:
        for name, value in labels.items():
            distinct.setdefault(name, set()).add(value)
    candidates = [name for name in distinct if name != "__name__"]
    if not candidates:
        return [query]
    label = max(candidates, key=lambda name: (len(distinct[name]), name))
    values = sorted(distinct[label])
    shards = min(shards, len(values))
    groups: list[list[str]] = [[] for _ in range(shards)]
    for value in values:
        groups[zlib.crc32(value.encode()) % shards].append(value)
    has_missing = any(label not in labels for labels in series)
    name = match.group("name") or ""
    matchers = (match.group("matchers") or "").strip().rstrip(",")
    out = []
    for index, group in enumerate(groups):
        if not group:
            continue
        regex = "|".join(_quote(v)[1:-1] for v in group)
        if has_missing and index == 0:
            regex += "|"  # series without the label match the empty string
        extra = f'{label}=~"{regex}"'
        out.append(f"{name}{{{matchers + ', ' if matchers else ''}{extra}}}")
    return out


def plan_shards(
    client: Any, pipeline: Pipeline, *, start_ms: int, end_ms: int, series_per_shard: int
) -> tuple[list[str], int | None]:
    """The queries of the job's fetch tasks, and the series count when it was listed.

    Raises:
        QueryError: the series listing failed.
    """
    if _SELECTOR.match(pipeline.query) is None:
        return [pipeline.query], None
    listed = client.series(pipeline.query, start_ms=start_ms, end_ms=end_ms)
    shards = max(1, math.ceil(len(listed) / series_per_shard))
    return _shard_queries(pipeline.query, listed, shards), len(listed)


# ----------------------------------------------------------------------------- the model holder


class WindowScorer:
    """Holds models and scores fetched series with them: the body of every model actor.

    Plain Python: the scheduler runs it as a long-lived Ray actor (one per model), a Ray
    Data job as its scoring actors, tests call it directly. Scoring is
    :func:`openanomaly.core.detect.score_range`, the pure core every path uses.

    Models are loaded on first use and kept: zero-shot forecasters per (spec, params);
    fitted per-series models per (pipeline, series, fit) in an LRU of ``model_cache``;
    a global fitted model (NHITS) per (pipeline, fit).

    Args:
        model_factory: zero-shot pipelines: builds the forecaster instead of the registry.
    """

    def __init__(self, *, model_cache: int = 50_000, model_factory: ModelFactory | None = None) -> None:
        self.model_factory = model_factory
        self.cache_size = model_cache
        self._forecasters: dict[str, Forecaster] = {}
        self._fitted: OrderedDict[tuple[str, str, int], Any | None] = OrderedDict()
        self._stores: dict[str, ArtifactStore] = {}

    def ready(self) -> bool:
        """Answers once the actor runs (the scheduler waits on it to see placement problems)."""
        return True

    def score(
        self,
        series: SeriesMatrix,
        pipeline: Pipeline,
        settings: Settings,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None = None,
    ) -> Detection:
        """Score ``(start_ms, end_ms]`` of ``series`` (a checked block) with the pipeline's model.

        Args:
            fit_time_ms: fitted pipelines: the fit whose models to use; None = the latest
                fit at or before ``start_ms``.

        Raises:
            ArtifactError: the store could not be read, or a global model has no fit at or
                before the window.
            ModelError: as :func:`openanomaly.core.detect.score_range`.
        """
        from openanomaly.models.fitted import is_global

        window = {"start_ms": start_ms, "end_ms": end_ms, "checked": True}
        if pipeline.schedule.fit_every is None:
            return score_range(series, pipeline, self._zero_shot(pipeline), **window)
        if self.model_factory is not None:
            raise ModelError(
                "model_factory is for zero-shot pipelines; fitted models are loaded from the ArtifactStore",
                spec=pipeline.model.spec,
            )
        store = self._store(settings)
        if is_global(pipeline.fit_spec):
            model = self._fitted_model(store, pipeline, GLOBAL_SERIES_KEY, fit_time_ms, start_ms)
            if model is None:
                raise ArtifactError(
                    f"no global model fitted at or before {fit_time_ms or start_ms}",
                    key=f"{pipeline.name}/{GLOBAL_SERIES_KEY}",
                )
            return score_range(series, pipeline, model, **window)
        return self._score_per_series(store, series, pipeline, start_ms, end_ms, fit_time_ms)

    def _zero_shot(self, pipeline: Pipeline) -> Forecaster:
        key = json.dumps([pipeline.model.spec, pipeline.model.params], sort_keys=True, default=str)
        if key not in self._forecasters:
            if self.model_factory is not None:
                self._forecasters[key] = self.model_factory(pipeline)
            else:
                from openanomaly.models.registry import load_forecaster

                self._forecasters[key] = load_forecaster(pipeline.model.spec, **pipeline.model.params)
        return self._forecasters[key]

    def _store(self, settings: Settings) -> ArtifactStore:
        key = settings.artifacts.model_dump_json()
        if key not in self._stores:
            self._stores[key] = open_store(settings.artifacts)
        return self._stores[key]

    def _fitted_model(
        self, store: ArtifactStore, pipeline: Pipeline, key: str, fit_time_ms: int | None, start_ms: int
    ) -> Any | None:
        """The model fitted for ``key`` (None: none was fitted for it); cached."""
        from openanomaly.models.fitted import is_global, load_global, load_series_model

        if fit_time_ms is None:
            ref = latest_model(store, pipeline=pipeline.name, series=key, at_or_before_ms=start_ms)
            if ref is None:
                return None
            fit_time_ms = ref.fit_time_ms
        cache_key = (pipeline.name, key, fit_time_ms)
        if cache_key in self._fitted:
            self._fitted.move_to_end(cache_key)
            return self._fitted[cache_key]
        try:
            blob = store.get(model_key(pipeline.name, key, fit_time_ms))
        except ArtifactNotFound:
            model = None  # a series that appeared after the fit: the store said so
        else:
            fit = pipeline.fit_spec
            model = load_global(fit, blob) if is_global(fit) else load_series_model(fit, blob)
        self._fitted[cache_key] = model
        if len(self._fitted) > self.cache_size:
            self._fitted.popitem(last=False)
        return model

    def _score_per_series(
        self,
        store: ArtifactStore,
        series: SeriesMatrix,
        pipeline: Pipeline,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None,
    ) -> Detection:
        """One model per series: load them in parallel (S3 latency), score each, merge the rows."""
        keys = [series_key(labels) for labels in series.labels]
        with ThreadPoolExecutor(16) as pool:
            models = list(
                pool.map(lambda key: self._fitted_model(store, pipeline, key, fit_time_ms, start_ms), keys)
            )
        parts = []
        for row, model in enumerate(models):
            one = series.select([row])
            if model is None or not np.isfinite(one.values).any():
                parts.append(None)
                continue
            parts.append(score_range(one, pipeline, model, start_ms=start_ms, end_ms=end_ms, checked=True))
        unfitted = sum(model is None for model in models)
        if unfitted:
            log.warning(
                "pipeline %r: %d of %d series have no fitted model (new since the fit); not scored",
                pipeline.name,
                unfitted,
                len(models),
            )
        return _merge_rows(series, parts, start_ms=start_ms, end_ms=end_ms)


def _merge_rows(
    series: SeriesMatrix, parts: list[Detection | None], *, start_ms: int, end_ms: int
) -> Detection:
    """One Detection from per-row ones (None: that row was not scored)."""
    stamps = series.timestamps
    inside = (stamps > start_ms) & (stamps <= end_ms)
    shape = (len(series), int(inside.sum()))
    arrays = {name: np.full(shape, np.nan) for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper")}
    skipped = []
    for row, part in enumerate(parts):
        if part is None:
            continue
        for name, target in arrays.items():
            target[row] = getattr(part, name)[0]
        if part.skipped:
            skipped.append(row)
    return Detection(
        series.labels, stamps[inside], series.values[:, inside], **arrays, skipped=tuple(skipped)
    )


# ----------------------------------------------------------------------------- warm model actors


def _gpus(pipeline: Pipeline, options: JobOptions) -> float:
    if options.num_gpus is not None:
        return options.num_gpus
    import ray

    from openanomaly.models.registry import model_info

    # A GPU reserved for a model that runs on CPU would only starve the ones that use it.
    gpu_model = model_info(pipeline.model.spec, pipeline.model.params).gpu
    return 1.0 if gpu_model and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _model_key(pipeline: Pipeline) -> str:
    """Which model actor serves the pipeline: one per zero-shot model, one per fitted pipeline."""
    if pipeline.schedule.fit_every is not None:
        return f"fitted:{pipeline.name}"
    return "model:" + json.dumps([pipeline.model.spec, pipeline.model.params], sort_keys=True, default=str)


class JobRunner:
    """Runs the scheduler's windows and fits on the Ray cluster this process is connected to.

    Keeps one warm model actor per model (see the module docstring) and drops the actors
    no configured pipeline uses (:meth:`prune`).
    """

    def __init__(self, options: JobOptions | None = None) -> None:
        self.options = options or JobOptions()
        self._actors: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _actor(self, pipeline: Pipeline) -> Any:
        import ray

        key = _model_key(pipeline)
        with self._lock:
            if key not in self._actors:
                remote = ray.remote(WindowScorer).options(
                    num_cpus=0,
                    num_gpus=_gpus(pipeline, self.options),
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
                f"in time (it may be waiting for resources: GPU {_gpus(pipeline, self.options):g}; "
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
            series_hint: series the pipeline's last window had (picks Ray Data past
                ``JobOptions.ray_data_min_series``).
            timeout_s: give up (WindowTimeout) after this long.

        Raises:
            QueryError, RemoteWriteError, DataError, ModelError, ArtifactError, WindowTimeout.
        """
        from openanomaly.io.tsdb import PrometheusClient

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if series_hint >= self.options.ray_data_min_series:
            return run_job(
                settings,
                pipeline,
                start_ms=start_ms,
                end_ms=end_ms,
                fit_time_ms=fit_time_ms,
                options=self.options,
                deadline=deadline,
            )
        if deadline is not None:  # wait for placement before the fetch, so a stuck model costs no I/O
            self._call(pipeline, "ready", deadline=deadline)
        scorer = self.scorer(settings, pipeline, fit_time_ms=fit_time_ms, deadline=deadline)
        with PrometheusClient(settings.tsdb) as client:
            _, result = run_window(
                pipeline, scorer, start_ms=start_ms, end_ms=end_ms, source=client, sink=client
            )
        return result

    def run_fit(
        self, settings: Settings, pipeline: Pipeline, *, fit_time_ms: int, timeout_s: float | None = None
    ) -> FitResult:
        """Fit the pipeline's models (a Ray Data job); see :func:`fit_job`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return fit_job(settings, pipeline, fit_time_ms=fit_time_ms, options=self.options, deadline=deadline)

    def prune(self, pipelines: Iterable[Pipeline]) -> None:
        """Stop the model actors that none of ``pipelines`` uses (after a config change)."""
        import ray

        wanted = {_model_key(pipeline) for pipeline in pipelines}
        with self._lock:
            for key in [key for key in self._actors if key not in wanted]:
                ray.kill(self._actors.pop(key))

    def close(self) -> None:
        """Stop every model actor."""
        self.prune(())


# ----------------------------------------------------------------------------- Ray Data jobs


def _ray_data() -> Any:
    import ray
    import ray.data

    if not ray.is_initialized():
        raise DataError("jobs need a Ray cluster: call ray.init() (or run inside the scheduler actor)")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray.data


@dataclass(frozen=True)
class _Budget:
    """What one Ray Data job may reserve: sized to the CPUs free when it starts."""

    workers: int
    worker_cpus: float
    fetch_cpus: float
    fetch_tasks: int


def _budget(options: JobOptions, shards: int) -> _Budget:
    """Workers and CPUs for a job so that its fetch tasks AND its workers fit at once.

    Why: Ray Data starts the scoring actors first; if they took every free CPU, the
    fetch tasks that feed them could never be placed (the stall seen on 2-CPU clusters).
    The fetch stage gets its share first, the workers the rest (at least one, shrunk
    to fit when less than ``worker_num_cpus`` is free).
    """
    import ray

    free = float(ray.available_resources().get("CPU", 0.0))
    fetch_tasks = max(1, min(shards, 4))
    fetch_cpus = min(options.fetch_num_cpus, max(0.05, free / 4))
    left = max(0.05, free - fetch_cpus * fetch_tasks)
    worker_cpus = min(options.worker_num_cpus, left)
    workers = max(1, min(options.max_workers, math.floor(left / worker_cpus + 1e-9)))
    return _Budget(workers, worker_cpus, fetch_cpus, fetch_tasks)


def _fetch(
    batch: dict[str, np.ndarray],
    *,
    settings: Settings,
    pipeline: Pipeline,
    start_ms: int,
    end_ms: int,
    rows_per_block: int,
) -> Iterator[Any]:
    """Read task: one shard query → Arrow blocks of at most ``rows_per_block`` series.

    A stateless task rather than an actor: Ray reuses its pooled worker processes for
    tasks. It cuts its own blocks, so one big query still feeds every scoring actor
    without a repartition stage.
    """
    from openanomaly.io.tsdb import PrometheusClient

    with PrometheusClient(settings.tsdb) as client:
        step_ms = pipeline.step_ms
        for query in batch["query"]:
            matrix = client.query_range(str(query), start_ms=start_ms, end_ms=end_ms, step_ms=step_ms)
            for first in range(0, len(matrix), rows_per_block):
                rows = np.arange(first, min(first + rows_per_block, len(matrix)))
                yield table_from_matrix(matrix.select(rows), step_ms=step_ms)


def _fetch_dataset(
    settings: Settings,
    pipeline: Pipeline,
    *,
    start_ms: int,
    end_ms: int,
    options: JobOptions,
) -> tuple[Any, _Budget]:
    """The job's fetch stage, and the budget sized for its shard count (see :func:`_budget`)."""
    from openanomaly.io.tsdb import PrometheusClient

    data = _ray_data()
    with PrometheusClient(settings.tsdb) as client:
        queries, listed = plan_shards(
            client, pipeline, start_ms=start_ms, end_ms=end_ms, series_per_shard=options.series_per_shard
        )
    budget = _budget(options, shards=len(queries))
    # Enough blocks for every worker to get work, none larger than batch_size.
    rows_per_block = options.batch_size
    if listed is not None and len(queries) == 1:
        rows_per_block = max(1, min(options.batch_size, -(-listed // (2 * budget.workers))))
    dataset = data.from_items([{"query": q} for q in queries], override_num_blocks=len(queries)).map_batches(
        _fetch,
        fn_kwargs={
            "settings": settings,
            "pipeline": pipeline,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "rows_per_block": rows_per_block,
        },
        batch_size=1,
        batch_format="numpy",
        compute=data.TaskPoolStrategy(size=budget.fetch_tasks),
        num_cpus=budget.fetch_cpus,
    )
    return dataset, budget


def _restart_args(options: JobOptions) -> dict[str, int]:
    """Actor fault-tolerance overrides for the scoring pool; none by default.

    Ray Data already restarts a dead pool actor and retries its in-flight batch
    (``max_restarts=-1``, ``max_task_retries=-1``) unless told otherwise. Ray 2.60
    accepts overrides only through ``map_batches(**ray_remote_args)``, which is
    deprecated (removed in Ray 2.64), so they are passed only when set.
    """
    args = {}
    if options.max_restarts is not None:
        args["max_restarts"] = options.max_restarts
    if options.max_task_retries is not None:
        args["max_task_retries"] = options.max_task_retries
    return args


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
    ) -> None:
        from openanomaly.io.tsdb import PrometheusClient

        self.pipeline = pipeline
        self.window = (start_ms, end_ms)
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
                self.pipeline, self.scorer, start_ms=start_ms, end_ms=end_ms, source=block, sink=self.client
            )
            counts |= {
                "series_scored": result.series_scored,
                "points": result.points_scored,
                "anomalies": result.anomalies,
                "written": result.samples_written,
                "present": result.samples_present,
            }
        return pa.table({name: pa.array([value], type=pa.int64()) for name, value in counts.items()})


_COUNTS = ("series_in", "series_scored", "points", "anomalies", "written", "present")


def _rows(dataset: Any, deadline: float | None, what: str) -> Iterator[dict[str, Any]]:
    """The job's output rows; WindowTimeout once ``deadline`` passes (the job is dropped)."""
    for row in dataset.iter_rows():
        yield row
        if deadline is not None and time.monotonic() > deadline:
            raise WindowTimeout(f"{what} ran past its time limit")


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

    Raises:
        QueryError, RemoteWriteError: the TSDB stayed unreachable after retries.
        ModelError, ArtifactError: the model could not be loaded. WindowTimeout.
    """
    options = options or JobOptions()
    began = time.perf_counter()
    with _BIG_JOB:
        dataset, budget = _fetch_dataset(
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
            },
            batch_size=None,
            batch_format="pyarrow",
            compute=_ray_data().ActorPoolStrategy(min_size=1, max_size=budget.workers),
            num_cpus=budget.worker_cpus,
            num_gpus=_gpus(pipeline, options),
            **_restart_args(options),
        )
        totals = dict.fromkeys(_COUNTS, 0)
        for row in _rows(scored, deadline, f"pipeline {pipeline.name!r} window job"):
            for name in totals:
                totals[name] += int(row[name])
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
        duration_s=time.perf_counter() - began,
    )
    log.info("job %s", result)
    return result


def _fit(table: Any, *, settings: Settings, pipeline: Pipeline, fit_time_ms: int) -> Any:
    """Fit task: block of series over ``fit_window`` → one fitted model per series, stored.

    A task, not an actor: nothing is kept between blocks, and Ray reuses pooled
    worker processes for tasks (Ray retries a task whose process died, ``max_retries``).
    """
    import pyarrow as pa

    from openanomaly.models.fitted import fit_per_series

    matrix = matrix_from_table(table)
    store = open_store(settings.artifacts)
    blobs = fit_per_series(pipeline.fit_spec, matrix.values)
    keys = []
    for labels, blob in zip(matrix.labels, blobs, strict=True):
        if blob is not None:
            ref = save_model(
                store, pipeline=pipeline.name, series=series_key(labels), fit_time_ms=fit_time_ms, data=blob
            )
            keys.append(ref.key)
    return pa.table({"series_in": [len(matrix)], "keys": [json.dumps(keys)]})


def train_global(settings: Settings, pipeline: Pipeline, values: np.ndarray, *, fit_time_ms: int) -> str:
    """Train the pipeline's global model (NHITS) on ``values`` ``(n, t)`` and store it.

    The body of :func:`fit_job`'s training task, callable without Ray: the model is
    trained for horizon = the pipeline's chunk length and saved under
    ``<pipeline>/_global/<fit_time_ms>``, where every scoring actor finds it.

    Returns:
        the stored key.

    Raises:
        ModelError: training failed. ArtifactError: the store refused the write.
    """
    from openanomaly.models.fitted import fit_global

    blob = fit_global(pipeline.fit_spec, values, horizon=pipeline.chunk_points)
    store = open_store(settings.artifacts)
    return save_model(
        store, pipeline=pipeline.name, series=GLOBAL_SERIES_KEY, fit_time_ms=fit_time_ms, data=blob
    ).key


def fit_job(
    settings: Settings,
    pipeline: Pipeline,
    *,
    fit_time_ms: int,
    options: JobOptions | None = None,
    deadline: float | None = None,
) -> FitResult:
    """Fit the pipeline's model on ``(fit_time_ms - fit_window, fit_time_ms]`` and store it.

    Per-series models are fitted in parallel tasks, one block of series each; a global
    model (NHITS) is trained in one task on all series.

    Raises:
        ConfigError: the pipeline cannot be fitted (see ``check_fittable``).
        QueryError: the TSDB read failed. ModelError, ArtifactError: fit or save failed.
        WindowTimeout: the fit ran past ``deadline`` (monotonic seconds).
    """
    with _BIG_JOB:
        return _fit_job(settings, pipeline, fit_time_ms=fit_time_ms, options=options, deadline=deadline)


def _fit_job(
    settings: Settings,
    pipeline: Pipeline,
    *,
    fit_time_ms: int,
    options: JobOptions | None,
    deadline: float | None,
) -> FitResult:
    import ray
    from ray.exceptions import GetTimeoutError, RayTaskError

    from openanomaly.configstore.checks import check_fittable
    from openanomaly.models.fitted import is_global

    check_fittable(pipeline)
    options = options or JobOptions()
    began = time.perf_counter()
    window = pipeline.schedule.fit_window
    if window is None:  # guarded by check_fittable; keeps the type checker informed
        raise ModelError("fit_window is not set", spec=pipeline.model.spec)
    fit_start = fit_time_ms - round(window.total_seconds() * 1000)
    dataset, budget = _fetch_dataset(
        settings, pipeline, start_ms=fit_start, end_ms=fit_time_ms, options=options
    )
    if is_global(pipeline.fit_spec):
        blocks = [
            matrix_from_table(block)
            for block in dataset.iter_batches(batch_format="pyarrow", batch_size=None)
        ]
        blocks = [block for block in blocks if len(block)]
        if not blocks:
            raise NoSeries(f"query {pipeline.query!r} returned no series to fit on", pipeline=pipeline.name)
        values = np.concatenate([block.values for block in blocks])

        train = ray.remote(train_global).options(
            num_cpus=budget.worker_cpus, num_gpus=_gpus(pipeline, options), max_retries=2
        )
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            key = ray.get(train.remote(settings, pipeline, values, fit_time_ms=fit_time_ms), timeout=timeout)
        except GetTimeoutError:
            raise WindowTimeout(f"pipeline {pipeline.name!r}: training ran past its time limit") from None
        except RayTaskError as error:
            if isinstance(error.cause, OpenAnomalyError):
                raise error.cause from None
            raise
        return FitResult(pipeline.name, fit_time_ms, len(values), 1, time.perf_counter() - began, (key,))
    fitted = dataset.map_batches(
        _fit,
        fn_kwargs={"settings": settings, "pipeline": pipeline, "fit_time_ms": fit_time_ms},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=_ray_data().TaskPoolStrategy(size=budget.workers),
        num_cpus=budget.worker_cpus,
    )
    series_in, keys = 0, []
    for row in _rows(fitted, deadline, f"pipeline {pipeline.name!r} fit"):
        series_in += int(row["series_in"])
        keys.extend(json.loads(row["keys"]))
    return FitResult(
        pipeline.name, fit_time_ms, series_in, len(keys), time.perf_counter() - began, tuple(keys)
    )
