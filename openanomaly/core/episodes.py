"""Anomaly episodes: runs of consecutive points scoring above 1, and how they match labels.

A person reads alerts as incidents, not points: ten flagged points in a row are one
page. The CLI's backtest and example reports, and the playground's table, list
episodes; :func:`check_labels` counts them against labelled anomaly windows (NAB's
layout) so a first run shows its false alarms next to its detections.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

import numpy as np

from openanomaly.core.series import format_labels

if TYPE_CHECKING:
    from openanomaly.core.detect import Detection

__all__ = [
    "Episode",
    "EpisodeCollector",
    "LabelCheck",
    "by_peak",
    "check_labels",
    "print_episodes",
    "print_label_check",
]


@dataclass
class Episode:
    """A run of consecutive anomalous points (score > 1) of one series of one pipeline."""

    pipeline: str
    series: str
    start_ms: int
    end_ms: int
    points: int
    max_score: float
    peak_ms: int
    peak_value: float


class EpisodeCollector:
    """Collects one pipeline's episodes batch by batch, merging runs that cross a batch edge."""

    def __init__(self, *, pipeline: str, step_ms: int) -> None:
        self.pipeline = pipeline
        self.step_ms = step_ms
        self.episodes: list[Episode] = []
        self._open: dict[str, Episode] = {}

    def add(self, detection: Detection) -> None:
        """Add the runs of score > 1 in ``detection`` (batches must come in time order)."""
        with np.errstate(invalid="ignore"):
            flags = detection.anomaly_score > 1
        ts = detection.timestamps
        for row in np.flatnonzero(flags.any(axis=1)):
            series = format_labels(detection.labels[row])
            hits = np.flatnonzero(flags[row])
            breaks = np.flatnonzero(np.diff(hits) > 1)
            for run in np.split(hits, breaks + 1):
                scores = detection.anomaly_score[row, run]
                peak = int(run[np.argmax(scores)])
                episode = Episode(
                    self.pipeline,
                    series,
                    int(ts[run[0]]),
                    int(ts[run[-1]]),
                    len(run),
                    float(scores.max()),
                    int(ts[peak]),
                    float(detection.actual[row, peak]),
                )
                previous = self._open.get(series)
                if previous is not None and previous.end_ms + self.step_ms == episode.start_ms:
                    previous.end_ms, previous.points = episode.end_ms, previous.points + episode.points
                    if episode.max_score > previous.max_score:
                        previous.max_score, previous.peak_ms = episode.max_score, episode.peak_ms
                        previous.peak_value = episode.peak_value
                    continue
                self.episodes.append(episode)
                self._open[series] = episode


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def by_peak(episodes: Sequence[Episode]) -> list[Episode]:
    """Highest peak score first (the order every report uses)."""
    return sorted(episodes, key=lambda e: e.max_score, reverse=True)


def print_episodes(
    episodes: Sequence[Episode], *, top: int, stream: TextIO | None = None, title: str = "anomaly episodes"
) -> None:
    """The ``top`` episodes by peak score as a table, one row per episode, pipeline first."""
    stream = stream or sys.stdout
    if not episodes:
        print(f"no {title} (no point scored above 1)", file=stream)
        return
    shown = by_peak(episodes)[:top]
    width = max(len("pipeline"), *(len(e.pipeline) for e in shown))
    print(f"top {len(shown)} of {len(episodes)} {title} (by peak score):", file=stream)
    print(
        f"  {'pipeline':<{width}} {'start (UTC)':<20} {'end (UTC)':<20} {'points':>6} {'peak':>8} "
        f"{'value':>12}  series",
        file=stream,
    )
    for e in shown:
        print(
            f"  {e.pipeline:<{width}} {_iso(e.start_ms):<20} {_iso(e.end_ms):<20} {e.points:>6} "
            f"{e.max_score:>8.2f} {e.peak_value:>12.6g}  {e.series}",
            file=stream,
        )


@dataclass(frozen=True)
class LabelCheck:
    """Episodes matched against labelled anomaly windows.

    An episode that overlaps a window detects it; one that overlaps none is a false
    alarm. Precision is per episode (what a person paged would see), recall per window.

    Attributes:
        windows: ``(start_ms, end_ms)`` of each labelled window, inclusive.
        hits: for each window, the episodes that overlap it.
        false_alarms: episodes outside every window.
    """

    windows: tuple[tuple[int, int], ...]
    hits: tuple[tuple[Episode, ...], ...]
    false_alarms: tuple[Episode, ...]

    @property
    def detected(self) -> int:
        return sum(1 for episodes in self.hits if episodes)

    @property
    def true_episodes(self) -> int:
        return len({id(e) for episodes in self.hits for e in episodes})

    @property
    def precision(self) -> float:
        """Episodes inside a window / all episodes (NaN when nothing alerted)."""
        total = self.true_episodes + len(self.false_alarms)
        return self.true_episodes / total if total else float("nan")

    @property
    def recall(self) -> float:
        """Windows with at least one episode / all windows (NaN when there are none)."""
        return self.detected / len(self.windows) if self.windows else float("nan")


def check_labels(episodes: Sequence[Episode], windows: Sequence[tuple[int, int]]) -> LabelCheck:
    """Match ``episodes`` against labelled ``windows`` (``(start_ms, end_ms)``, inclusive)."""
    spans = tuple((int(lo), int(hi)) for lo, hi in windows)
    hits = tuple(tuple(e for e in episodes if e.start_ms <= hi and e.end_ms >= lo) for lo, hi in spans)
    inside = {id(e) for matched in hits for e in matched}
    return LabelCheck(spans, hits, tuple(e for e in episodes if id(e) not in inside))


def print_label_check(check: LabelCheck, *, top: int, stream: TextIO | None = None) -> None:
    """Each window detected or missed, the false alarms, then precision and recall."""
    stream = stream or sys.stdout
    print("labelled anomaly windows:", file=stream)
    for (lo, hi), matched in zip(check.windows, check.hits, strict=True):
        if matched:
            peak = max(e.max_score for e in matched)
            verdict = f"detected by {len(matched)} episode(s), peak score {peak:.2f}"
        else:
            verdict = "missed"
        print(f"  {_iso(lo)} .. {_iso(hi)}: {verdict}", file=stream)
    if check.false_alarms:
        print_episodes(
            check.false_alarms, top=top, stream=stream, title="false alarms (outside every window)"
        )
    else:
        print("false alarms: none (no episode outside the windows)", file=stream)
    true, false = check.true_episodes, len(check.false_alarms)
    false_points = sum(e.points for e in check.false_alarms)
    print(
        f"precision {true}/{true + false} episodes = {check.precision:.2f}, "
        f"recall {check.detected}/{len(check.windows)} windows = {check.recall:.2f}; "
        f"{false_points} flagged points are false alarms",
        file=stream,
    )
