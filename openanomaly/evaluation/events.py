"""Event-wise precision, recall and F1: counting incidents, not points.

Why events: one incident lasts many points, and a pager cares whether it fired for the
incident (recall over labelled windows) and how many of its alerts were about a real
incident (precision over alert events), not how many points were flagged.

Definitions (pooled over files, so a file with many windows weighs more):

* an **alert event** is a maximal run of consecutive rows with ``score >= threshold``;
* it is a true alert when it overlaps a labelled window, a false alert otherwise;
* ``precision = true alerts / all alerts``, ``recall = windows overlapped by an alert /
  windows``, ``F1 = 2 P R / (P + R)`` (0 when both are 0).

Rows before ``start`` (NAB's probationary period) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EventCounts", "best_event_f1", "event_counts", "event_f1"]


@dataclass(frozen=True)
class EventCounts:
    """Alert events and windows, summed over files."""

    true_alerts: int
    false_alerts: int
    windows_hit: int
    windows: int

    @property
    def precision(self) -> float:
        alerts = self.true_alerts + self.false_alerts
        return self.true_alerts / alerts if alerts else 0.0

    @property
    def recall(self) -> float:
        return self.windows_hit / self.windows if self.windows else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(
            self.true_alerts + other.true_alerts,
            self.false_alerts + other.false_alerts,
            self.windows_hit + other.windows_hit,
            self.windows + other.windows,
        )


def _runs(mask: np.ndarray) -> np.ndarray:
    """``(r, 2)`` inclusive ``[start, end]`` of each run of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return edges.reshape(-1, 2) - np.array([0, 1])


def event_counts(scores: np.ndarray, windows: np.ndarray, threshold: float, *, start: int = 0) -> EventCounts:
    """Alert events and window hits of one file.

    Args:
        scores: float ``(n,)``; NaN never alerts.
        windows: int ``(k, 2)`` inclusive row windows.
        threshold: rows with ``score >= threshold`` alert.
        start: rows before it are ignored (alerts and windows clipped to ``[start, n)``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        alert = ~np.isnan(scores) & (scores >= threshold)
    alert[:start] = False
    labelled = np.zeros(scores.size, dtype=bool)
    kept = []
    for s, e in np.asarray(windows, dtype=np.int64).reshape(-1, 2):
        s, e = max(int(s), start), int(e)
        if e >= s:
            labelled[s : e + 1] = True
            kept.append((s, e))
    runs = _runs(alert)
    true_alerts = sum(bool(labelled[s : e + 1].any()) for s, e in runs)
    hit = sum(bool(alert[s : e + 1].any()) for s, e in kept)
    return EventCounts(true_alerts, len(runs) - true_alerts, hit, len(kept))


def event_f1(
    scores: Sequence[np.ndarray], windows: Sequence[np.ndarray], threshold: float, *, starts: Sequence[int]
) -> EventCounts:
    """Pooled event counts of a corpus at one threshold (read ``.f1``, ``.precision``, ``.recall``)."""
    total = EventCounts(0, 0, 0, 0)
    for s, w, first in zip(scores, windows, starts, strict=True):
        total = total + event_counts(s, w, threshold, start=first)
    return total


def best_event_f1(
    scores: Sequence[np.ndarray],
    windows: Sequence[np.ndarray],
    *,
    starts: Sequence[int],
    n_thresholds: int = 200,
) -> tuple[float, EventCounts]:
    """The corpus-wide threshold (among score quantiles) with the best pooled event F1.

    Returns ``(threshold, counts)``. Candidate thresholds are ``n_thresholds`` quantiles of
    the pooled finite scores after ``starts``, so the search costs a bounded number of passes.
    """
    pooled = np.concatenate(
        [np.asarray(s, dtype=np.float64)[first:] for s, first in zip(scores, starts, strict=True)]
    )
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        return float("inf"), event_f1(scores, windows, float("inf"), starts=starts)
    candidates = np.unique(np.quantile(pooled, np.linspace(0.5, 1.0, n_thresholds)))
    best_t, best = float("inf"), event_f1(scores, windows, float("inf"), starts=starts)
    for t in candidates:
        counts = event_f1(scores, windows, float(t), starts=starts)
        if counts.f1 > best.f1:
            best_t, best = float(t), counts
    return best_t, best
