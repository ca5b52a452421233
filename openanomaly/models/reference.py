"""The robust seasonal reference forecast: what "usual" means for a series, from its own past.

It is both the ``default`` model's forecast and the yardstick of the calibration stage
(:mod:`openanomaly.core.calibration`), so the residual record that sets every model's alert
threshold is the error of one readable forecaster. Pure numpy, no state: the forecast
of a column depends only on the columns before its *anchor* (the first column not yet
seen), so a scheduled window and a year-long backtest compute the same numbers.

Candidates, each a one-step (or, for a chunk, anchored) forecast:

* **level**: the median of the ``LEVEL_WINDOW`` points before the anchor;
* **daily / weekly** (where at least two seasons fit the history): the median of the
  same phase over up to ``SEASONS`` past seasons (only phases before the anchor), plus
  the median of the last ``LEVEL_WINDOW`` deviations from that profile before the
  anchor, so a level shift is followed within a few points.

Per series and chunk the candidate with the smallest squared residuals over the record
wins (squares: a profile that misses the daily jump by a little every day loses to one that
predicts it); a seasonal one must be ``SEASONAL_MARGIN`` better, so noise does not flip between
them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "LEVEL_WINDOW",
    "SEASONAL_MARGIN",
    "SEASONS",
    "Candidates",
    "Periods",
    "candidate_forecasts",
    "choose",
    "median",
    "seasonal_periods",
    "window_sums",
]

LEVEL_WINDOW = 6
"""Points in the level median and in the seasonal level correction: short enough to follow
a shift within a few points, long enough that one outlier does not move the median."""

SEASONS = 5
"""Past days (or weeks) in the seasonal median: a median of five ignores two odd days."""

SEASONAL_MARGIN = 0.9
"""A seasonal candidate wins only when its residuals are at least 10 % smaller than the level's."""

_DAY_S = 86_400


class Candidates(NamedTuple):
    """The candidates' forecasts ``(c, n, t)`` and their periods (0 = the level)."""

    forecast: np.ndarray
    periods: tuple[int, ...]


