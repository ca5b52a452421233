"""Fitting a pipeline's models as a Ray Data job, and storing them where every scorer finds them.

Per-series models are fitted in parallel tasks, one block of series each; a global model
(NHITS) is trained in one task on all series.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openanomaly.core.config import Pipeline, Settings
from openanomaly.errors import ModelError, NoSeries, OpenAnomalyError, WindowTimeout
from openanomaly.io.artifacts import GLOBAL_SERIES_KEY, open_store, save_model, series_key
from openanomaly.runtime.arrow import matrix_from_table
from openanomaly.runtime.options import JobOptions, num_gpus
from openanomaly.runtime.raydata import BIG_JOB, drive, fetch_dataset, output_rows, ray_data

__all__ = ["FitResult", "fit_job", "train_global"]


@dataclass(frozen=True)
class FitResult:
    """What one fit job stored."""

    pipeline: str
    fit_time_ms: int
    series_in: int
    models_saved: int
    duration_s: float = 0.0
    keys: tuple[str, ...] = field(default=(), repr=False)


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
        WindowTimeout: the fit ran past ``deadline`` (monotonic seconds). NodeLost: a node
            the fit started with left the cluster (it is retried like a window).
    """
    ray_data()
    with BIG_JOB:
        what = f"pipeline {pipeline.name!r} fit"
        return drive(
            _fit_job, settings, pipeline, fit_time_ms, options, deadline, deadline=deadline, what=what
        )


def _fit_job(
    settings: Settings,
    pipeline: Pipeline,
    fit_time_ms: int,
    options: JobOptions | None,
    deadline: float | None,
) -> FitResult:
    """The driving task of :func:`fit_job` (:func:`raydata.drive`)."""
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
    dataset, budget = fetch_dataset(
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
            num_cpus=budget.worker_cpus, num_gpus=num_gpus(pipeline, options), max_retries=2
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
        compute=ray_data().TaskPoolStrategy(size=budget.workers),
        num_cpus=budget.worker_cpus,
    )
    series_in, keys = 0, []
    for row in output_rows(fitted, deadline, f"pipeline {pipeline.name!r} fit"):
        series_in += int(row["series_in"])
        keys.extend(json.loads(row["keys"]))
    return FitResult(
        pipeline.name, fit_time_ms, series_in, len(keys), time.perf_counter() - began, tuple(keys)
    )
