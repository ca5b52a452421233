"""The one window path: how a pipeline's range of points becomes written scores.

:func:`run_window` is the one composition of fetch → score → write; every path that
writes scores runs it: the scheduler's windows (warm model actor and Ray Data job, in
:mod:`openanomaly.runtime.runner`), ``openanomaly run --once`` and ``openanomaly backtest``. So they
all compute and write the same samples (the playground and ``/v1/detect`` score with the
same core, :func:`openanomaly.core.detect.score_range`, and write nothing)::

    grid ─► fetch (context + range, checked) ─► score (forecast → calibrate → score) ─► labels ─► write

- **Grid.** Windows are ``((k - 1) * infer_every, k * infer_every]`` (:func:`latest_window`);
  forecast chunks sit on the same absolute grid (:mod:`openanomaly.core.detect`), so a point
  gets the same forecast whichever path scores it.
- **Fetch.** :func:`fetch` reads the pipeline's query over the range plus the context
  of its first chunk, on the step grid, and checks it once
  (:func:`~openanomaly.core.detect.check_input`); a long range comes in batches
  (:func:`iter_blocks`), a Ray Data job in shards (:func:`check_block`).
- **Score.** A :data:`Scorer` turns the checked block into a
  :class:`~openanomaly.core.detect.Detection`: :func:`local_scorer` runs the pure core in this
  process; the scheduler passes one that runs the same core in a warm model actor.
- **Labels.** :func:`output_matrix`: the input's labels plus ``for``/``model``.
- **Write, idempotently.** :func:`claim` marks the range in one small series of its own
  before any output is written. A range nothing marked yet is written as it is; in a
  range an earlier run marked, :func:`write` first reads which output samples already
  exist (raw samples of this pipeline's output series) and sends only the others.
  So a backtest over a scored range, ``run --once`` after the scheduler, or a scheduler
  restart mid-window never store a second sample at one timestamp, on a VictoriaMetrics
  or a Prometheus with default flags (VictoriaMetrics keeps every duplicate unless
  ``-dedup.minScrapeInterval`` is set; Prometheus rejects a different value at a taken
  timestamp). One case needs the server: a write that timed out *after* it landed is
  retried by the client and lands twice; run VictoriaMetrics with
  ``-dedup.minScrapeInterval=1ms`` (compose and the chart do).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from openanomaly.core.config import Pipeline
from openanomaly.core.detect import Detection, Progress, check_input, default_batch_chunks, score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import DataError
from openanomaly.models.base import Forecaster

__all__ = [
    "WINDOW_MARKER",
    "RunResult",
    "Scorer",
    "TSDBClient",
    "Tally",
    "check_block",
    "claim",
    "fetch",
    "fetch_start",
    "iter_blocks",
    "label_matchers",
    "latest_window",
    "local_scorer",
    "marker_labels",
    "output_labels",
    "output_matrix",
    "query_block",
    "run_window",
    "scored_range",
    "write",
]

log = logging.getLogger(__name__)

# Chunks in the first backtest fetch (series count unknown yet) and at most in any fetch.
_FIRST_FETCH_CHUNKS = 64
_MAX_FETCH_CHUNKS = 1000

Scorer = Callable[[SeriesMatrix, int, int], Detection]
"""``scorer(series, start_ms, end_ms)``: score ``(start_ms, end_ms]`` of a fetched, checked block."""


class TSDBClient(Protocol):
    """What the window path needs from :class:`openanomaly.io.tsdb.PrometheusClient`."""

    def query_range(self, query: str, *, start_ms: int, end_ms: int, step_ms: int) -> SeriesMatrix: ...

    def sample_times(
        self, selector: str, *, start_ms: int, end_ms: int
    ) -> dict[frozenset[tuple[str, str]], set[int]]: ...

    def remote_write(self, series: SeriesMatrix) -> int: ...


@dataclass(frozen=True)
class RunResult:
    """What one window or backtest did (logged, shown by the CLI, kept by the scheduler)."""

    pipeline: str
    start_ms: int
    end_ms: int
    series_in: int
    series_scored: int
    points_scored: int
    anomalies: int
    samples_written: int
    samples_present: int = 0
    points_in: int = 0  # samples of the input series inside the range (scored or warm-up)
    skipped: tuple[Mapping[str, str], ...] = ()
    duration_s: float = 0.0


# ----------------------------------------------------------------------------- grid


def latest_window(pipeline: Pipeline, now_ms: int, *, delay_ms: int = 0) -> tuple[int, int]:
    """The latest complete window ``(start, end]`` at ``now_ms``: what the scheduler scores next.

    Example:
        >>> p = Pipeline(name="p", query="up", model="mad", schedule={"infer_every": "5m"})
        >>> latest_window(p, 1_000_000)
        (600000, 900000)
    """
    every = pipeline.infer_every_ms
    end = (now_ms - delay_ms) // every * every
    return end - every, end


def scored_range(series: SeriesMatrix, pipeline: Pipeline) -> tuple[int, int]:
    """``(start, end]`` of in-memory data (a CSV, a request) that can be scored with a full context.

    The first scored point is the first with ``context`` points before it.

    Raises:
        DataError: the data is no longer than the context.
    """
    stamps = series.timestamps
    if len(stamps) <= pipeline.context_points:
        raise DataError(
            f"{len(stamps)} points at step {pipeline.step_ms} ms; more than the context "
            f"({pipeline.context_points} points) are needed",
            pipeline=pipeline.name,
        )
    return int(stamps[0]) + (pipeline.context_points - 1) * pipeline.step_ms, int(stamps[-1])


def fetch_start(pipeline: Pipeline, start_ms: int) -> int:
    """First grid point the range's first chunk needs: its context, on the infer_every grid."""
    every, step = pipeline.infer_every_ms, pipeline.step_ms
    return start_ms // every * every - (pipeline.context_points - 1) * step


