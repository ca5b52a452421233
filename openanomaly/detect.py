"""The detect loop for one pipeline: context → forecast → score, rolling and without look-ahead.

The pure core (:func:`detect`, :func:`backtest`) works on an in-memory
:class:`~openanomaly.series.SeriesMatrix` and never reads the clock, the network or Ray,
so the scheduled run, the CLI backtest, the benchmarks and the tests all compute
exactly the same thing. The thin wrappers at the bottom (:func:`run_window`,
:func:`backtest_tsdb`) add the TSDB reads and writes.

Rolling semantics (the same for one scheduled window and for a year-long backtest):

- A window is ``(start_ms, end_ms]``; its points are the grid columns in it.
- The window's points are cut into *chunks* of ``chunk_points(pipeline)`` =
  ``max(1, infer_every // step)`` points, counted from the window's first point; the
  last chunk may be shorter.
- Each chunk is forecast (horizon = chunk length) from the ``context_points`` grid
  values just before its first point, which include earlier chunks' actual values but
  never the chunk's own. So a backtest writes what the scheduler would have written
  had it run every ``infer_every``.
- All ``(series, chunk)`` contexts of one call go to ONE batched ``forecast`` call as a
  2-D array left-padded with NaN, then through the calibration stage
  (:mod:`openanomaly.calibration`), which reads only each chunk's context, so a
  backtest scores thousands of chunks from shared arrays with the same result as one
  window at a time.
- A ``(series, chunk)`` with no actual value is not forecast (nothing to score). One
  whose context has no finite value cannot be forecast: it is skipped and its series
  is reported in :attr:`Detection.skipped` (the rest of the batch still runs).
- Output samples exist only where the input had a sample: NaN actual → no score,
  no ``yhat`` at that timestamp.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from openanomaly.calibration import score_chunks
from openanomaly.config import Pipeline
from openanomaly.errors import DataError
from openanomaly.models.base import Forecaster, check_forecast
from openanomaly.series import SeriesMatrix

__all__ = [
    "Detection",
    "Progress",
    "RunResult",
    "TSDBClient",
    "Tally",
    "align_to_grid",
    "backtest",
    "backtest_tsdb",
    "chunk_points",
    "default_batch_chunks",
    "detect",
    "detect_window",
    "fetch_window",
    "iter_backtest",
    "output_labels",
    "run_window",
    "summarize",
    "write_detection",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(points_done, points_total)`` (grid points of the range, per series)."""

# Upper bound on the cells of one batch's context array (series x chunks x context
# points); 8M float64 cells = 64 MB. Bounds memory of long backtests over many series.
_CONTEXT_CELL_BUDGET = 8_000_000
# Chunks in the first backtest fetch (series count unknown yet) and at most in any fetch.
_FIRST_FETCH_CHUNKS = 64
_MAX_FETCH_CHUNKS = 1000


class TSDBClient(Protocol):
    """What the I/O wrappers need from :class:`openanomaly.tsdb.PrometheusClient`."""

    def query_range(self, query: str, *, start_ms: int, end_ms: int, step_ms: int) -> SeriesMatrix: ...

    def remote_write(self, series: SeriesMatrix) -> int: ...


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
    def series_scored(self) -> int:
        return int(np.count_nonzero(np.isfinite(self.anomaly_score).any(axis=1)))

    @property
    def skipped_labels(self) -> tuple[Mapping[str, str], ...]:
        return tuple(self.labels[i] for i in self.skipped)

    def to_series_matrix(self, pipeline: Pipeline) -> SeriesMatrix:
        """The four output metrics as one matrix, ready for ``remote_write``.

        Rows are metric-major (all ``anomaly_score`` rows, then ``yhat``, ``yhat_lower``,
        ``yhat_upper``); rows with no value at all are dropped. Labels come from
        :func:`output_labels`.
        """
        names = pipeline.output
        rows: list[dict[str, str]] = []
        blocks: list[np.ndarray] = []
        for metric, values in (
            (names.anomaly_score, self.anomaly_score),
            (names.yhat, self.yhat),
            (names.yhat_lower, self.yhat_lower),
            (names.yhat_upper, self.yhat_upper),
        ):
            keep = np.flatnonzero(np.isfinite(values).any(axis=1))
            rows.extend(output_labels(self.labels[i], pipeline, metric=metric) for i in keep)
            blocks.append(values[keep])
        if not rows:
            return SeriesMatrix((), self.timestamps, np.empty((0, len(self.timestamps))))
        return SeriesMatrix(tuple(rows), self.timestamps, np.concatenate(blocks))


