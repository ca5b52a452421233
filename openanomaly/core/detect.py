"""The pure detect core for one pipeline: context → forecast → score, rolling, no look-ahead.

:func:`score_range` works on an in-memory
:class:`~openanomaly.core.series.SeriesMatrix` and never read the clock, the network or Ray.
Everything that scores a pipeline reaches it through :mod:`openanomaly.runtime.window` (the one
window path: grid, fetch, score, labels, write), so the scheduler's windows, ``run
--once``, ``backtest``, the playground and ``/v1/detect`` compute exactly the same thing.

Rolling semantics (the same for one scheduled window and for a year-long backtest):

- A range is ``(start_ms, end_ms]``; its points are the grid columns in it.
- Points are forecast in *chunks* of ``pipeline.chunk_points`` = ``infer_every // step``
  points that sit on the ABSOLUTE ``infer_every`` grid: the chunk of a point at ``t``
  covers ``((k - 1) * infer_every, k * infer_every]`` with ``k = ceil(t / infer_every)``,
  exactly the scheduler's window. So a point gets the same forecast whether it is scored
  by its scheduled window, by ``run --once`` or inside a backtest that starts anywhere.
  A chunk cut by the range start still gets its earlier points as actuals (the scheduler
  had them too); only points inside the range are returned. A chunk cut by the range
  end has NaN past it (those points do not exist yet).
- Each chunk is forecast (horizon = chunk length) from the ``context_points`` grid
  values just before its first point, which include earlier chunks' actual values but
  never the chunk's own.
- All ``(series, chunk)`` contexts of one call go to ONE batched ``forecast`` call as a
  2-D array left-padded with NaN, then through the calibration stage
  (:mod:`openanomaly.core.calibration`), which reads only each chunk's context, so a
  backtest scores thousands of chunks from shared arrays with the same result as one
  window at a time. :func:`score_range` splits a long range into batches of whole
  chunks, which gives the same numbers (each chunk sees the same context). A
  :class:`~openanomaly.models.base.ChunkedForecaster` (``default``) gets the series and
  the chunk ends instead of the copied contexts, and returns exactly what ``forecast``
  would: it shares the work between overlapping contexts.
- A ``(series, chunk)`` with no actual value is not forecast (nothing to score). One
  whose context has no finite value cannot be forecast: it is skipped and its series
  is reported in :attr:`Detection.skipped` (the rest of the batch still runs).
- Output values exist only where the input had a sample: NaN actual → no score,
  no ``yhat`` at that timestamp.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from openanomaly.core.calibration import score_chunks
from openanomaly.core.config import Pipeline
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import DataError, NoSeries
from openanomaly.models.base import ChunkedForecaster, Forecaster, StepAware, check_forecast

__all__ = [
    "Detection",
    "Progress",
    "align_to_grid",
    "check_input",
    "default_batch_chunks",
    "score_range",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(points_done, points_total)`` (grid points of the range, per series)."""

# Upper bound on the cells of one batch's context array (series x chunks x context
# points); 8M float64 cells = 64 MB. Bounds memory of long backtests over many series.
_CONTEXT_CELL_BUDGET = 8_000_000


@dataclass(frozen=True)
class Detection:
    """Scores for every input series over one window's grid points.

    All arrays are float64 ``(n_series, n_points)`` aligned with ``labels`` (the input
    series, ``__name__`` included) and ``timestamps`` (int64 ms, ``(n_points,)``); NaN
    where nothing was scored.

    Attributes:
        skipped: row indices of series that had at least one chunk with actual values
            but no finite context value (not forecast, not scored).
    """

    labels: tuple[Mapping[str, str], ...]
    timestamps: np.ndarray
    actual: np.ndarray
    anomaly_score: np.ndarray
    yhat: np.ndarray
    yhat_lower: np.ndarray
    yhat_upper: np.ndarray
    skipped: tuple[int, ...] = ()

    @property
    def points_scored(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.anomaly_score)))

    @property
    def points_in(self) -> int:
        """Samples of the input inside the range: scored, warm-up or without context."""
        return int(np.count_nonzero(np.isfinite(self.actual)))

    @property
    def series_scored(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.anomaly_score).any(axis=1)))

    @property
    def skipped_labels(self) -> tuple[Mapping[str, str], ...]:
        return tuple(self.labels[i] for i in self.skipped)


