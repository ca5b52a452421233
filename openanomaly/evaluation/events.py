"""Event-wise recall, point-wise precision and their F1 (the "composite" F1): counting incidents.

Why events: one incident lasts many points, and a pager cares whether it fired for the
incident (recall over labelled windows). Why point-wise precision (Garg et al. 2021,
"composite F1"): counting alert *events* for precision lets a detector that alerts on
every row score a perfect 1.0 (one alert run per file, overlapping every window); per
row, it scores the labelled fraction of the data, as it should.

Definitions (pooled over files, so a file with many windows weighs more):

* an **alert event** is a maximal run of consecutive rows with ``score >= threshold``;
  it is a true alert when it overlaps a labelled window (reported, not used in F1);
* ``recall = windows overlapped by an alert / windows``;
* ``precision = alerting rows inside windows / alerting rows``;
* ``F1 = 2 P R / (P + R)`` (0 when both are 0).

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
    true_rows: int = 0
    alert_rows: int = 0

    @property
    def precision(self) -> float:
        return self.true_rows / self.alert_rows if self.alert_rows else 0.0

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
            self.true_rows + other.true_rows,
            self.alert_rows + other.alert_rows,
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
    # Rows labelled / alerting before each row, so every run and window is one subtraction.
    labelled_before = np.concatenate([[0], np.cumsum(labelled)])
    alert_before = np.concatenate([[0], np.cumsum(alert)])
    true_alerts = int(np.count_nonzero(labelled_before[runs[:, 1] + 1] > labelled_before[runs[:, 0]]))
    spans = np.asarray(kept, dtype=np.int64).reshape(-1, 2)
    hit = int(np.count_nonzero(alert_before[spans[:, 1] + 1] > alert_before[spans[:, 0]]))
    true_rows = int(np.count_nonzero(alert & labelled))
    return EventCounts(true_alerts, len(runs) - true_alerts, hit, len(kept), true_rows, int(alert.sum()))


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
    n_thresholds: int = 400,
) -> tuple[float, EventCounts]:
    """The corpus-wide threshold with the best pooled F1, searched from the lowest score up.

    Returns ``(threshold, counts)``. Candidates are every distinct finite score after
    ``starts`` when there are at most ``n_thresholds`` of them, else that many quantiles
    from the minimum to the maximum plus as many more in the top half, log-spaced toward
    the maximum (a bounded number of passes; alerts are a tiny top fraction of continuous
    scores, which an even grid steps over), plus ``+inf``.
    """
    pooled = np.concatenate(
        [np.asarray(s, dtype=np.float64)[first:] for s, first in zip(scores, starts, strict=True)]
    )
    distinct = np.unique(pooled[np.isfinite(pooled)])
    if distinct.size > n_thresholds:
        tail = 1 - np.geomspace(0.5, 1e-6, n_thresholds)
        levels = np.concatenate([np.linspace(0.0, 1.0, n_thresholds), tail])
        distinct = np.unique(np.quantile(distinct, levels))
    best_t, best = float("inf"), event_f1(scores, windows, float("inf"), starts=starts)
    for t in distinct:
        counts = event_f1(scores, windows, float(t), starts=starts)
        if counts.f1 > best.f1:
            best_t, best = float(t), counts
    return best_t, best
