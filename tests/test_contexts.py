"""The kept context: every joined block equals the block a full fetch returns, while only
the newest stretch is fetched; new series, late samples and the memory bound are handled."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest

from openanomaly.core.config import Pipeline
from openanomaly.core.series import SeriesMatrix
from openanomaly.runtime.contexts import LOOKBACK_MS, ContextCache
from openanomaly.runtime.options import JobOptions
from openanomaly.runtime.window import query_block

MIN = 60_000
EVERY = 5 * MIN


class _TSDB:
    """``query_range`` over an in-memory grid, as a TSDB answers it: the series with a
    sample in the range, sorted by labels, NaN where there is none. Records the ranges."""

    def __init__(self, labels: list[dict[str, str]], timestamps: np.ndarray, values: np.ndarray) -> None:
        self.labels, self.timestamps, self.values = labels, timestamps, values
        self.ranges: list[tuple[int, int]] = []

    def query_range(self, query: str, *, start_ms: int, end_ms: int, step_ms: int) -> SeriesMatrix:
        self.ranges.append((start_ms, end_ms))
        start = start_ms // step_ms * step_ms
        grid = np.arange(start, end_ms + 1, step_ms, dtype=np.int64)
        columns = np.searchsorted(self.timestamps, grid)
        values = self.values[:, columns]
        rows = sorted(
            (i for i in range(len(self.labels)) if np.isfinite(values[i]).any()),
            key=lambda i: tuple(sorted(self.labels[i].items())),
        )
        return SeriesMatrix(tuple(self.labels[i] for i in rows), grid, values[rows])

    def sample_times(self, selector, *, start_ms, end_ms):  # the TSDBClient protocol
        raise NotImplementedError

    def remote_write(self, series) -> int:
        raise NotImplementedError


def _pipeline() -> Pipeline:
    schedule = {"infer_every": "5m", "context": "1h"}
    return Pipeline(name="p", query="m", step="1m", model="mad", schedule=schedule)


def _tsdb(n: int = 4, points: int = 300) -> _TSDB:
    stamps = np.arange(points, dtype=np.int64) * MIN
    values = np.random.default_rng(0).normal(size=(n, points))
    return _TSDB([{"__name__": "m", "host": f"h{i}"} for i in range(n)], stamps, values)


def _same(got: SeriesMatrix, want: SeriesMatrix) -> None:
    assert got.labels == want.labels
    np.testing.assert_array_equal(got.timestamps, want.timestamps)
    np.testing.assert_array_equal(got.values, want.values)  # NaN where NaN


def _windows(cache: ContextCache, tsdb: _TSDB, ends: Iterable[int]) -> None:
    pipeline = _pipeline()
    for end in ends:
        got = cache.query_block(tsdb, pipeline, start_ms=end - EVERY, end_ms=end)
        _same(got, query_block(tsdb, pipeline, start_ms=end - EVERY, end_ms=end))


def test_each_window_fetches_only_its_last_stretch_and_equals_a_full_fetch() -> None:
    tsdb = _tsdb()
    cache = ContextCache(JobOptions().context_cache_mb * 2**20)
    pipeline = _pipeline()
    ends = range(100 * MIN, 200 * MIN, EVERY)
    for end in ends:
        tsdb.ranges.clear()
        block = cache.query_block(tsdb, pipeline, start_ms=end - EVERY, end_ms=end)
        full = query_block(tsdb, pipeline, start_ms=end - EVERY, end_ms=end)
        _same(block, full)
        fetched = tsdb.ranges[0]
        if end == ends[0]:
            assert fetched == tsdb.ranges[1], "the first window fetches its whole context"
        else:
            assert fetched[0] == end - EVERY - EVERY - LOOKBACK_MS, "one window and the lookback before"
    assert not block.values.flags.writeable


def test_series_that_appear_stop_or_arrive_late_give_a_full_fetch_block() -> None:
    tsdb = _tsdb(n=5)
    tsdb.values[4, :150] = np.nan  # h4 appears at minute 150
    tsdb.values[3, 120:] = np.nan  # h3 stops at minute 120, then leaves the 1 h context
    tsdb.values[:, 160:180:7] = np.nan  # gaps
    cache = ContextCache(2**30)
    _windows(cache, tsdb, range(100 * MIN, 240 * MIN, EVERY))
    # A sample that lands late but within the re-read stretch is seen; one older is not.
    _windows(cache, tsdb, range(240 * MIN, 245 * MIN, EVERY))
    tsdb.values[0, 238] = 99.0  # 2 minutes before the last window's end: within the stretch
    _windows(cache, tsdb, range(245 * MIN, 250 * MIN, EVERY))
    tsdb.values[0, 200] = 99.0  # 49 minutes back: only a full fetch sees it
    pipeline = _pipeline()
    kept = cache.query_block(tsdb, pipeline, start_ms=250 * MIN - EVERY, end_ms=250 * MIN)
    full = query_block(tsdb, pipeline, start_ms=250 * MIN - EVERY, end_ms=250 * MIN)
    assert kept.values[0, 200 - int(kept.timestamps[0] // MIN)] != 99.0
    assert full.values[0, 200 - int(full.timestamps[0] // MIN)] == 99.0


@pytest.mark.parametrize("ends", [[150, 140], [150, 150], [150, 250], [150, 155]])
def test_a_retried_older_or_distant_window_is_right_too(ends: list[int]) -> None:
    tsdb = _tsdb()
    _windows(ContextCache(2**30), tsdb, [e * MIN for e in ends])


def test_blocks_beyond_the_bound_are_not_kept_and_forget_drops_pipelines() -> None:
    tsdb = _tsdb()
    pipeline = _pipeline()
    small = ContextCache(max_bytes=100)  # less than one block
    for end in (100 * MIN, 105 * MIN):
        tsdb.ranges.clear()
        small.query_block(tsdb, pipeline, start_ms=end - EVERY, end_ms=end)
        assert tsdb.ranges == [(end - EVERY - 59 * MIN, end)]  # the whole context, every time
    none = ContextCache(JobOptions(context_cache_mb=0).context_cache_mb * 2**20)
    none.query_block(tsdb, pipeline, start_ms=95 * MIN, end_ms=100 * MIN)
    tsdb.ranges.clear()
    none.query_block(tsdb, pipeline, start_ms=100 * MIN, end_ms=105 * MIN)
    assert tsdb.ranges == [(41 * MIN, 105 * MIN)]
    cache = ContextCache(2**30)
    cache.query_block(tsdb, pipeline, start_ms=95 * MIN, end_ms=100 * MIN)
    cache.forget(["other"])
    tsdb.ranges.clear()
    cache.query_block(tsdb, pipeline, start_ms=100 * MIN, end_ms=105 * MIN)
    assert tsdb.ranges == [(41 * MIN, 105 * MIN)]
    with pytest.raises(ValueError, match="context_cache_mb"):
        JobOptions(context_cache_mb=-1)
