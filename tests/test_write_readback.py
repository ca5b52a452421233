"""The idempotent write reads back only the series it writes, in queries a TSDB accepts,
and only in a range an earlier run claimed."""

from __future__ import annotations

import re

import numpy as np

from openanomaly.core.config import Pipeline
from openanomaly.core.detect import Detection
from openanomaly.runtime.window import MATCHER_CHARS, WINDOW_MARKER, claim, label_matchers, write

STEP = 60_000


class _Recorder:
    """A TSDBClient that remembers the selectors it was asked about and what it was sent;
    every selector finds the sample times in ``stored``."""

    def __init__(self, stored: set[int] = frozenset()) -> None:
        self.selectors: list[str] = []
        self.sent: list = []
        self.stored = set(stored)

    def sample_times(self, selector: str, *, start_ms: int, end_ms: int):
        self.selectors.append(selector)
        return {frozenset({("__name__", "x")}): self.stored} if self.stored else {}

    def remote_write(self, series) -> int:
        self.sent.append(series)
        return int(np.isfinite(series.values).sum())


def _detection(labels: list[dict[str, str]]) -> Detection:
    n = len(labels)
    stamps = np.array([STEP, 2 * STEP])
    ones = np.ones((n, 2))
    return Detection(tuple(labels), stamps, ones, ones, ones, ones, ones)


def _values(matcher: str) -> list[str]:
    """The alternatives of one ``name=~"a|b"`` matcher, unescaped (PromQL string, then RE2)."""
    body = matcher.split('=~"', 1)[1][:-1].replace("\\\\", "\\")
    return [re.sub(r"\\(.)", r"\1", part) for part in re.split(r"(?<!\\)\|", body)]


def test_a_block_reads_back_its_own_series_only() -> None:
    pipeline = Pipeline(name="p", query="m", model="mad")
    client = _Recorder()
    block = [{"__name__": "m", "instance": f"host-{i}", "job": "j"} for i in range(3)]
    written, present = write(client, pipeline, _detection(block))
    assert (written, present) == (4 * 3 * 2, 0)
    assert client.selectors == ['{for="p", model="mad", instance=~"host-0|host-1|host-2"}']


def test_matchers_stay_short_and_match_exactly_the_values() -> None:
    values = [f"pod-{i:05d}.ns (a|b)*" for i in range(2000)]
    matchers = label_matchers("pod", values, missing=True)
    assert len(matchers) > 1
    assert all(len(m) < MATCHER_CHARS + 50 for m in matchers)
    assert [v for m in matchers for v in _values(m)] == ["", *values]  # "": series without the label
    # As the TSDB reads it: the PromQL string unescaped, then the RE2 pattern, anchored.
    pattern = matchers[0].split('=~"', 1)[1][:-1].replace("\\\\", "\\")
    members = _values(matchers[0])
    assert all(re.fullmatch(pattern, value) for value in members)
    assert not re.fullmatch(pattern, "pod-00000.ns ab") and not re.fullmatch(pattern, "pod-00000xns (a|b)*")


def test_too_many_series_for_a_few_matchers_read_everything_once() -> None:
    pipeline = Pipeline(name="p", query="m", model="mad")
    client = _Recorder()
    block = [{"instance": f"a-very-long-instance-name-{i:06d}"} for i in range(3000)]
    write(client, pipeline, _detection(block))
    assert client.selectors == ['{for="p", model="mad"}']


def test_a_claim_marks_each_grid_point_once_and_says_whether_any_was_marked() -> None:
    pipeline = Pipeline(name="p", query="m", model="mad", step="1m", output={"extra_labels": {"team": "a"}})
    fresh = _Recorder()
    assert claim(fresh, pipeline, start_ms=0, end_ms=3 * STEP) is True
    assert fresh.selectors == ['{__name__="openanomaly_window", model="mad", pipeline="p", team="a"}']
    (marker,) = fresh.sent
    assert marker.labels == ({"team": "a", "pipeline": "p", "model": "mad", "__name__": WINDOW_MARKER},)
    assert marker.timestamps.tolist() == [STEP, 2 * STEP, 3 * STEP]
    # Prometheus 2 returns a sample at the range's start too: it does not count.
    edge = _Recorder(stored={0})
    assert claim(edge, pipeline, start_ms=0, end_ms=STEP) is True
    assert edge.sent[0].timestamps.tolist() == [STEP]
    # An overlapping range: claimed before; only its unmarked points are added.
    retried = _Recorder(stored={STEP, 2 * STEP})
    assert claim(retried, pipeline, start_ms=STEP, end_ms=4 * STEP) is False
    assert retried.sent[0].timestamps.tolist() == [3 * STEP, 4 * STEP]
    done = _Recorder(stored={STEP, 2 * STEP})
    assert claim(done, pipeline, start_ms=0, end_ms=2 * STEP) is False and done.sent == []


def test_a_fresh_range_is_written_without_reading_back() -> None:
    pipeline = Pipeline(name="p", query="m", model="mad")
    client = _Recorder()
    block = [{"__name__": "m", "instance": f"host-{i}"} for i in range(3)]
    assert write(client, pipeline, _detection(block), fresh=True) == (4 * 3 * 2, 0)
    assert client.selectors == []
