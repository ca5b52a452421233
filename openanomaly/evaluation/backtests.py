"""Scoring benchmark files through the production path: each labelled file becomes the
``Pipeline`` a user would write and goes through :func:`openanomaly.core.detect.score_range`
(rolling, chunk by chunk, each chunk forecast only from the points before it)."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

import numpy as np

from openanomaly.configstore.checks import check_fittable
from openanomaly.core.config import CalibrationConfig, ModelConfig, Pipeline, Schedule, ScoringConfig
from openanomaly.core.detect import score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.evaluation.corpus import file_step
from openanomaly.evaluation.nab import NabFile, probationary_length
from openanomaly.evaluation.runs import MODELS, ModelRun
from openanomaly.models.base import Forecaster
from openanomaly.models.fitted import fit_global, load_global
from openanomaly.models.registry import load_forecaster

__all__ = [
    "Progress",
    "benchmark_pipeline",
    "print_progress",
    "score_corpus",
    "score_file",
    "trained_on_probation",
]

Progress = Callable[[str, NabFile, float], None]
"""Called once per file after a corpus is scored: ``(model name, file, seconds it took)``."""


def print_progress(name: str, item: NabFile, seconds: float) -> None:
    """The benchmark commands' :data:`Progress`: one line per file on stderr."""
    print(f"  {name:<15} {item.path:<60} {seconds:7.1f}s", file=sys.stderr)


def benchmark_pipeline(
    name: str, run: ModelRun, step: timedelta, spec: str, calibration: dict[str, Any] | None = None
) -> Pipeline:
    """The pipeline a user would write for ``run`` on a series at ``step``."""
    return Pipeline(
        name=f"nab-{name}",
        query="nab",
        step=step,
        model=ModelConfig(spec=spec, params=run.params(step)),
        schedule=Schedule(infer_every=step * run.infer_every, context=step * run.context),
        scoring=ScoringConfig(quantiles=run.quantiles, calibration=CalibrationConfig(**(calibration or {}))),
    )


def score_file(
    item: NabFile,
    name: str,
    run: ModelRun,
    spec: str,
    cache: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> np.ndarray:
    """Backtest one file with the production path; returns ``anomaly_score`` ``(n,)``.

    ``cache`` keeps the forecasters loaded so far (by spec and params) across files.
    """
    step = file_step(item)
    pipeline = benchmark_pipeline(name, run, step, spec, calibration)
    if run.trained:
        forecaster = trained_on_probation(item, pipeline, horizon=run.infer_every)
    else:
        key = json.dumps([spec, pipeline.model.params], sort_keys=True)  # mad and zscore share params
        if key not in cache:
            cache[key] = load_forecaster(spec, **pipeline.model.params)
        forecaster = cache[key]
    step_ms = pipeline.step_ms
    t0 = 1_000_000_000_000
    grid = t0 + step_ms * np.arange(item.values.size, dtype=np.int64)
    series = SeriesMatrix(({"file": item.path},), grid, item.values[None, :].astype(np.float64))
    detection = score_range(series, pipeline, forecaster, start_ms=int(grid[0]), end_ms=int(grid[-1]))
    scores = np.full(item.values.size, np.nan)
    scores[1:] = detection.anomaly_score[0]
    return scores


def trained_on_probation(item: NabFile, pipeline: Pipeline, *, horizon: int) -> Forecaster:
    """Train the pipeline's global model on ``item``'s probationary rows, as the scheduler would.

    The pipeline gets the fit schedule a user would write (``fit_window``: those rows),
    checked as config loading checks it; the model is the one the scheduler stores.
    """
    rows = probationary_length(item.values.size)
    window = pipeline.step * rows
    schedule = pipeline.schedule.model_copy(update={"fit_every": window, "fit_window": window})
    pipeline = pipeline.model_copy(update={"schedule": schedule})
    check_fittable(pipeline)
    fit = pipeline.fit_spec
    return load_global(fit, fit_global(fit, item.values[None, :rows], horizon=horizon))


def _score_one(job: tuple[NabFile, str, str, dict[str, Any] | None]) -> tuple[np.ndarray, float]:
    item, name, spec, calibration = job
    t = time.perf_counter()
    scores = score_file(item, name, MODELS[name], spec, _WORKER_CACHE, calibration)
    return scores, time.perf_counter() - t


_WORKER_CACHE: dict[str, Any] = {}
"""Forecasters loaded in this process (one per spec and parameter set), kept across files."""


def score_corpus(
    name: str,
    spec: str,
    corpus: list[NabFile],
    calibration: dict[str, Any] | None = None,
    jobs: int = 1,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Backtest every file of ``MODELS[name]``, ``jobs`` files at a time (the results do not depend on it).

    Worker processes are forked, so they see ``MODELS`` as it is (the runs' params are
    functions, which do not pickle).
    """
    work = [(item, name, spec, calibration) for item in corpus]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_score_one, work))
    else:
        done = [_score_one(job) for job in work]
    if progress is not None:
        for item, (_, seconds) in zip(corpus, done, strict=True):
            progress(name, item, seconds)
    return [scores for scores, _ in done]