# ----------------------------------------------------------------------------- fetch, score


def fetch(client: TSDBClient, pipeline: Pipeline, *, start_ms: int, end_ms: int) -> SeriesMatrix:
    """The window's block: the pipeline's query over ``(start_ms, end_ms]`` plus the context
    before it, on its step grid, checked by :func:`~openanomaly.core.detect.check_input`.

    Raises:
        QueryError: the TSDB failed.
        DataError: the query returned no series, only NaN, series off the grid or
            series whose outputs would collide.
    """
    block = query_block(client, pipeline, start_ms=start_ms, end_ms=end_ms)
    check_input(block, pipeline)
    return block


def query_block(client: TSDBClient, pipeline: Pipeline, *, start_ms: int, end_ms: int) -> SeriesMatrix:
    """The pipeline's query over ``(start_ms, end_ms]`` plus its context, unchecked."""
    return client.query_range(
        pipeline.query, start_ms=fetch_start(pipeline, start_ms), end_ms=end_ms, step_ms=pipeline.step_ms
    )


def check_block(block: SeriesMatrix, pipeline: Pipeline) -> DataError | None:
    """:func:`~openanomaly.core.detect.check_input` for one part of something bigger (a batch of
    a long range, a shard of a Ray Data job), where a part with no data is a gap, not an error.

    Returns:
        None: the block is checked, ready to score. The DataError instead of raising it
        when the block holds no data at all (no series, or only NaN).

    Raises:
        DataError: the block has data but is off the grid or has colliding series.
    """
    try:
        check_input(block, pipeline)
    except DataError as error:
        if len(block) and np.isfinite(block.values).any():
            raise
        return error
    return None


def local_scorer(pipeline: Pipeline, forecaster: Forecaster) -> Scorer:
    """A :data:`Scorer` that runs the pure core in this process."""

    def score(series: SeriesMatrix, start_ms: int, end_ms: int) -> Detection:
        return score_range(series, pipeline, forecaster, start_ms=start_ms, end_ms=end_ms, checked=True)

    return score


# ----------------------------------------------------------------------------- labels, write


def output_labels(labels: Mapping[str, str], pipeline: Pipeline, *, metric: str) -> dict[str, str]:
    """Labels of an output series: the input's minus ``__name__``, then ``output.extra_labels``,
    then ``for=<pipeline>``, ``model=<alias or spec>`` and ``__name__=<metric>`` (later wins)."""
    out = {key: value for key, value in labels.items() if key != "__name__"}
    out.update(pipeline.output.extra_labels)
    out["for"] = pipeline.name
    out["model"] = pipeline.model.label
    out["__name__"] = metric
    return out