@dataclass(frozen=True)
class RunResult:
    """What one :func:`run_window` / :func:`backtest_tsdb` call did (logged, shown by the CLI)."""

    pipeline: str
    start_ms: int
    end_ms: int
    series_in: int
    series_scored: int
    points_scored: int
    anomalies: int
    samples_written: int
    skipped: tuple[Mapping[str, str], ...] = ()


def chunk_points(pipeline: Pipeline) -> int:
    """Points forecast per chunk: ``infer_every // step``, at least 1."""
    return max(1, int(pipeline.schedule.infer_every / pipeline.step))


def default_batch_chunks(pipeline: Pipeline, n_series: int) -> int:
    """Chunks per backtest batch so that one batch's contexts stay within ~64 MB."""
    cells = max(1, n_series) * max(1, pipeline.context_points)
    return max(1, _CONTEXT_CELL_BUDGET // cells)


def output_labels(labels: Mapping[str, str], pipeline: Pipeline, *, metric: str) -> dict[str, str]:
    """Labels of an output series: the input's minus ``__name__``, then ``output.extra_labels``,
    then ``for=<pipeline>``, ``model=<alias or spec>`` and ``__name__=<metric>`` (later wins)."""
    out = {key: value for key, value in labels.items() if key != "__name__"}
    out.update(pipeline.output.extra_labels)
    out["for"] = pipeline.name
    out["model"] = pipeline.model.label
    out["__name__"] = metric
    return out


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


def _check_input(series: SeriesMatrix, pipeline: Pipeline) -> None:
    if len(series) == 0:
        raise DataError(f"query {pipeline.query!r} returned no series", pipeline=pipeline.name)
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


def _detect_columns(
    values: np.ndarray, a: int, b: int, pipeline: Pipeline, forecaster: Forecaster
) -> tuple[np.ndarray, np.ndarray]:
    """Score columns ``[a, b)`` of ``values`` ``(n, t)`` with one forecast call.

    Returns:
        ``out`` float64 ``(4, n, b - a)`` (score, yhat, lower, upper) and the bool mask
        ``(n,)`` of series that had a chunk skipped for lack of context.
    """
    n = values.shape[0]
    width = b - a
    out = np.full((4, n, width), np.nan)
    skipped = np.zeros(n, dtype=bool)
    if width <= 0 or n == 0:
        return out, skipped
    c, length = chunk_points(pipeline), pipeline.context_points
    # Work on the columns this batch needs only, so a batch costs O(its size), not O(t).
    first = max(0, a - length)
    values = values[:, first:b]
    a, b = a - first, b - first
    starts = np.arange(a, b, c)  # (k,) first column of each chunk
    k = len(starts)
    # Context of the chunk starting at s: columns [s - length, s), NaN before column 0.
    # A strided view (no copy for one series), and finite counts from a running sum,
    # so a long backtest does not touch every context cell just to find empty ones.
    padded = np.concatenate([np.full((n, length), np.nan), values], axis=1)
    contexts = np.lib.stride_tricks.sliding_window_view(padded, length, axis=1)[:, a:b:c]  # (n, k, length)
    finite = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(np.isfinite(padded), axis=1)], axis=1)
    # Actuals of each chunk, NaN past the window end (the last chunk may be short).
    cols = starts[:, None] + np.arange(c)[None, :]  # (k, c)
    actual = np.where(cols < b, values[:, np.minimum(cols, b - 1)], np.nan)  # (n, k, c)
    contexts = contexts.reshape(n * k, length)
    actual = actual.reshape(n * k, c)
    has_actual = np.isfinite(actual).any(axis=1)
    has_context = (finite[:, starts + length] - finite[:, starts] > 0).reshape(n * k)
    skipped = (has_actual & ~has_context).reshape(n, k).any(axis=1)
    rows = np.flatnonzero(has_actual & has_context)
    if rows.size == 0:
        return out, skipped
    low, high = pipeline.scoring.quantiles
    forecast = forecaster.forecast(contexts if rows.size == n * k else contexts[rows], c, [low, 0.5, high])
    check_forecast(forecast, n_series=rows.size, horizon=c, spec=pipeline.model.spec)
    score = score_chunks(
        values,
        starts,
        rows,
        actual[rows],
        forecast,
        pipeline.scoring,
        context=length,
        step_s=pipeline.step.total_seconds(),
        use_reference=getattr(forecaster, "is_calibration_reference", False),
    )
    flat = np.full((4, n * k, c), np.nan)
    missing = np.isnan(actual[rows])
    for index, part in enumerate(score):
        flat[index, rows] = np.where(missing, np.nan, part)
    out[:] = flat.reshape(4, n, k * c)[:, :, :width]
    return out, skipped


