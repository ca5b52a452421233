"""The Numenta Anomaly Benchmark (NAB v1.1) scoring method, from its published description.

Why this exists: NAB rewards what an on-call engineer wants, an *early* alert inside a
labelled anomaly window and few alerts elsewhere, so it is the headline number for
OpenAnomaly's detector. Implemented from Lavin & Ahmad (2015) / Ahmad et al. (2017) and
the NAB README, in our own code:

* Each file has anomaly windows ``[start, end]`` (row indices, both inclusive).
* The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows are *probationary*: detections
  there are ignored and windows get no credit or penalty for them.
* A *detection* is a row whose anomaly score is ``>= threshold`` (NaN never detects).
* Inside window ``j`` (width ``W`` rows, last row ``e``) a detection at row ``i`` is worth
  ``tp_weight * sigma(-(e - i + 1) / W) / sigma(-1)`` where
  ``sigma(x) = 2 / (1 + exp(5 x)) - 1`` is the scaled sigmoid: the first row of the
  window earns exactly ``tp_weight``, the last row almost nothing. Only the best
  (earliest) detection of a window counts; a window with no detection costs
  ``-fn_weight``.
* Outside windows every detection row costs ``fp_weight * sigma(d)``, with
  ``d = (i - e_prev) / (W_prev - 1)`` measured from the preceding window (so an alert
  just after a window costs almost nothing) and ``sigma(d) = -1`` when ``d >= 3`` or no
  window precedes it.
* Raw corpus score = sum over files. Normalised score
  ``100 * (raw - null) / (perfect - null)``: the null detector (no detections) scores
  0 and a detector hitting every window on its first row scores 100;
  ``perfect = n_windows * tp_weight``.
* NAB picks, per profile, the single threshold that maximises the raw score summed over
  *all* files (its optimiser sweeps every distinct anomaly score). ``optimise_threshold``
  does the same exhaustively; the benchmark also reports the score at OpenAnomaly's own
  production threshold (``anomaly_score > 1``) so nothing hides behind the tuning.

Profiles (NAB ``config/profiles.json``): ``standard`` (tp 1, fp 0.11, fn 1),
``reward_low_FP_rate`` (fp 0.22), ``reward_low_FN_rate`` (fn 2).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from openanomaly.errors import DataError

__all__ = [
    "PRODUCTION_THRESHOLD",
    "PROFILES",
    "NabFile",
    "NabProfile",
    "ThresholdResult",
    "file_score",
    "load_nab_corpus",
    "normalised_score",
    "optimise_threshold",
    "probationary_length",
    "scaled_sigmoid",
    "score_at_threshold",
    "sweep_weights",
]

PRODUCTION_THRESHOLD = float(np.nextafter(1.0, 2.0))
"""OpenAnomaly alerts on ``anomaly_score > 1``; as an inclusive NAB threshold: the next float above 1."""

PROBATION_PERCENT = 0.15


@dataclass(frozen=True)
class NabProfile:
    """Weights of one NAB application profile."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile("standard", 1.0, 0.11, 1.0),
    "reward_low_fp": NabProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    "reward_low_fn": NabProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
}


@dataclass(frozen=True)
class NabFile:
    """One labelled NAB series.

    Attributes:
        path: the file's key in the labels JSON, relative to the data folder
            (``"realKnownCause/nyc_taxi.csv"``).
        timestamps: int64 ms since the epoch (UTC), shape ``(n,)``, in file order.
        values: float64 ``(n,)``.
        windows: int64 ``(k, 2)`` row indices ``[start, end]``, both inclusive, sorted.
    """

    path: str
    timestamps: np.ndarray
    values: np.ndarray
    windows: np.ndarray

    @property
    def category(self) -> str:
        """The folder part of ``path`` (``realKnownCause``), NAB's grouping."""
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


def _parse_time(text: str, *, where: str) -> int:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise DataError(f"{where}: bad timestamp {text!r}") from error
    return round(moment.replace(tzinfo=UTC).timestamp() * 1000)