def output_matrix(detection: Detection, pipeline: Pipeline) -> SeriesMatrix:
    """The four output metrics of ``detection`` as one matrix, ready for ``remote_write``.

    Rows are metric-major (all ``anomaly_score`` rows, then ``yhat``, ``yhat_lower``,
    ``yhat_upper``); rows with no value at all are dropped.
    """
    names = pipeline.output
    rows: list[dict[str, str]] = []
    blocks: list[np.ndarray] = []
    for metric, values in (
        (names.anomaly_score, detection.anomaly_score),
        (names.yhat, detection.yhat),
        (names.yhat_lower, detection.yhat_lower),
        (names.yhat_upper, detection.yhat_upper),
    ):
        keep = np.flatnonzero(np.isfinite(values).any(axis=1))
        rows.extend(output_labels(detection.labels[i], pipeline, metric=metric) for i in keep)
        blocks.append(values[keep])
    if not rows:
        return SeriesMatrix((), detection.timestamps, np.empty((0, len(detection.timestamps))))
    return SeriesMatrix(tuple(rows), detection.timestamps, np.concatenate(blocks))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


MATCHER_CHARS = 8000
"""Longest regex matcher one query gets: VictoriaMetrics refuses a query over 16 KB by default."""

_EXISTING_QUERIES = 8  # more than this: one query for all the pipeline's outputs is cheaper
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def label_matchers(name: str, values: Iterable[str], *, missing: bool = False) -> list[str]:
    """``name=~"v1|v2|…"`` matchers, each under :data:`MATCHER_CHARS`, that together match
    exactly the series whose ``name`` is one of ``values`` (and, with ``missing``, the
    series without the label: the first matcher also matches the empty string)."""
    matchers: list[str] = []
    group: list[str] = [""] if missing else []
    size = 0
    for value in values:
        pattern = _quote(_RE2_SPECIAL.sub(r"\\\1", value))[1:-1]
        if group and group != [""] and size + len(pattern) + 1 > MATCHER_CHARS:
            matchers.append(f'{name}=~"{"|".join(group)}"')
            group, size = [], 0
        group.append(pattern)
        size += len(pattern) + 1
    if group:
        matchers.append(f'{name}=~"{"|".join(group)}"')
    return matchers


def _outputs_selectors(pipeline: Pipeline, labels: Sequence[Mapping[str, str]]) -> list[str]:
    """Selectors that together hold the output series of ``labels`` (then looked up by
    their full label set, ``__name__`` included).

    Why not one selector for all the pipeline's outputs: a Ray Data job writes a window
    block by block, and each block would read back every block written before it (a cost
    that grows with the square of the series count). So the selectors add a matcher on
    the input label with the most distinct values, unless that takes more queries than
    reading everything once.
    """
    base = f"for={_quote(pipeline.name)}, model={_quote(pipeline.model.label)}"
    kept = {"__name__", "for", "model", *pipeline.output.extra_labels}  # not carried over unchanged
    distinct: dict[str, set[str]] = {}
    for row in labels:
        for name, value in row.items():
            if name not in kept:
                distinct.setdefault(name, set()).add(value)
    if distinct:
        name = max(distinct, key=lambda n: (len(distinct[n]), n))
        missing = any(name not in row for row in labels)
        matchers = label_matchers(name, sorted(distinct[name]), missing=missing)
        if len(matchers) <= _EXISTING_QUERIES:
            return [f"{{{base}, {matcher}}}" for matcher in matchers]
    return [f"{{{base}}}"]


WINDOW_MARKER = "openanomaly_window"
"""Metric of the marker series: a sample at every grid point a pipeline began to write."""


def marker_labels(pipeline: Pipeline) -> dict[str, str]:
    """Labels of the pipeline's marker series: ``output.extra_labels``, then ``pipeline=<name>``,
    ``model=<alias or spec>`` and ``__name__`` (no ``for``: ``{for="…"}`` stays the outputs)."""
    labels = dict(pipeline.output.extra_labels)
    labels.update(pipeline=pipeline.name, model=pipeline.model.label, __name__=WINDOW_MARKER)
    return labels


