"""One Ray Data job per pipeline run: list series → fetch → forecast/score → remote write.

Why Ray Data: a pipeline may return tens of thousands of series. The job splits them
into *shards* (blocks of series), fetches the shards in parallel read tasks, and
streams the blocks through an actor pool that holds the model (loaded once per actor,
on a GPU when the cluster has one), so fetching, forecasting and writing overlap and
scale out with the cluster. Rows are series; blocks are Arrow tables::

    labels: string (the label set as JSON)    values: fixed_size_list<float64>[t]
    t0: int64 (first grid timestamp, ms)      step: int64 (grid step, ms)

so a block converts to a :class:`~openanomaly.series.SeriesMatrix` with one reshape and
no per-series Python objects. Scoring is :func:`openanomaly.detect.detect`, the same
pure core the CLI and backtests use, so a job writes exactly what ``run_window`` would.

Sharding ("list series"): when the pipeline query is a plain selector
(``metric{a="b"}``), the job lists the matching series (``/api/v1/series``), picks the
label with the most distinct values (``instance``, ``pod``...) and gives each shard a
copy of the selector with a ``label=~"v1|v2|…"`` matcher, so shards are disjoint and
together cover every series. Any other PromQL expression (``rate(...)``, ``sum by``)
cannot be split safely, so it is fetched by one read task and the rows are then split
into blocks for the actor pool.

Fitted models (``schedule.fit_every``): :func:`fit_job` fetches ``fit_window``,
fits (per series for statsforecast, one global NHITS) and stores every model in the
ArtifactStore under ``<pipeline>/<series-key>/<fit time>``; :func:`run_job` with
``fit_time_ms`` loads each series' model from the store in whichever actor scores it.

Failure model: the TSDB client retries with backoff; if reads or writes still fail the
job raises (``QueryError``/``RemoteWriteError``) and the scheduler retries the window
later. Writes are idempotent (same window → same deterministic forecast → same samples
at the same timestamps), so a retried window never writes different values. A scoring
actor that dies mid-job is restarted by Ray Data and its in-flight batch retried on a
live actor (Ray Data's defaults; ``JobOptions.max_restarts`` / ``max_task_retries``
bound them); a batch is written only after it is scored, so a retry neither loses nor
duplicates it. Fetch and fit tasks whose process dies are retried by Ray Data.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from openanomaly.artifacts import (
    GLOBAL_SERIES_KEY,
    latest_model,
    model_key,
    open_store,
    save_model,
    series_key,
)
from openanomaly.config import Pipeline, Settings
from openanomaly.errors import ArtifactError, DataError, ModelError
from openanomaly.models.base import Forecaster
from openanomaly.series import SeriesMatrix

if TYPE_CHECKING:
    from openanomaly.detect import Detection

__all__ = [
    "BlockScorer",
    "FitResult",
    "JobOptions",
    "JobResult",
    "ModelFactory",
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
_COUNTS = ("series_in", "series_scored", "points", "anomalies", "written", "unfitted", "skipped")
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")

ModelFactory = Callable[[Pipeline], Forecaster]
"""Builds a zero-shot pipeline's forecaster in each scoring actor (see ``JobOptions.model_factory``)."""