def load_nab_corpus(data_dir: str | Path, labels: str | Path) -> list[NabFile]:
    """Read every file named in a NAB labels JSON (keys relative to ``data_dir``).

    Window edges must match row timestamps exactly, as in NAB.

    Raises:
        DataError: a labelled file is missing, unparsable, or a window edge matches no row.
    """
    data_dir = Path(data_dir)
    with open(labels, encoding="utf-8") as handle:
        table: Mapping[str, Sequence[Sequence[str]]] = json.load(handle)
    corpus = []
    for key in sorted(table):
        path = data_dir / key
        if not path.is_file():
            raise DataError(f"labels {labels}: file {key!r} not found under {data_dir}")
        stamps: list[int] = []
        values: list[float] = []
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
                raise DataError(f"{path}: expected header 'timestamp,value', got {header!r}")
            for line, row in enumerate(reader, start=2):
                stamps.append(_parse_time(row[0], where=f"{path}:{line}"))
                try:
                    values.append(float(row[1]))
                except (IndexError, ValueError) as error:
                    raise DataError(f"{path}:{line}: bad value in {row!r}") from error
        timestamps = np.asarray(stamps, dtype=np.int64)
        index = {int(t): i for i, t in enumerate(timestamps)}
        windows = []
        for start, end in table[key]:
            edges = []
            for edge in (start, end):
                row_index = index.get(_parse_time(edge, where=f"labels {labels}"))
                if row_index is None:
                    raise DataError(f"labels {labels}: window edge {edge!r} matches no row of {key!r}")
                edges.append(row_index)
            windows.append(edges)
        window_array = np.asarray(sorted(windows), dtype=np.int64).reshape(-1, 2)
        corpus.append(NabFile(key, timestamps, np.asarray(values, dtype=np.float64), window_array))
    return corpus


def probationary_length(n_rows: int) -> int:
    """Rows at the start of a file that NAB does not score: ``min(floor(0.15 n), 750)``."""
    return int(min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_PERCENT * 5000))


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's ``2 / (1 + exp(5 x)) - 1``, and exactly -1 for ``x >= 3`` (far past a window)."""
    x = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x >= 3.0, -1.0, value)


_MAX_TP = float(scaled_sigmoid(-1.0))


def sweep_weights(n_rows: int, windows: np.ndarray, profile: NabProfile) -> tuple[np.ndarray, np.ndarray]:
    """What a detection at each row would be worth, and which window it falls in.

    Returns:
        ``(weight, window_id)``, both ``(n_rows,)``: ``weight`` is the weighted sweep score
        (positive inside windows, negative outside); ``window_id`` is the window's index,
        ``-1`` outside every window and ``-2`` in the probationary period (not scored).
    """
    weight = np.empty(n_rows)
    window_id = np.full(n_rows, -1, dtype=np.int64)
    rows = np.arange(n_rows)
    previous_end: int | None = None
    previous_width = 0
    cursor = 0
    for j, (start, end) in enumerate(np.asarray(windows, dtype=np.int64).reshape(-1, 2)):
        start, end = int(start), int(end)
        if end < start or start < cursor:
            raise DataError(f"windows must be sorted and disjoint, got {windows.tolist()}")
        _fill_outside(weight, rows, cursor, start, previous_end, previous_width, profile)
        width = end - start + 1
        inside = rows[start : end + 1]
        weight[start : end + 1] = scaled_sigmoid(-(end - inside + 1) / width) * profile.tp_weight / _MAX_TP
        window_id[start : end + 1] = j
        previous_end, previous_width, cursor = end, width, end + 1
    _fill_outside(weight, rows, cursor, n_rows, previous_end, previous_width, profile)
    window_id[: probationary_length(n_rows)] = -2
    return weight, window_id


def _fill_outside(
    weight: np.ndarray,
    rows: np.ndarray,
    start: int,
    stop: int,
    previous_end: int | None,
    previous_width: int,
    profile: NabProfile,
) -> None:
    if stop <= start:
        return
    if previous_end is None or previous_width <= 1:
        weight[start:stop] = -profile.fp_weight
        return
    distance = np.abs(previous_end - rows[start:stop]) / (previous_width - 1)
    weight[start:stop] = scaled_sigmoid(distance) * profile.fp_weight