def claim(client: TSDBClient, pipeline: Pipeline, *, start_ms: int, end_ms: int) -> bool:
    """Mark the grid points of ``(start_ms, end_ms]`` as written by ``pipeline``, before any
    output is; True when none of them was marked before.

    Why: which outputs a range already holds can only be told by reading them back, and
    the TSDB's cost for that read grows with every output series it holds, not only with
    the window's. One marker series read by its exact labels costs next to nothing. A range
    with no marked point holds nothing this pipeline wrote: its outputs go out without the
    read-back (``write(..., fresh=True)``). A marked point means an earlier run began there
    (a retry, an overlapping backtest, a restart): the write reads back. Outputs written
    some other way (by hand, or by a version before the marker) are not looked for.

    Raises:
        QueryError: reading the marker failed. RemoteWriteError: writing it failed.
    """
    step = pipeline.step_ms
    stamps = np.arange((start_ms // step + 1) * step, end_ms + 1, step, dtype=np.int64)
    labels = marker_labels(pipeline)
    selector = "{" + ", ".join(f"{name}={_quote(value)}" for name, value in sorted(labels.items())) + "}"
    found = client.sample_times(selector, start_ms=start_ms, end_ms=end_ms).values()
    marked = np.isin(stamps, np.fromiter(set().union(*found), np.int64))  # Prometheus 2 also returns start
    if not marked.all():
        new = stamps[~marked]
        client.remote_write(SeriesMatrix((labels,), new, np.ones((1, len(new)))))
    return not marked.any()


def write(
    client: TSDBClient, pipeline: Pipeline, detection: Detection, *, fresh: bool = False
) -> tuple[int, int]:
    """Remote-write the outputs of ``detection`` that the TSDB does not hold yet.

    Args:
        fresh: :func:`claim` found the range unmarked: nothing of this pipeline's is
            there, so the outputs are written without reading back the existing ones.

    Returns:
        ``(written, present)``: samples sent, and samples left out because a sample of
        that series already sits at that timestamp.

    Raises:
        QueryError: reading the existing outputs failed (nothing was written).
        RemoteWriteError: the TSDB rejected the write or stayed unreachable.
    """
    output = output_matrix(detection, pipeline)
    if not len(output):
        return 0, 0
    stamps = output.timestamps
    step = pipeline.step_ms
    existing: dict[frozenset[tuple[str, str]], set[int]] = {}
    for selector in () if fresh else _outputs_selectors(pipeline, detection.labels):
        existing.update(client.sample_times(selector, start_ms=int(stamps[0]) - step, end_ms=int(stamps[-1])))
    values = output.values
    present = 0
    if existing:
        values = values.copy()
        for row, labels in enumerate(output.labels):
            taken = existing.get(frozenset(labels.items()))
            if taken:
                columns = np.flatnonzero(np.isin(stamps, np.fromiter(taken, np.int64, len(taken))))
                present += int(np.count_nonzero(np.isfinite(values[row, columns])))
                values[row, columns] = np.nan
        output = SeriesMatrix(output.labels, stamps, values)
    return client.remote_write(output), present


# ----------------------------------------------------------------------------- runs


class Tally:
    """Running counts over a run's batches, for its :class:`RunResult` (keeps no arrays)."""

    def __init__(self) -> None:
        self.series: set[frozenset[tuple[str, str]]] = set()
        self.scored: set[frozenset[tuple[str, str]]] = set()
        self.skipped: dict[frozenset[tuple[str, str]], Mapping[str, str]] = {}
        self.points = 0
        self.anomalies = 0
        self.written = 0
        self.present = 0
        self.points_in = 0

    def add(self, detection: Detection, written: int = 0, present: int = 0) -> None:
        keys = [frozenset(labels.items()) for labels in detection.labels]
        self.series.update(keys)
        finite = np.isfinite(detection.anomaly_score)
        self.scored.update(keys[i] for i in np.flatnonzero(finite.any(axis=1)))
        for i in detection.skipped:
            self.skipped[keys[i]] = detection.labels[i]
        self.points += int(np.count_nonzero(finite))
        self.points_in += detection.points_in
        with np.errstate(invalid="ignore"):
            self.anomalies += int(np.count_nonzero(detection.anomaly_score > 1))
        self.written += written
        self.present += present

    def result(self, pipeline: Pipeline, start_ms: int, end_ms: int, duration_s: float = 0.0) -> RunResult:
        return RunResult(
            pipeline=pipeline.name,
            start_ms=start_ms,
            end_ms=end_ms,
            series_in=len(self.series),
            series_scored=len(self.scored),
            points_scored=self.points,
            anomalies=self.anomalies,
            samples_written=self.written,
            samples_present=self.present,
            points_in=self.points_in,
            skipped=tuple(self.skipped.values()),
            duration_s=duration_s,
        )


def run_window(
    pipeline: Pipeline,
    scorer: Scorer,
    *,
    start_ms: int,
    end_ms: int,
    source: TSDBClient | SeriesMatrix,
    sink: TSDBClient | None,
    fresh: bool | None = None,
) -> tuple[Detection, RunResult]:
    """One window, the one composition of fetch → score → write: every path that writes runs it.

    Fetch ``(start - context, end]``, score ``(start, end]``, write what is new. Nothing is
    written unless the whole window was fetched and scored.

    Args:
        source: the TSDB to :func:`fetch` the window from, or the window's block already
            fetched and checked (by :func:`fetch` or :func:`check_block`: ``run --once``
            fetches every pipeline first, to check them all before writing any; a
            backtest fetches its batches with :func:`iter_blocks`; a Ray Data job its shards).
        sink: the TSDB to write to; None writes nothing (``backtest --out``).
        fresh: what :func:`claim` returned for a range this block is part of (a shard of
            a window claimed once for all its shards); None: claim the range here,
            after scoring, before the write.

    Raises:
        QueryError, RemoteWriteError: the TSDB failed.
        DataError: the query returned no series, or only NaN.
        ModelError: the model failed.
    """
    began = time.perf_counter()
    if isinstance(source, SeriesMatrix):
        block = source
    else:
        block = fetch(source, pipeline, start_ms=start_ms, end_ms=end_ms)
    detection = scorer(block, start_ms, end_ms)
    written = present = 0
    if sink is not None:
        if fresh is None:
            fresh = claim(sink, pipeline, start_ms=start_ms, end_ms=end_ms)
        written, present = write(sink, pipeline, detection, fresh=fresh)
    tally = Tally()
    tally.add(detection, written, present)
    result = tally.result(pipeline, start_ms, end_ms, time.perf_counter() - began)
    log.info(
        "pipeline %r (%d, %d]: %d/%d series scored, %d points, %d anomalies, %d samples written, "
        "%d already present, %.2fs",
        pipeline.name,
        start_ms,
        end_ms,
        result.series_scored,
        result.series_in,
        result.points_scored,
        result.anomalies,
        result.samples_written,
        result.samples_present,
        result.duration_s,
    )
    return detection, result


def iter_blocks(
    client: TSDBClient,
    pipeline: Pipeline,
    *,
    start_ms: int,
    end_ms: int,
    batch_chunks: int | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[int, int, SeriesMatrix]]:
    """Fetch ``(start_ms, end_ms]`` one batch at a time (backtests): ``(batch_start, batch_end, block)``.

    Batches end on the ``infer_every`` grid and each fetches only its own range plus its
    context, so memory stays bounded; pass each to :func:`run_window`. A batch whose
    query returns no series or only NaN is left out; if that holds for every batch,
    :class:`DataError` is raised at the end. Pull the first item of several pipelines'
    iterators before scoring anything to check them all first.

    Args:
        batch_chunks: chunks per fetch; default: 64 for the first fetch, then what keeps
            one fetch's contexts within ~64 MB for the series count seen (at most 1000).
        progress: called after each batch is consumed with ``(points_done, points_total)``.

    Raises:
        QueryError, DataError; ValueError for a non-positive ``batch_chunks``.
    """
    step, every = pipeline.step_ms, pipeline.infer_every_ms
    if end_ms <= start_ms:
        raise DataError(f"range is empty: end {end_ms} <= start {start_ms}", pipeline=pipeline.name)
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
        batch_end = min(end_ms, (batch_start // every + chunks) * every)
        block = query_block(client, pipeline, start_ms=batch_start, end_ms=batch_end)
        gap = check_block(block, pipeline)
        if gap is None:
            n_series = max(n_series, len(block))
            yield batch_start, batch_end, block
        else:
            no_data = no_data or gap
        batch_start = batch_end
        if progress is not None:
            progress(min(total_points, -(-(batch_start - start_ms) // step)), total_points)
    if n_series == 0:
        raise no_data or DataError("no data in the range", pipeline=pipeline.name)