def detect(
    series: SeriesMatrix, pipeline: Pipeline, forecaster: Forecaster, *, start_ms: int, end_ms: int
) -> Detection:
    """Score the points of ``series`` in ``(start_ms, end_ms]`` with ONE batched forecast call.

    Args:
        series: every series of the pipeline's query on its step grid, covering at
            least ``(start_ms - context, end_ms]`` (less history is allowed: contexts are
            left-padded with NaN).
        pipeline: query, step, schedule (chunking, context) and scoring.
        forecaster: any :class:`~openanomaly.models.base.Forecaster`.

    Raises:
        DataError: no series, timestamps off the step grid, every value NaN, or two
            series whose outputs would collide.
        ModelError: the forecaster failed or broke its contract.

    Example::

        detection = detect(series, pipeline, load_forecaster("mad"), start_ms=t0, end_ms=t1)
        detection.anomaly_score  # (n_series, grid points in (t0, t1])
    """
    _check_input(series, pipeline)
    a, b = _window_columns(series.timestamps, start_ms, end_ms)
    return _run(series, pipeline, forecaster, a, b, per_batch=max(1, b - a), progress=None)


def backtest(
    series: SeriesMatrix,
    pipeline: Pipeline,
    forecaster: Forecaster,
    *,
    start_ms: int,
    end_ms: int,
    batch_chunks: int | None = None,
    progress: Progress | None = None,
) -> Detection:
    """Score ``(start_ms, end_ms]`` of an in-memory ``series`` in batches of chunks.

    Gives the same scores as one :func:`detect` call over the whole range (each chunk
    sees the same context either way); batching only bounds memory: each batch builds
    a ``(n_series * batch_chunks, context_points)`` context array. Use it for NAB-style
    benchmarks and CSV backtests with no TSDB.

    Args:
        batch_chunks: chunks per forecast call; default :func:`default_batch_chunks`.
        progress: called after each batch with ``(points_done, points_total)``.

    Raises:
        DataError, ModelError: as :func:`detect`.
        ValueError: ``batch_chunks`` is not positive.
    """
    if batch_chunks is None:
        batch_chunks = default_batch_chunks(pipeline, len(series))
    if batch_chunks <= 0:
        raise ValueError(f"batch_chunks must be positive, got {batch_chunks}")
    _check_input(series, pipeline)
    a, b = _window_columns(series.timestamps, start_ms, end_ms)
    return _run(
        series, pipeline, forecaster, a, b, per_batch=batch_chunks * chunk_points(pipeline), progress=progress
    )


def _run(
    series: SeriesMatrix,
    pipeline: Pipeline,
    forecaster: Forecaster,
    a: int,
    b: int,
    *,
    per_batch: int,
    progress: Progress | None,
) -> Detection:
    shape = (len(series), b - a)
    outputs = tuple(np.full(shape, np.nan) for _ in range(4))
    skipped = np.zeros(len(series), dtype=bool)
    for batch_start in range(a, b, per_batch):
        batch_end = min(b, batch_start + per_batch)
        out, batch_skipped = _detect_columns(series.values, batch_start, batch_end, pipeline, forecaster)
        for target, part in zip(outputs, out, strict=True):
            target[:, batch_start - a : batch_end - a] = part
        skipped |= batch_skipped
        if progress is not None:
            progress(batch_end - a, b - a)
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


