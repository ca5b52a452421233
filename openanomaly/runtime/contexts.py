"""Each query's fetched context kept between windows, so a window fetches only its new points.

A scheduled window scores a few new points but needs the context before them, thousands
of points per series, and fetching all of it again every window was most of a large
window's time. :class:`ContextCache` keeps the block a query returned; for the next
window of the same query it fetches only the points from one window plus
:data:`LOOKBACK_MS` before the last one it holds, and joins the two.

The joined block is the block a full fetch returns (same rows in the same order, same
timestamps, same values) as long as the TSDB's answer for the kept points has not
changed since they were fetched. So a sample that arrives more than a window late
reaches backtests but not the context of live windows, and a series the new points hold
but the kept block does not (a new series, whose past is unknown here) makes it a full
fetch. One difference remains by design: a series whose every sample in the range has
the value NaN is dropped (a full fetch returns it as a row of NaN, which scores nothing).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from openanomaly.core.config import Pipeline
from openanomaly.core.series import SeriesMatrix
from openanomaly.runtime.window import TSDBClient, fetch_start, query_block

__all__ = ["LOOKBACK_MS", "ContextCache"]

LOOKBACK_MS = 5 * 60_000
"""PromQL's default lookback: a late sample changes the query's value up to this long after it."""

_Key = tuple[str, str, int]  # pipeline name, query, step


def _size(block: SeriesMatrix) -> int:
    return block.values.nbytes + block.timestamps.nbytes


class ContextCache:
    """The last block each (pipeline, query, step) fetched, up to ``max_bytes`` of values
    in all (the least recently used dropped first; a block larger than that is not kept).

    Thread-safe: the scheduler runs pipelines in threads of its own.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[_Key, SeriesMatrix] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def query_block(
        self, client: TSDBClient, pipeline: Pipeline, *, start_ms: int, end_ms: int
    ) -> SeriesMatrix:
        """:func:`~openanomaly.runtime.window.query_block`'s block (unchecked), fetching
        only what the kept block of this query lacks. The block is read-only."""
        key = (pipeline.name, pipeline.query, pipeline.step_ms)
        first = fetch_start(pipeline, start_ms)
        with self._lock:
            kept = self._kept.pop(key, None)
            self._bytes -= 0 if kept is None else _size(kept)
        block = None if kept is None else _extend(client, pipeline, kept, first=first, end_ms=end_ms)
        if block is None:
            block = query_block(client, pipeline, start_ms=start_ms, end_ms=end_ms)
        block.values.flags.writeable = False  # kept for the next window: nobody may change it
        self._keep(key, block)
        return block

    def holds(self, pipeline: str) -> bool:
        """Whether a block of ``pipeline`` is kept (its next window fetches only new points)."""
        with self._lock:
            return any(key[0] == pipeline for key in self._kept)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the blocks of every pipeline not named in ``keep`` (after a config change)."""
        names = set(keep)
        with self._lock:
            for key in [key for key in self._kept if key[0] not in names]:
                self._bytes -= _size(self._kept.pop(key))

    def _keep(self, key: _Key, block: SeriesMatrix) -> None:
        size = _size(block)
        if size > self.max_bytes:
            return
        with self._lock:
            self._kept[key] = block
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._kept.popitem(last=False)
                self._bytes -= _size(old)


def _extend(
    client: TSDBClient, pipeline: Pipeline, kept: SeriesMatrix, *, first: int, end_ms: int
) -> SeriesMatrix | None:
    """The block over ``[first, end_ms]`` from ``kept`` plus a fetch of its last stretch
    onwards; None where that cannot give a full fetch's block (then fetch it all)."""
    step = pipeline.step_ms
    stamps = kept.timestamps
    if not len(stamps) or first < stamps[0] or first > stamps[-1] or end_ms < stamps[-1]:
        return None  # a longer context, no overlap, or an older window: nothing to join
    reread_points = -(-(pipeline.infer_every_ms + LOOKBACK_MS) // step)
    reread = max(first, int(stamps[-1]) - reread_points * step)
    new = client.query_range(pipeline.query, start_ms=reread, end_ms=end_ms, step_ms=step)
    rows_of = {tuple(sorted(labels.items())): row for row, labels in enumerate(kept.labels)}
    rows = [rows_of.get(tuple(sorted(labels.items()))) for labels in new.labels]
    if any(row is None for row in rows):
        return None  # a new series: its context is not kept
    old = (reread - first) // step
    offset = (first - int(stamps[0])) // step
    values = np.full((len(kept), old + len(new.timestamps)), np.nan)
    values[:, :old] = kept.values[:, offset : offset + old]
    values[rows, old:] = new.values
    alive = np.isfinite(values).any(axis=1)
    labels = tuple(labels for labels, live in zip(kept.labels, alive, strict=True) if live)
    timestamps = first + step * np.arange(values.shape[1], dtype=np.int64)
    return SeriesMatrix(labels, timestamps, values[alive])