def default_batch_chunks(pipeline: Pipeline, n_series: int) -> int:
    """Chunks per backtest batch so that one batch's contexts stay within ~64 MB."""
    cells = max(1, n_series) * max(1, pipeline.context_points)
    return max(1, _CONTEXT_CELL_BUDGET // cells)


def align_to_grid(
    series: SeriesMatrix, *, step_ms: int, start_ms: int | None = None, end_ms: int | None = None
) -> SeriesMatrix:
    """Put samples onto the regular grid ``start_ms + k * step_ms`` (NaN where none).

    Use it for data that does not come from ``query_range`` (CSV files, benchmarks):
    the detect loop counts context in grid points, so it needs a gap-free grid. A
    sample lands on the grid point at or after it (within one step); when several
    land on one point the last wins.

    Args:
        start_ms: first grid point; default: the first timestamp.
        end_ms: grid points go up to this (inclusive); default: the grid point at or
            after the last timestamp.
    """
    if step_ms <= 0:
        raise ValueError(f"step_ms must be positive, got {step_ms}")
    ts = series.timestamps
    if start_ms is None:
        start_ms = int(ts[0]) if len(ts) else 0
    if end_ms is None:
        end_ms = start_ms + -(-(int(ts[-1]) - start_ms) // step_ms) * step_ms if len(ts) else start_ms - 1
    grid = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
    values = np.full((len(series), len(grid)), np.nan)
    slot = -((start_ms - ts) // step_ms)  # ceil((ts - start) / step)
    inside = (slot >= 0) & (slot < len(grid))
    values[:, slot[inside]] = series.values[:, inside]
    return SeriesMatrix(series.labels, grid, values)


def check_input(series: SeriesMatrix, pipeline: Pipeline) -> None:
    if len(series) == 0:
        raise NoSeries(f"query {pipeline.query!r} returned no series", pipeline=pipeline.name)
    if len(series.timestamps) > 1 and np.any(np.diff(series.timestamps) != pipeline.step_ms):
        raise DataError(
            f"timestamps are not on a regular grid of step {pipeline.step_ms} ms "
            "(use detect.align_to_grid for data that does not come from query_range)",
            pipeline=pipeline.name,
        )
    if not np.isfinite(series.values).any():
        raise DataError(
            f"all {len(series)} series of query {pipeline.query!r} have no finite value "
            "(all NaN) in the requested range",
            pipeline=pipeline.name,
        )
    seen: dict[frozenset[tuple[str, str]], Mapping[str, str]] = {}
    for labels in series.labels:
        key = frozenset((k, v) for k, v in labels.items() if k != "__name__")
        if key in seen:
            raise DataError(
                f"series {dict(seen[key])} and {dict(labels)} differ only in their metric name, so "
                "their outputs would collide; keep the name as a label in the query, e.g. "
                'label_replace(<query>, "metric", "$1", "__name__", "(.+)")',
                pipeline=pipeline.name,
            )
        seen[key] = labels


def _window_columns(timestamps: np.ndarray, start_ms: int, end_ms: int) -> tuple[int, int]:
    """Column range ``[a, b)`` of the grid points with ``start_ms < t <= end_ms``."""
    a = int(np.searchsorted(timestamps, start_ms, side="right"))
    b = int(np.searchsorted(timestamps, end_ms, side="right"))
    return a, max(a, b)


def _chunk_starts(timestamps: np.ndarray, a: int, b: int, pipeline: Pipeline) -> np.ndarray:
    """Columns where the chunks covering columns ``[a, b)`` start (may be < ``a``, even < 0).

    Chunks sit on the absolute ``infer_every`` grid, so the chunk of a point does not
    depend on where a range starts (see the module docstring).
    """
    if b <= a:
        return np.empty(0, dtype=np.int64)
    step, every = pipeline.step_ms, pipeline.infer_every_ms
    offset = ((int(timestamps[a]) - step) % every) // step  # columns since the chunk began
    return np.arange(a - offset, b, pipeline.chunk_points, dtype=np.int64)


def _detect_chunks(
    values: np.ndarray,
    timestamps: np.ndarray,
    starts: np.ndarray,
    a: int,
    b: int,
    pipeline: Pipeline,
    forecaster: Forecaster,
) -> tuple[np.ndarray, np.ndarray]:
    """Score the chunks starting at columns ``starts`` with one forecast call; keep ``[a, b)``.

    Returns:
        ``out`` float64 ``(4, n, b - a)`` (score, yhat, lower, upper) and the bool mask
        ``(n,)`` of series that had a chunk skipped for lack of context.
    """
    n = values.shape[0]
    out = np.full((4, n, b - a), np.nan)
    skipped = np.zeros(n, dtype=bool)
    if b <= a or n == 0:
        return out, skipped
    if isinstance(forecaster, StepAware):
        forecaster = forecaster.for_step(pipeline.step.total_seconds())
    c, length = pipeline.chunk_points, pipeline.context_points
    k = len(starts)
    # Work on the columns this batch needs only, so a batch costs O(its size), not O(t);
    # NaN-pad on the left for contexts (and chunk heads) before column 0. Contexts are a
    # strided view and their finite counts come from a running sum, so a long backtest
    # does not touch every context cell just to find empty ones.
    first = max(0, int(starts[0]) - length)
    pad = length + max(0, -int(starts[0]))
    window = values[:, first:b]
    padded = np.concatenate([np.full((n, pad), np.nan), window], axis=1)
    rel = starts - first + pad  # (k,) chunk starts in `padded`, an arithmetic progression
    view = np.lib.stride_tricks.sliding_window_view(padded, length, axis=1)
    contexts = view[:, int(rel[0]) - length : int(rel[-1]) - length + 1 : c]  # (n, k, length)
    finite = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(np.isfinite(padded), axis=1)], axis=1)
    cols = starts[:, None] + np.arange(c)[None, :]  # (k, c) absolute columns
    inside = cols < b  # points past the range end do not exist yet
    actual = np.where(inside, padded[:, np.minimum(rel[:, None] + np.arange(c), padded.shape[1] - 1)], np.nan)
    contexts = contexts.reshape(n * k, length)
    actual = actual.reshape(n * k, c)
    has_actual = np.isfinite(actual).any(axis=1)
    has_context = (finite[:, rel] - finite[:, rel - length] > 0).reshape(n * k)
    skipped = (has_actual & ~has_context).reshape(n, k).any(axis=1)
    rows = np.flatnonzero(has_actual & has_context)
    if rows.size == 0:
        return out, skipped
    low, high = pipeline.scoring.quantiles
    levels = [low, 0.5, high]
    if isinstance(forecaster, ChunkedForecaster):  # the same forecasts, computed along each series
        forecast = forecaster.forecast_chunks(padded, rel, rows, length, c, levels)
    else:
        forecast = forecaster.forecast(contexts if rows.size == n * k else contexts[rows], c, levels)
    check_forecast(forecast, n_series=rows.size, horizon=c, spec=pipeline.model.spec)
    scoring = pipeline.scoring
    score = score_chunks(
        window,
        starts - first,
        rows,
        actual[rows],
        forecast,
        policy=scoring.calibration.policy(),
        quantiles=scoring.quantiles,
        direction=scoring.direction,
        min_deviation=scoring.min_deviation,
        context=length,
        step_s=pipeline.step.total_seconds(),
        origin=int(timestamps[first]) // pipeline.step_ms,
    )
    flat = np.full((4, n * k, c), np.nan)
    missing = np.isnan(actual[rows])
    for index, part in enumerate(score):
        flat[index, rows] = np.where(missing, np.nan, part)
    head = a - int(starts[0])  # points of the first chunk before the range start
    out[:] = flat.reshape(4, n, k * c)[:, :, head : head + (b - a)]
    return out, skipped


def score_range(
    series: SeriesMatrix,
    pipeline: Pipeline,
    forecaster: Forecaster,
    *,
    start_ms: int,
    end_ms: int,
    batch_chunks: int | None = None,
    progress: Progress | None = None,
    checked: bool = False,
) -> Detection:
    """Score the points of ``series`` in ``(start_ms, end_ms]``: the one scoring call of every path.

    Chunks go to the forecaster in batches of ``batch_chunks``; batching only bounds
    memory (each batch builds a ``(n_series * batch_chunks, context_points)`` context
    array): every chunk sees the same context, so the scores do not depend on it. One
    scheduled window is one batch.

    Args:
        series: every series of the pipeline's query on its step grid, covering at
            least ``(start_ms - context, end_ms]`` (less history is allowed: contexts are
            left-padded with NaN).
        pipeline: query, step, schedule (chunking, context) and scoring.
        forecaster: any :class:`~openanomaly.models.base.Forecaster`.
        batch_chunks: chunks per forecast call; default :func:`default_batch_chunks`.
        progress: called after each batch with ``(points_done, points_total)``.
        checked: ``series`` already passed :func:`check_input` (the window path checks
            each fetched block once, before it reaches a scorer).

    Raises:
        DataError: no series, timestamps off the step grid, every value NaN, or two
            series whose outputs would collide.
        ModelError: the forecaster failed or broke its contract.
        ValueError: ``batch_chunks`` is not positive.

    Example::

        detection = score_range(series, pipeline, load_forecaster("mad"), start_ms=t0, end_ms=t1)
        detection.anomaly_score  # (n_series, grid points in (t0, t1])
    """
    if batch_chunks is None:
        batch_chunks = default_batch_chunks(pipeline, len(series))
    if batch_chunks <= 0:
        raise ValueError(f"batch_chunks must be positive, got {batch_chunks}")
    if not checked:
        check_input(series, pipeline)
    a, b = _window_columns(series.timestamps, start_ms, end_ms)
    return _run(series, pipeline, forecaster, a, b, batch_chunks=batch_chunks, progress=progress)


def _run(
    series: SeriesMatrix,
    pipeline: Pipeline,
    forecaster: Forecaster,
    a: int,
    b: int,
    *,
    batch_chunks: int,
    progress: Progress | None,
) -> Detection:
    shape = (len(series), b - a)
    outputs = tuple(np.full(shape, np.nan) for _ in range(4))
    skipped = np.zeros(len(series), dtype=bool)
    starts = _chunk_starts(series.timestamps, a, b, pipeline)
    c = pipeline.chunk_points
    for index in range(0, len(starts), batch_chunks):
        group = starts[index : index + batch_chunks]
        lo, hi = max(a, int(group[0])), min(b, int(group[-1]) + c)
        out, batch_skipped = _detect_chunks(
            series.values, series.timestamps, group, lo, hi, pipeline, forecaster
        )
        for target, part in zip(outputs, out, strict=True):
            target[:, lo - a : hi - a] = part
        skipped |= batch_skipped
        if progress is not None:
            progress(hi - a, b - a)
    if skipped.any():
        log.warning(
            "pipeline %r: %d series had chunks with no finite context value; those chunks were not scored",
            pipeline.name,
            int(skipped.sum()),
        )
    return Detection(
        series.labels,
        series.timestamps[a:b],
        series.values[:, a:b],
        *outputs,
        skipped=tuple(int(i) for i in np.flatnonzero(skipped)),
    )
