"""The idempotent write reads back only the series it writes, in queries a TSDB accepts."""

from __future__ import annotations

import re

import numpy as np

from openanomaly.core.config import Pipeline
from openanomaly.core.detect import Detection
from openanomaly.runtime.window import MATCHER_CHARS, label_matchers, write

STEP = 60_000


class _Recorder:
    """A TSDBClient that stores nothing and remembers the selectors it was asked about."""

    def __init__(self) -> None:
        self.selectors: list[str] = []

    def sample_times(self, selector: str, *, start_ms: int, end_ms: int):
        self.selectors.append(selector)
        return {}

    def remote_write(self, series) -> int:
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