# ----------------------------------------------------------------------------- I/O wrappers


class Tally:
    """Running counts over a run's batches, for its :class:`RunResult` (keeps no arrays)."""

    def __init__(self) -> None:
        self.series: set[frozenset[tuple[str, str]]] = set()
        self.scored: set[frozenset[tuple[str, str]]] = set()
        self.skipped: dict[frozenset[tuple[str, str]], Mapping[str, str]] = {}
        self.points = 0
        self.anomalies = 0
        self.written = 0

    def add(self, detection: Detection, written: int) -> None:
        keys = [frozenset(labels.items()) for labels in detection.labels]
        self.series.update(keys)
        finite = np.isfinite(detection.anomaly_score)
        self.scored.update(keys[i] for i in np.flatnonzero(finite.any(axis=1)))
        for i in detection.skipped:
            self.skipped[keys[i]] = detection.labels[i]
        self.points += int(np.count_nonzero(finite))
        with np.errstate(invalid="ignore"):
            self.anomalies += int(np.count_nonzero(detection.anomaly_score > 1))
        self.written += written

    def result(self, pipeline: Pipeline, start_ms: int, end_ms: int) -> RunResult:
        return RunResult(
            pipeline=pipeline.name,
            start_ms=start_ms,
            end_ms=end_ms,
            series_in=len(self.series),
            series_scored=len(self.scored),
            points_scored=self.points,
            anomalies=self.anomalies,
            samples_written=self.written,
            skipped=tuple(self.skipped.values()),
        )


def fetch_window(client: TSDBClient, pipeline: Pipeline, *, start_ms: int, end_ms: int) -> SeriesMatrix:
    """The pipeline's query over ``(start_ms - context, end_ms]`` on its step grid.

    Raises:
        QueryError: the TSDB failed.
    """
    fetch_start = start_ms - (pipeline.context_points - 1) * pipeline.step_ms
    return client.query_range(pipeline.query, start_ms=fetch_start, end_ms=end_ms, step_ms=pipeline.step_ms)


def write_detection(client: TSDBClient, pipeline: Pipeline, detection: Detection) -> int:
    """Remote-write the four output metrics of ``detection``; returns samples written.

    Raises:
        RemoteWriteError: the TSDB rejected the write or stayed unreachable.
    """
    output = detection.to_series_matrix(pipeline)
    return client.remote_write(output) if len(output) else 0


def detect_window(
    client: TSDBClient, pipeline: Pipeline, forecaster: Forecaster, *, start_ms: int, end_ms: int
) -> Detection:
    """Fetch and score ``(start_ms, end_ms]`` without writing (see :func:`run_window`).

    Raises:
        QueryError: the TSDB failed.
        DataError, ModelError: as :func:`detect`.
    """
    series = fetch_window(client, pipeline, start_ms=start_ms, end_ms=end_ms)
    return detect(series, pipeline, forecaster, start_ms=start_ms, end_ms=end_ms)


def summarize(
    pipeline: Pipeline, detection: Detection, *, start_ms: int, end_ms: int, written: int
) -> RunResult:
    """The :class:`RunResult` of one window's detection."""
    tally = Tally()
    tally.add(detection, written)
    return tally.result(pipeline, start_ms, end_ms)


def run_window(
    client: TSDBClient, pipeline: Pipeline, forecaster: Forecaster, *, start_ms: int, end_ms: int
) -> RunResult:
    """One scheduled pass: fetch ``(start - context, end]``, detect ``(start, end]``, write.

    Nothing is written unless the whole window was fetched and scored. To check several
    pipelines before writing any, call :func:`detect_window` for each, then
    :func:`write_detection`.

    Raises:
        QueryError, RemoteWriteError: the TSDB failed.
        DataError, ModelError: as :func:`detect`.
    """
    detection = detect_window(client, pipeline, forecaster, start_ms=start_ms, end_ms=end_ms)
    written = write_detection(client, pipeline, detection)
    result = summarize(pipeline, detection, start_ms=start_ms, end_ms=end_ms, written=written)
    log.info(
        "pipeline %r (%d, %d]: %d/%d series scored, %d points, %d anomalies, %d samples written",
        pipeline.name,
        start_ms,
        end_ms,
        result.series_scored,
        result.series_in,
        result.points_scored,
        result.anomalies,
        result.samples_written,
    )
    return result