def file_score(
    scores: np.ndarray, windows: np.ndarray, threshold: float, profile: NabProfile
) -> tuple[float, int, int]:
    """Raw NAB score of one file at one threshold.

    Args:
        scores: float ``(n,)`` anomaly scores; NaN never detects.
        windows: int ``(k, 2)`` inclusive row windows.
        threshold: a row with ``score >= threshold`` is a detection.

    Returns:
        ``(raw_score, n_windows_detected, n_false_positive_rows)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weight, window_id = sweep_weights(scores.size, windows, profile)
    with np.errstate(invalid="ignore"):
        detected = ~np.isnan(scores) & (scores >= threshold)
    fp_rows = detected & (window_id == -1)
    total = float(weight[fp_rows].sum())
    hits = 0
    for j in np.unique(window_id[window_id >= 0]):
        in_window = detected & (window_id == j)
        if in_window.any():
            total += float(weight[in_window].max())
            hits += 1
        else:
            total -= profile.fn_weight
    return total, hits, int(fp_rows.sum())


def _null_score(n_rows: int, windows: np.ndarray, profile: NabProfile) -> float:
    _, window_id = sweep_weights(n_rows, windows, profile)
    return -profile.fn_weight * np.unique(window_id[window_id >= 0]).size


def normalised_score(raw: float, *, null: float, n_windows: int, profile: NabProfile) -> float:
    """``100 * (raw - null) / (perfect - null)`` with ``perfect = n_windows * tp_weight``."""
    perfect = n_windows * profile.tp_weight
    if perfect == null:
        raise DataError("cannot normalise a NAB score over a corpus with no scorable windows")
    return 100.0 * (raw - null) / (perfect - null)


@dataclass(frozen=True)
class ThresholdResult:
    """A corpus score at one threshold.

    Attributes:
        threshold: detections are ``score >= threshold``.
        raw: raw score summed over the files.
        normalised: 0 = null detector, 100 = perfect.
        per_file: raw score of each file, in corpus order.
        null_per_file: the null detector's raw score of each file (for sub-corpus normalisation).
        windows_detected: windows with at least one detection.
        false_positive_rows: detection rows outside windows (after probation).
    """

    threshold: float
    raw: float
    normalised: float
    per_file: tuple[float, ...]
    null_per_file: tuple[float, ...]
    windows_detected: int
    false_positive_rows: int


def score_at_threshold(
    scores: Sequence[np.ndarray], windows: Sequence[np.ndarray], threshold: float, profile: NabProfile
) -> ThresholdResult:
    """Score a corpus (one scores array per file, aligned with ``windows``) at one threshold."""
    if len(scores) != len(windows):
        raise ValueError(f"{len(scores)} score arrays for {len(windows)} window lists")
    parts = [file_score(s, w, threshold, profile) for s, w in zip(scores, windows, strict=True)]
    nulls = tuple(_null_score(np.asarray(s).size, w, profile) for s, w in zip(scores, windows, strict=True))
    raw = sum(p[0] for p in parts)
    n_windows = sum(np.asarray(w).reshape(-1, 2).shape[0] for w in windows)
    return ThresholdResult(
        threshold=threshold,
        raw=raw,
        normalised=normalised_score(raw, null=sum(nulls), n_windows=n_windows, profile=profile),
        per_file=tuple(p[0] for p in parts),
        null_per_file=nulls,
        windows_detected=sum(p[1] for p in parts),
        false_positive_rows=sum(p[2] for p in parts),
    )


def _score_steps(scores: np.ndarray, windows: np.ndarray, profile: NabProfile) -> tuple[np.ndarray, ...]:
    """One file's raw score as a step function of the threshold.

    Returns ``(values, deltas, base)``: lowering the threshold to ``values[i]``
    (descending) adds ``deltas[i]`` to the score; ``base`` is the score when nothing is
    detected. Linear in the file's rows, so the corpus sweep is one sort, not one pass
    per distinct score.
    """
    weight, window_id = sweep_weights(scores.size, windows, profile)
    finite = np.nan_to_num(scores, nan=-np.inf)
    scored = (window_id != -2) & np.isfinite(finite)
    values, ids, weights = finite[scored], window_id[scored], weight[scored]
    order = np.argsort(-values, kind="stable")
    values, ids, weights = values[order], ids[order], weights[order]
    # curve[i]: the raw score when the first i rows of this descending order are detected.
    curve = np.concatenate([[0.0], np.cumsum(np.where(ids == -1, weights, 0.0))])
    present = np.unique(window_id[window_id >= 0])
    for j in present:
        best = np.maximum.accumulate(np.where(ids == j, weights, -np.inf))
        curve = curve + np.maximum(np.concatenate([[-np.inf], best]), -profile.fn_weight)
    return values, np.diff(curve), float(curve[0])


def optimise_threshold(
    scores: Sequence[np.ndarray], windows: Sequence[np.ndarray], profile: NabProfile
) -> ThresholdResult:
    """The threshold that maximises the raw score summed over all files, as NAB does.

    Candidates are every distinct finite score (after probation) plus ``+inf`` (detect
    nothing); ties go to the highest threshold (fewest alerts).
    """
    pooled = [np.asarray(s, dtype=np.float64) for s in scores]
    steps = [
        _score_steps(s, np.asarray(w).reshape(-1, 2), profile) for s, w in zip(pooled, windows, strict=True)
    ]
    values = np.concatenate([[np.inf], *(v for v, _, _ in steps)])
    deltas = np.concatenate([[0.0], *(d for _, d, _ in steps)])
    order = np.argsort(-values, kind="stable")
    values = values[order]
    running = sum(base for _, _, base in steps) + np.cumsum(deltas[order])
    # A threshold detects every row at or above it: read the sum after the last tie.
    last = np.flatnonzero(np.concatenate([values[1:] != values[:-1], [True]]))
    candidates, total = values[last], running[last]
    best = np.flatnonzero(total >= total.max() - 1e-12)[0]  # candidates descend: the highest
    return score_at_threshold(pooled, windows, float(candidates[best]), profile)