@dataclass(frozen=True)
class JobOptions:
    """How a job is spread over the cluster.

    Attributes:
        series_per_shard: series per fetch task (one query per shard).
        batch_size: series per ``map_batches`` call (one forecast call, one write batch).
        min_workers / max_workers: actor pool size (model replicas).
        worker_num_cpus: CPUs reserved per scoring actor (fractional is fine: the
            model's own threads are what really use the cores).
        fetch_num_cpus: CPUs reserved per fetch task (mostly waiting on HTTP).
        num_gpus: GPUs per scoring actor; None = 1 when the cluster has GPUs and the
            model runs on one (chronos; neuralforecast with ``accelerator: gpu``), else 0.
        max_restarts / max_task_retries: how often Ray restarts a dead scoring actor
            and retries its batch. None (default) = Ray Data's own default: restart
            and retry without limit. Setting them uses Ray 2.60's deprecated
            ``ray_remote_args`` path (removed in Ray 2.64).
        model_cache: fitted per-series models kept in each actor.
        model_factory: builds the forecaster of a zero-shot pipeline in each scoring
            actor instead of the registry (``load_forecaster(spec, **params)``): for a
            model of your own that is not in the registry, or a test model that fails
            on purpose. It must pickle (Ray ships it to the actors); a module-level
            function or class does. Fitted pipelines load their models from the
            ArtifactStore and refuse a factory.
    """

    series_per_shard: int = 1000
    batch_size: int = 512
    min_workers: int = 1
    max_workers: int = 2
    worker_num_cpus: float = 1.0
    fetch_num_cpus: float = 0.25
    num_gpus: float | None = None
    max_restarts: int | None = None
    max_task_retries: int | None = None
    model_cache: int = 50_000
    model_factory: ModelFactory | None = None

    def __post_init__(self) -> None:
        for name in ("series_per_shard", "batch_size", "min_workers", "max_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"JobOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"JobOptions.min_workers ({self.min_workers}) > max_workers ({self.max_workers})"
            )


@dataclass(frozen=True)
class JobResult:
    """What one scoring job did (the scheduler records it; the API shows it)."""

    pipeline: str
    start_ms: int
    end_ms: int
    shards: int
    series_in: int
    series_scored: int
    points_scored: int
    anomalies: int
    samples_written: int
    unfitted: int = 0
    skipped: int = 0
    duration_s: float = 0.0


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


# ----------------------------------------------------------------------------- Ray UDFs


def _fetch_start(pipeline: Pipeline, start_ms: int) -> int:
    return start_ms - (pipeline.context_points - 1) * pipeline.step_ms


def _fetch(
    batch: dict[str, np.ndarray], *, settings: Settings, pipeline: Pipeline, start_ms: int, end_ms: int
) -> Iterator[Any]:
    """Read task: one shard query → one Arrow block of series rows.

    A stateless task rather than an actor: Ray reuses its pooled worker processes for
    tasks, so a job does not start (and import into) a new process per fetch slot,
    which is most of a small job's cost.
    """
    from openanomaly.tsdb import PrometheusClient

    with PrometheusClient(settings.tsdb) as client:
        step_ms = pipeline.step_ms
        for query in batch["query"]:
            matrix = client.query_range(str(query), start_ms=start_ms, end_ms=end_ms, step_ms=step_ms)
            if len(matrix):
                yield table_from_matrix(matrix, step_ms=step_ms)


def _summary(**counts: int) -> Any:
    import pyarrow as pa

    return pa.table({name: pa.array([value], type=pa.int64()) for name, value in counts.items()})