def iter_backtest(
    client: TSDBClient,
    pipeline: Pipeline,
    forecaster: Forecaster,
    *,
    start_ms: int,
    end_ms: int,
    batch_chunks: int | None = None,
    progress: Progress | None = None,
) -> Iterator[Detection]:
    """Backtest ``(start_ms, end_ms]`` against the TSDB, yielding one scored batch at a time.

    Each batch fetches only its own range plus context and is scored completely before
    it is yielded, so memory stays bounded and the caller never writes half a batch.
    A batch whose query returns no series or only NaN yields nothing; if that holds for
    every batch, :class:`DataError` is raised at the end (so nothing was written).
    Pull the first item of several pipelines' iterators before writing anything to
    check them all first.

    Args:
        batch_chunks: chunks per fetch and per forecast call; default: 64 for the first
            fetch, then :func:`default_batch_chunks` for the series count seen so far
            (at most 1000), and forecast calls within a fetch bounded the same way.
        progress: called after each batch with ``(points_done, points_total)``.

    Raises:
        QueryError, DataError, ModelError; ValueError for a non-positive ``batch_chunks``.
    """
    step = pipeline.step_ms
    if end_ms <= start_ms:
        raise DataError(f"backtest range is empty: end {end_ms} <= start {start_ms}", pipeline=pipeline.name)
    if batch_chunks is not None and batch_chunks <= 0:
        raise ValueError(f"batch_chunks must be positive, got {batch_chunks}")
    total_points = -(-(end_ms - start_ms) // step)
    no_data: DataError | None = None
    n_series = 0
    batch_start = start_ms
    while batch_start < end_ms:
        # The series count is unknown until the first fetch: start small, then size the
        # fetches so that one holds about as many cells as one forecast batch.
        chunks = batch_chunks or (
            min(_FIRST_FETCH_CHUNKS, default_batch_chunks(pipeline, 1))
            if n_series == 0
            else min(_MAX_FETCH_CHUNKS, default_batch_chunks(pipeline, n_series))
        )
        batch_end = min(end_ms, batch_start + chunks * chunk_points(pipeline) * step)
        series = fetch_window(client, pipeline, start_ms=batch_start, end_ms=batch_end)
        detection = None
        if len(series) == 0 or not np.isfinite(series.values).any():
            try:
                _check_input(series, pipeline)
            except DataError as error:
                no_data = no_data or error
        else:
            n_series = max(n_series, len(series))
            detection = backtest(
                series,
                pipeline,
                forecaster,
                start_ms=batch_start,
                end_ms=batch_end,
                batch_chunks=batch_chunks or default_batch_chunks(pipeline, len(series)),
            )
        batch_start = batch_end
        if progress is not None:
            progress(min(total_points, -(-(batch_start - start_ms) // step)), total_points)
        if detection is not None:
            yield detection
    if n_series == 0:
        raise no_data or DataError("no data in the backtest range", pipeline=pipeline.name)


def backtest_tsdb(
    client: TSDBClient,
    pipeline: Pipeline,
    forecaster: Forecaster,
    *,
    start_ms: int,
    end_ms: int,
    batch_chunks: int | None = None,
    progress: Progress | None = None,
    sink: Callable[[Detection], int] | None = None,
) -> RunResult:
    """Backtest ``(start_ms, end_ms]`` against the TSDB and write each batch (see :func:`iter_backtest`).

    Args:
        sink: receives each batch's :class:`Detection` and returns the samples it wrote;
            default :func:`write_detection` to ``client`` (pass a collector for ``--out``).

    Raises:
        QueryError, RemoteWriteError, DataError, ModelError.
    """
    tally = Tally()
    for detection in iter_backtest(
        client,
        pipeline,
        forecaster,
        start_ms=start_ms,
        end_ms=end_ms,
        batch_chunks=batch_chunks,
        progress=progress,
    ):
        written = sink(detection) if sink is not None else write_detection(client, pipeline, detection)
        tally.add(detection, written)
    return tally.result(pipeline, start_ms, end_ms)