def median(windows: np.ndarray) -> np.ndarray:
    """Median along the last axis of the finite values (NaN where none), exact for identical
    windows: NaN and infinities are gaps, as they are everywhere in the stage."""
    ordered = np.sort(windows, axis=-1)  # NaN sort last
    size = ordered.shape[-1]
    if size == 0:
        return np.full(ordered.shape[:-1], np.nan)
    out = np.asarray(0.5 * (ordered[..., (size - 1) // 2] + ordered[..., size // 2]))  # no gap
    gaps = ~(np.isfinite(ordered[..., 0]) & np.isfinite(ordered[..., -1]))  # sorted: ends say all
    if gaps.any():
        part = ordered[gaps]  # (k, size): the windows with a gap, whose middle moves
        count = np.isfinite(part).sum(axis=-1)
        below = (part == -np.inf).sum(axis=-1)  # sorted first, before the finite values
        low = np.take_along_axis(part, np.maximum(below + (count - 1) // 2, 0)[:, None], axis=-1)[:, 0]
        high = np.take_along_axis(part, np.minimum(below + count // 2, size - 1)[:, None], axis=-1)[:, 0]
        out[gaps] = np.where(count > 0, 0.5 * (low + high), np.nan)
    return out


Periods = tuple[tuple[int, int], ...]
"""``(period, seasons)`` of each seasonal candidate, in points."""


def seasonal_periods(step_s: float, room: int) -> Periods:
    """The daily and weekly candidates whose look-back (seasons and level correction) fits ``room``.

    A candidate needs at least two seasons; it takes up to ``SEASONS``.
    """
    day = round(_DAY_S / step_s)
    out = []
    for period in (day, 7 * day):
        seasons = min(SEASONS, (room - LEVEL_WINDOW) // period) if period >= 2 else 0
        if seasons >= 2:
            out.append((period, seasons))
    return tuple(out)


def _take(x: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``x[:, columns]`` with NaN for columns before 0 (``columns`` of any shape)."""
    safe = np.maximum(columns, 0)
    return np.where(columns >= 0, x[:, safe], np.nan)


def candidate_forecasts(
    x: np.ndarray, targets: np.ndarray, anchors: np.ndarray, periods: Periods
) -> Candidates:
    """Each candidate's forecast of columns ``targets`` from the columns before ``anchors``.

    Args:
        x: float ``(n, m)``, NaN = no sample.
        targets: int ``(t,)`` columns to forecast.
        anchors: int ``(t,)``, ``anchors <= targets``: the first column not seen for each
            target (``anchors == targets``: one step ahead).
        periods: the seasonal candidates (:func:`seasonal_periods`).

    Returns:
        :class:`Candidates`, the level first; NaN where a candidate has nothing to go on.
    """
    w = LEVEL_WINDOW
    if targets.size == 0:
        return Candidates(np.full((1 + len(periods), x.shape[0], 0), np.nan), (0, *(p for p, _ in periods)))
    # The columns whose values the anchors read, each computed once: the w points before
    # every anchor, and (for a seasonal candidate) their one-step profile and deviation.
    first = int(anchors.min()) - w
    span = np.arange(first, int(anchors.max()))
    recent = anchors[:, None] - w + np.arange(w)[None, :] - first  # (t, w) into span
    seen = _take(x, span)  # (n, S)
    out = [median(seen[:, recent])]
    for period, seasons in periods:
        lags = np.arange(1, seasons + 1) * period
        one_step = median(_take(x, span[:, None] - lags[None, :]))  # (n, S)
        correction = median((seen - one_step)[:, recent])  # (n, t): the level correction
        phase = targets[:, None] - lags[None, :]  # (t, K): only phases before the anchor
        profile = median(np.where(phase < anchors[:, None], _take(x, phase), np.nan))
        out.append(profile + np.nan_to_num(correction))
    return Candidates(np.stack(out), (0, *(period for period, _ in periods)))


def window_sums(values: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """``out[..., j] = sum(values[..., ends[j] - size : ends[j]])``, summed window by window.

    Each window is summed on its own (not as a difference of running sums), so a chunk
    gets the same bits whether it is computed alone or in a long backtest.
    """
    views = np.lib.stride_tricks.sliding_window_view(values, size, axis=-1)
    out = np.empty((*values.shape[:-1], ends.size))
    block = max(1, 2_000_000 // max(1, size * int(np.prod(values.shape[:-1]))))
    for lo in range(0, ends.size, block):
        out[..., lo : lo + block] = views[..., ends[lo : lo + block] - size, :].sum(axis=-1)
    return out


def choose(size: np.ndarray, valid: np.ndarray, ends: np.ndarray, record: int) -> np.ndarray:
    """Per series and chunk, the candidate with the least mean squared residual over its ``record``.

    A candidate that forecast fewer than half the samples the level did (a season not yet
    seen) is not chosen.

    Args:
        size: ``(c, n, m)`` each candidate's one-step |residual| (0 where none).
        valid: ``(c, n, m)`` where a candidate forecast a sample.
        ends: int ``(k,)`` the column after each chunk's record (its first point).
        record: columns in the record.

    Returns:
        int ``(n, k)`` indices into the candidates (ties: the level).
    """
    c, n = size.shape[:2]
    if c == 1 or record == 0:
        return np.zeros((n, ends.size), dtype=np.int64)
    seen = window_sums(valid.astype(np.float64), ends, record)
    with np.errstate(invalid="ignore", divide="ignore"):
        fit = window_sums(size * size, ends, record) / seen
    fit = np.where((seen > 0) & (2 * seen >= seen[:1]), fit, np.inf)
    fit[0] *= SEASONAL_MARGIN
    return np.argmin(fit, axis=0)