class BlockScorer:
    """The scoring actor of a job: holds the model; block of series → detect → remote write.

    Ray Data builds one per actor of the pool (``map_batches(BlockScorer, ...)``), so
    the model is loaded once per actor, not per block. It is plain Python: outside Ray,
    :meth:`detect_block` scores a :class:`~openanomaly.series.SeriesMatrix` with exactly
    the model a job would use (the registry's, ``model_factory``'s, or the fitted models
    of ``fit_time_ms`` from the ArtifactStore).

    Args:
        fit_time_ms: fitted pipelines: the fit whose models to load; None = the latest
            fit at or before ``start_ms``.
        model_cache: per-series fitted models kept (LRU).
        model_factory: zero-shot pipelines: builds the forecaster instead of the registry.

    Raises:
        ArtifactError: a global model (NHITS) has no fit at or before the window.
        ModelError: the model could not be built or loaded.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None = None,
        model_cache: int = 50_000,
        model_factory: ModelFactory | None = None,
    ) -> None:
        from openanomaly.models.fitted import is_global, load_global
        from openanomaly.tsdb import PrometheusClient

        self.settings, self.pipeline = settings, pipeline
        self.start_ms, self.end_ms = start_ms, end_ms
        self.fit_time_ms = fit_time_ms
        self.client = PrometheusClient(settings.tsdb)
        self.fitted = pipeline.schedule.fit_every is not None
        self.per_series = self.fitted and not is_global(pipeline)
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.cache_size = model_cache
        if self.fitted and model_factory is not None:
            raise ModelError(
                "model_factory is for zero-shot pipelines; fitted models are loaded from the ArtifactStore",
                spec=pipeline.model.spec,
            )
        if self.fitted:
            self.store = open_store(settings.artifacts)
        if not self.fitted:
            if model_factory is not None:
                self.forecaster = model_factory(pipeline)
            else:
                from openanomaly.models.registry import load_forecaster

                self.forecaster = load_forecaster(pipeline.model.spec, **pipeline.model.params)
        elif not self.per_series:
            ref = self._find(GLOBAL_SERIES_KEY)
            if ref is None:
                raise ArtifactError(
                    f"no global model fitted at or before {fit_time_ms or start_ms}",
                    key=f"{pipeline.name}/{GLOBAL_SERIES_KEY}",
                )
            self.forecaster = load_global(pipeline, self.store.get(ref))

    def _find(self, key: str) -> str | None:
        if self.fit_time_ms is not None:
            wanted = model_key(self.pipeline.name, key, self.fit_time_ms)
            return wanted if wanted in self.store.list(wanted) else None
        ref = latest_model(self.store, pipeline=self.pipeline.name, series=key, at_or_before_ms=self.start_ms)
        return ref.key if ref else None

    def _series_models(self, labels: tuple[Mapping[str, str], ...]) -> list[Any | None]:
        """One loaded model per series (None when none was fitted), fetched in parallel."""
        from openanomaly.models.fitted import load_series_model

        keys = [series_key(labels_) for labels_ in labels]

        def load(key: str) -> Any | None:
            if self.fit_time_ms is not None:
                artifact = model_key(self.pipeline.name, key, self.fit_time_ms)
                try:
                    blob = self.store.get(artifact)
                except ArtifactError:
                    return None  # a series that appeared after the fit
            else:
                ref = self._find(key)
                if ref is None:
                    return None
                artifact, blob = ref, self.store.get(ref)
            return (artifact, load_series_model(self.pipeline, blob))

        missing = [key for key in keys if key not in self.cache]
        with ThreadPoolExecutor(16) as pool:
            for key, loaded in zip(missing, pool.map(load, missing), strict=True):
                self.cache[key] = loaded
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return [self.cache[key][1] if self.cache.get(key) else None for key in keys]

    def detect_block(self, matrix: SeriesMatrix) -> tuple[list[Detection], int]:
        """Forecast and score one block of series over the job's window (no I/O but the store).

        Returns:
            the detections (one for a batch model, one per fitted series model) and the
            number of series without a fitted model (appeared after the fit).
        """
        from openanomaly.detect import detect

        if len(matrix) == 0 or not np.isfinite(matrix.values).any():
            return [], 0
        if not self.per_series:
            window = {"start_ms": self.start_ms, "end_ms": self.end_ms}
            return [detect(matrix, self.pipeline, self.forecaster, **window)], 0
        unfitted = 0
        parts = []
        for row, model in enumerate(self._series_models(matrix.labels)):
            if model is None:
                unfitted += 1
                continue
            one = matrix.select([row])
            if not np.isfinite(one.values).any():
                continue
            parts.append(detect(one, self.pipeline, model, start_ms=self.start_ms, end_ms=self.end_ms))
        return parts, unfitted

    def __call__(self, table: Any) -> Any:
        """One Arrow block of series rows → scored and written → one summary row."""
        matrix = matrix_from_table(table)
        parts, unfitted = self.detect_block(matrix)
        outputs = [part.to_series_matrix(self.pipeline) for part in parts]
        outputs = [out for out in outputs if len(out)]
        written = 0
        if outputs:
            merged = SeriesMatrix(
                tuple(labels for out in outputs for labels in out.labels),
                outputs[0].timestamps,
                np.concatenate([out.values for out in outputs]),
            )
            written = self.client.remote_write(merged)
        with np.errstate(invalid="ignore"):
            anomalies = sum(int(np.count_nonzero(part.anomaly_score > 1)) for part in parts)
        return _summary(
            series_in=len(matrix),
            series_scored=sum(part.series_scored for part in parts),
            points=sum(part.points_scored for part in parts),
            anomalies=anomalies,
            written=written,
            unfitted=unfitted,
            skipped=sum(len(part.skipped) for part in parts),
        )


def _fit(table: Any, *, settings: Settings, pipeline: Pipeline, fit_time_ms: int) -> Any:
    """Fit task: block of series over ``fit_window`` → one fitted model per series, stored.

    A task, not an actor: nothing is kept between blocks, and Ray reuses pooled
    worker processes for tasks (Ray retries a task whose process died, ``max_retries``).
    """
    import pyarrow as pa

    from openanomaly.models.fitted import fit_per_series

    matrix = matrix_from_table(table)
    store = open_store(settings.artifacts)
    blobs = fit_per_series(pipeline, matrix.values)
    keys = []
    for labels, blob in zip(matrix.labels, blobs, strict=True):
        if blob is not None:
            ref = save_model(
                store, pipeline=pipeline.name, series=series_key(labels), fit_time_ms=fit_time_ms, data=blob
            )
            keys.append(ref.key)
    return pa.table({"series_in": [len(matrix)], "keys": [json.dumps(keys)]})


# ----------------------------------------------------------------------------- jobs


def _ray_data() -> Any:
    import ray
    import ray.data

    if not ray.is_initialized():
        raise DataError("jobs need a Ray cluster: call ray.init() (or run inside the scheduler actor)")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray.data


def _gpus(pipeline: Pipeline, options: JobOptions) -> float:
    if options.num_gpus is not None:
        return options.num_gpus
    import ray

    from openanomaly.models.registry import model_info

    # A GPU reserved for a model that runs on CPU would only starve the ones that use it.
    gpu_model = model_info(pipeline.model.spec, pipeline.model.params).gpu
    return 1.0 if gpu_model and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


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


def _fetch_dataset(
    settings: Settings, pipeline: Pipeline, *, start_ms: int, end_ms: int, options: JobOptions
) -> tuple[Any, int]:
    from openanomaly.tsdb import PrometheusClient

    data = _ray_data()
    with PrometheusClient(settings.tsdb) as client:
        queries, _ = plan_shards(
            client, pipeline, start_ms=start_ms, end_ms=end_ms, series_per_shard=options.series_per_shard
        )
    dataset = data.from_items([{"query": q} for q in queries], override_num_blocks=len(queries)).map_batches(
        _fetch,
        fn_kwargs={"settings": settings, "pipeline": pipeline, "start_ms": start_ms, "end_ms": end_ms},
        batch_size=1,
        batch_format="numpy",
        compute=data.TaskPoolStrategy(size=min(len(queries), 4)),
        num_cpus=options.fetch_num_cpus,
    )
    if len(queries) == 1:
        # One query cannot be split at the source: split its rows into blocks so the
        # actor pool scores them in parallel.
        blocks = max(1, options.max_workers * 2)
        dataset = dataset.repartition(blocks)
    return dataset, len(queries)


def run_job(
    settings: Settings,
    pipeline: Pipeline,
    *,
    start_ms: int,
    end_ms: int,
    fit_time_ms: int | None = None,
    options: JobOptions | None = None,
) -> JobResult:
    """Score ``(start_ms, end_ms]`` of every series of ``pipeline`` and write the outputs.

    Args:
        fit_time_ms: for fitted pipelines, the fit whose models to use (the scheduler
            passes the fit it ran); None = the latest fit at or before ``start_ms``.

    Raises:
        QueryError, RemoteWriteError: the TSDB stayed unreachable after retries.
        ModelError, ArtifactError: the model could not be loaded.
    """
    options = options or JobOptions()
    began = time.perf_counter()
    dataset, shards = _fetch_dataset(
        settings, pipeline, start_ms=_fetch_start(pipeline, start_ms), end_ms=end_ms, options=options
    )
    data = _ray_data()
    scored = dataset.map_batches(
        BlockScorer,
        fn_constructor_kwargs={
            "settings": settings,
            "pipeline": pipeline,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "fit_time_ms": fit_time_ms,
            "model_cache": options.model_cache,
            "model_factory": options.model_factory,
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=data.ActorPoolStrategy(min_size=options.min_workers, max_size=options.max_workers),
        num_cpus=options.worker_num_cpus,
        num_gpus=_gpus(pipeline, options),
        **_restart_args(options),
    )
    totals = dict.fromkeys(_COUNTS, 0)
    for row in scored.take_all():
        for name in totals:
            totals[name] += int(row[name])
    result = JobResult(
        pipeline=pipeline.name,
        start_ms=start_ms,
        end_ms=end_ms,
        shards=shards,
        series_in=totals["series_in"],
        series_scored=totals["series_scored"],
        points_scored=totals["points"],
        anomalies=totals["anomalies"],
        samples_written=totals["written"],
        unfitted=totals["unfitted"],
        skipped=totals["skipped"],
        duration_s=time.perf_counter() - began,
    )
    log.info("job %s", result)
    return result


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
    from openanomaly.detect import chunk_points
    from openanomaly.models.fitted import fit_global

    blob = fit_global(pipeline, values, horizon=chunk_points(pipeline))
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
) -> FitResult:
    """Fit the pipeline's model on ``(fit_time_ms - fit_window, fit_time_ms]`` and store it.

    Per-series models are fitted in parallel tasks, one block of series each; a global
    model (NHITS) is trained in one task on all series.

    Raises:
        ConfigError: the pipeline cannot be fitted (see ``check_fittable``).
        QueryError: the TSDB read failed. ModelError, ArtifactError: fit or save failed.
    """
    import ray

    from openanomaly.models.fitted import check_fittable, is_global

    check_fittable(pipeline)
    options = options or JobOptions()
    began = time.perf_counter()
    window = pipeline.schedule.fit_window
    if window is None:  # guarded by check_fittable; keeps the type checker informed
        raise ModelError("fit_window is not set", spec=pipeline.model.spec)
    fit_start = fit_time_ms - round(window.total_seconds() * 1000)
    dataset, _ = _fetch_dataset(settings, pipeline, start_ms=fit_start, end_ms=fit_time_ms, options=options)
    if is_global(pipeline):
        blocks = [
            matrix_from_table(block)
            for block in dataset.iter_batches(batch_format="pyarrow", batch_size=None)
        ]
        blocks = [block for block in blocks if len(block)]
        if not blocks:
            raise DataError(f"query {pipeline.query!r} returned no series to fit on", pipeline=pipeline.name)
        values = np.concatenate([block.values for block in blocks])

        train = ray.remote(train_global).options(
            num_cpus=options.worker_num_cpus, num_gpus=_gpus(pipeline, options), max_retries=2
        )
        key = ray.get(train.remote(settings, pipeline, values, fit_time_ms=fit_time_ms))
        return FitResult(pipeline.name, fit_time_ms, len(values), 1, time.perf_counter() - began, (key,))
    fitted = dataset.map_batches(
        _fit,
        fn_kwargs={"settings": settings, "pipeline": pipeline, "fit_time_ms": fit_time_ms},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=_ray_data().TaskPoolStrategy(size=options.max_workers),
        num_cpus=options.worker_num_cpus,
    )
    series_in, keys = 0, []
    for row in fitted.take_all():
        series_in += int(row["series_in"])
        keys.extend(json.loads(row["keys"]))
    return FitResult(
        pipeline.name, fit_time_ms, series_in, len(keys), time.perf_counter() - began, tuple(keys)
    )
