"""VUS-PR: the volume under the range-aware precision/recall surface (Paparrizos et al., VLDB 2022).

Why: a threshold-free score that forgives a detector for firing a little before or after
a labelled range, used by TSB-AD as its headline metric. Written from the published
description (and the TSB-AD ``RangeAUC_volume_opt`` procedure) in our own vectorised code:

For each buffer length ``w`` in ``0 … max_buffer``:

1. Soft labels: 1 inside each labelled range ``[s, e]``; in the ``w // 2`` rows after
   ``e`` the label is ``sqrt(1 - (x - e) / w)`` and in the ``w // 2`` rows before ``s``
   it is ``sqrt(1 - (s - x) / w)`` (summed where buffers overlap, capped at 1). A buffer
   row counts only when it is predicted.
2. Extended segments: each range grown by ``w // 2`` on both sides, overlapping ones merged.
3. At each of ``n_thresholds`` thresholds (the scores at evenly spaced ranks of the
   descending scores), with ``pred = score >= threshold``:
   ``TP = sum(range rows predicted) + sum(buffer labels of predicted buffer rows)``,
   ``P' = (P + P + predicted buffer mass) / 2``, ``recall = min(TP / P', 1)``,
   ``TPR = recall * (extended segments with any prediction / segments)``,
   ``precision = TP / predicted rows``.
4. ``AP(w) = sum_j (TPR_j - TPR_{j-1}) * precision_j`` with ``TPR_0 = 0``.

``VUS-PR = mean_w AP(w)``. TSB-AD calls it with ``max_buffer = 2 * sliding_window`` and
``sliding_window = 100`` by default, which is our default too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["vus_pr"]


def _ranges(labels: np.ndarray) -> np.ndarray:
    padded = np.concatenate([[False], labels.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return edges.reshape(-1, 2) - np.array([0, 1])


def vus_pr(
    labels: np.ndarray, scores: np.ndarray, *, max_buffer: int = 200, n_thresholds: int = 250
) -> float:
    """VUS-PR of one series.

    Args:
        labels: ``(n,)`` 0/1 (or bool) per-row anomaly labels; at least one 1.
        scores: ``(n,)`` anomaly scores, higher = more anomalous; NaN is treated as the lowest score.
        max_buffer: the largest buffer length ``w`` (TSB-AD: ``2 * sliding_window``).
        n_thresholds: thresholds per curve (TSB-AD: 250).

    Returns:
        VUS-PR in ``[0, 1]``.

    Raises:
        ValueError: lengths differ, or no row is labelled.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be the same 1-D shape")
    if not labels.any():
        raise ValueError("VUS-PR needs at least one labelled row")
    n = labels.size
    finite = np.isfinite(scores)
    floor = scores[finite].min() - 1.0 if finite.any() else 0.0
    scores = np.where(finite, scores, floor)
    ranges = _ranges(labels)
    positives = float(labels.sum())

    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    thresholds = sorted_scores[np.linspace(0, n - 1, n_thresholds).astype(int)]
    # Rows predicted at each threshold: all rows with score >= threshold.
    counts = np.searchsorted(-sorted_scores, -thresholds, side="right")
    in_range_cum = np.concatenate([[0.0], np.cumsum(labels[order])])
    rows = np.arange(n)

    aps = []
    for w in range(max_buffer + 1):
        half = w // 2
        buffer = np.zeros(n)
        segment = np.full(n, -1, dtype=np.int64)
        for s, e in ranges:
            if half:
                after = rows[e + 1 : min(e + half + 1, n)]
                buffer[after] += np.sqrt(1 - (after - e) / w)
                before = rows[max(s - half, 0) : s]
                buffer[before] += np.sqrt(1 - (s - before) / w)
        buffer = np.where(labels, 0.0, np.minimum(buffer, 1.0))
        # Extended segments, merged where they touch.
        grown = np.zeros(n, dtype=bool)
        for s, e in ranges:
            grown[max(s - half, 0) : min(e + half, n - 1) + 1] = True
        segs = _ranges(grown)
        for k, (s, e) in enumerate(segs):
            segment[s : e + 1] = k
        buffer_cum = np.concatenate([[0.0], np.cumsum(buffer[order])])
        tp = in_range_cum[counts] + buffer_cum[counts]
        p_new = (positives + positives + buffer_cum[counts]) / 2
        recall = np.minimum(tp / p_new, 1.0)
        # A segment "exists" at threshold t when its best score is >= t.
        seg_best = np.full(segs.shape[0], -np.inf)
        np.maximum.at(seg_best, segment[segment >= 0], scores[segment >= 0])
        existence = (seg_best[None, :] >= thresholds[:, None]).sum(axis=1) / segs.shape[0]
        tpr = recall * existence
        precision = tp / counts
        widths = np.diff(np.concatenate([[0.0], tpr]))
        aps.append(float(np.dot(widths, precision)))
    return float(np.mean(aps))
