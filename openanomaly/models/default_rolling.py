"""The ``default`` detector over many consecutive contexts of one series, incrementally.

A backtest asks :class:`~openanomaly.models.default.DefaultForecaster` for one forecast
per chunk, each from the ``context`` points before it: thousands of windows that differ
by a few points. Recomputing each from scratch (an FFT autocorrelation of the whole
context, medians over the history) cost ~1.5 ms per window, 25 minutes for SMD. This
module computes the same forecasts from the series itself:

* **Forward fill once.** A window's forward-filled values are the series' forward-filled
  values from its first sample on (NaN before it), so one pass serves every window.
* **Autocorrelation by update.** The lagged products ``sum y[a] * y[a + lag]`` of a window
  follow from the previous window's by removing the points that left and adding the ones
  that arrived (O(context / 2) per point instead of an FFT); an FFT restarts them every
  few hundred points so rounding cannot build up. The window mean enters through prefix
  sums. The result agrees with the FFT to rounding, not bit for bit, so every decision
  taken on it (peak, threshold, ranking) that lies within a rounding bound of flipping
  marks the window *fragile*, and fragile windows get their periods from the reference
  :func:`~openanomaly.models.default.candidate_periods`. The chosen periods, integers,
  are therefore the reference's.
* **Everything else exactly.** Baselines, residuals, record edge and range are computed per
  window in compiled loops with the reference's operations in the reference's order
  (medians as the mean of the two middle order statistics, numpy's pairwise sum for the
  RMS, sequential running sums), so they are bit-identical; a median whose inputs all lie
  after the window's first sample is computed once per series position and shared. The
  band is then assembled by the reference's own numpy code.

``tests/test_default_rolling.py`` checks the result against ``DefaultForecaster.forecast``
on flat, spiky, shifted, seasonal and gappy series; numba compiles the loops once and
caches them next to this file (or in the user's cache folder).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["rolling_periods", "rolling_rows"]

_BLOCK_UPDATES = 512
"""Points added or removed between two FFT restarts of the lagged products."""

_ROUNDING = 1e-15
"""A few float64 epsilons: the scale of one rounding error, relative to the magnitude."""


@njit(cache=True)
def _median(buffer: np.ndarray, size: int) -> float:
    """Median of ``buffer[:size]`` (finite values), sorted in place; NaN when empty.

    The reference's ``_nanmedian``: the mean of the two middle order statistics.
    """
    if size == 0:
        return np.nan
    for i in range(1, size):  # insertion sort: the windows hold a handful of values
        x = buffer[i]
        j = i - 1
        while j >= 0 and buffer[j] > x:
            buffer[j + 1] = buffer[j]
            j -= 1
        buffer[j + 1] = x
    return 0.5 * (buffer[(size - 1) // 2] + buffer[size // 2])


@njit(cache=True)
def _block_sum(values: np.ndarray, start: int, size: int) -> float:
    """numpy's summation of one block of at most 128 values (eight interleaved partial sums)."""
    if size < 8:
        total = 0.0
        for i in range(start, start + size):
            total += values[i]
        return total
    r = values[start : start + 8].copy()
    i = 8
    while i < size - (size % 8):
        for j in range(8):
            r[j] += values[start + i + j]
        i += 8
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < size:
        total += values[start + i]
        i += 1
    return total


@njit(cache=True)
def _pairwise_sum(values: np.ndarray, size: int) -> float:
    """numpy's pairwise summation of ``values[:size]`` (``np.sum`` along a row).

    Blocks of more than 128 values split in two (the first half a multiple of 8) and
    add the halves' sums; written with an explicit stack (numba caches no recursion).
    """
    starts = np.empty(64, dtype=np.int64)
    sizes = np.empty(64, dtype=np.int64)
    sums = np.empty(64)
    state = np.zeros(64, dtype=np.int64)  # 0: not split yet, 1: first half summed
    starts[0], sizes[0], depth = 0, size, 0
    result = 0.0
    while depth >= 0:
        n = sizes[depth]
        if n <= 128:
            result = _block_sum(values, starts[depth], n)
        elif state[depth] == 0:
            half = n // 2
            half -= half % 8
            state[depth] = 1
            starts[depth + 1], sizes[depth + 1], state[depth + 1] = starts[depth], half, 0
            depth += 1
            continue
        elif state[depth] == 1:
            half = n // 2
            half -= half % 8
            sums[depth] = result
            state[depth] = 2
            starts[depth + 1], sizes[depth + 1], state[depth + 1] = starts[depth] + half, n - half, 0
            depth += 1
            continue
        else:
            result = sums[depth] + result
        depth -= 1
    return result


@njit(cache=True)
def _block_periods(
    y: np.ndarray,
    cumulative: np.ndarray,
    run: np.ndarray,
    firsts: np.ndarray,
    ends: np.ndarray,
    products: np.ndarray,
    start_first: int,
    start_end: int,
    tolerance_scale: float,
    half: int,
    count: int,
    min_period: int,
    min_acf: float,
    min_prominence: float,
    periods: np.ndarray,
    fragile: np.ndarray,
) -> None:
    """Candidate periods of the windows ``[firsts[i], ends[i])`` of ``y``, updating ``products``.

    ``products[lag]`` holds ``sum y[a] * y[a + lag]`` over the window ``[start_first,
    start_end)`` on entry. ``tolerance_scale`` bounds the absolute rounding error of the
    lagged covariances; a decision closer than that (relative to the variance) to flipping
    marks the window fragile.
    """
    first, end = start_first, start_end
    acf = np.empty(half + 1)
    ok = np.zeros(half + 1, dtype=np.bool_)
    for i in range(len(ends)):
        new_first, new_end = firsts[i], ends[i]
        for a in range(first, new_first):  # points that left the window
            top = min(half, end - 1 - a)
            for lag in range(top + 1):
                products[lag] -= y[a] * y[a + lag]
        first = new_first
        for b in range(end, new_end):  # points that arrived
            top = min(half, b - first)
            for lag in range(top + 1):
                products[lag] += y[b - lag] * y[b]
        end = new_end
        size = end - first
        if size <= 0 or run[end - 1] >= size:  # empty or constant window: no season
            continue
        mean = (cumulative[end] - cumulative[first]) / size
        last = min(half - 1, size // 3)  # the longest period with three cycles in the window
        for lag in range(last + 2):
            if lag >= size:  # no pair of points that far apart
                acf[lag] = 0.0
                continue
            head = cumulative[end - lag] - cumulative[first]
            tail = cumulative[end] - cumulative[first + lag]
            acf[lag] = products[lag] - mean * (head + tail) + mean * mean * (size - lag)
        variance = acf[0]
        tolerance = 2.0 * tolerance_scale / variance if variance > 0 else np.inf
        if not tolerance < 0.01:
            fragile[i] = True
            continue
        for lag in range(1, last + 2):
            acf[lag] = acf[lag] / variance
        acf[0] = 1.0
        dip = 1.0
        ok[: last + 1] = False
        for lag in range(1, last + 1):
            dip = min(dip, acf[lag])
            if lag < min_period:
                continue
            margins = (
                acf[lag] - acf[lag - 1],
                acf[lag] - acf[lag + 1],
                acf[lag] - min_acf,
                acf[lag] - dip - min_prominence,
            )
            lowest = min(margins)
            if lowest <= -tolerance:
                continue
            closest = min(abs(margins[0]), abs(margins[1]), abs(margins[2]), abs(margins[3]))
            if closest < tolerance:
                fragile[i] = True
                break
            ok[lag] = margins[0] >= 0 and margins[1] > 0 and margins[2] >= 0 and margins[3] >= 0
        if fragile[i]:
            continue
        for j in range(count):
            best, best_value, runner_up = 0, -np.inf, -np.inf
            for lag in range(last + 1):
                if ok[lag]:
                    if acf[lag] > best_value:
                        best, runner_up, best_value = lag, best_value, acf[lag]
                    elif acf[lag] > runner_up:
                        runner_up = acf[lag]
            if best == 0:
                break
            if best_value - runner_up < tolerance:
                fragile[i] = True
                break
            periods[i, j] = best
            # the reference's exclusion of 1-4x the chosen period (within 2 %)
            for lag in range(last + 1):
                if not ok[lag]:
                    continue
                multiple = np.rint(lag / best)
                slack = max(1.0, 0.02 * lag)
                if 1 <= multiple <= 4 and abs(lag - multiple * best) <= slack:
                    ok[lag] = False


def _runs(values: np.ndarray) -> np.ndarray:
    """Length of the run of equal values ending at each position."""
    change = np.ones(values.size, dtype=bool)
    change[1:] = values[1:] != values[:-1]
    starts = np.maximum.accumulate(np.where(change, np.arange(values.size), 0))
    return np.arange(values.size) - starts + 1


def rolling_periods(
    filled: np.ndarray,
    firsts: np.ndarray,
    ends: np.ndarray,
    *,
    context: int,
    count: int,
    min_period: int,
    min_acf: float,
    min_prominence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate periods of the windows ``filled[firsts[i]:ends[i]]`` (ascending), and which are fragile.

    Args:
        filled: one series, forward-filled, finite from ``firsts.min()`` on.
        firsts, ends: int64 ``(k,)``, non-decreasing; ``ends - context <= firsts``.

    Returns:
        ``periods`` int64 ``(k, count)`` as :func:`~openanomaly.models.default.candidate_periods`
        would give for the windows that are not ``fragile`` (bool ``(k,)``): those the
        caller must compute with the reference.
    """
    k = len(ends)
    periods = np.zeros((k, count), dtype=np.int64)
    fragile = np.zeros(k, dtype=bool)
    half = context // 2
    block = 0
    while block < k:
        stop = block + 1
        moved = 0
        while stop < k and moved + (ends[stop] - ends[stop - 1]) + (firsts[stop] - firsts[stop - 1]) <= (
            _BLOCK_UPDATES
        ):
            moved += (ends[stop] - ends[stop - 1]) + (firsts[stop] - firsts[stop - 1])
            stop += 1
        lo, hi = int(firsts[block]), int(ends[stop - 1])
        first, end = int(firsts[block]), int(ends[block])
        if end > first:
            y = filled[lo:hi] - np.mean(filled[first:end])
            size = 1 << int(np.ceil(np.log2(max(2 * (end - first), 2))))
            spectrum = np.fft.rfft(y[: end - lo], n=size)
            products = np.zeros(half + 1)
            lagged = np.fft.irfft(spectrum * np.conj(spectrum), n=size)
            reach = min(half, end - first - 1)
            products[: reach + 1] = lagged[: reach + 1]
            square = y * y
            # Every term of a covariance is at most max(y^2); the FFT's error grows with the
            # sum of squares, the updates' with their number.
            scale = _ROUNDING * (
                (64.0 + moved) * square.sum() + 4.0 * (moved + context) * square.max(initial=0.0)
            )
            _block_periods(
                y,
                np.concatenate([[0.0], np.cumsum(y)]),
                _runs(filled[lo:hi]),
                firsts[block:stop] - lo,
                ends[block:stop] - lo,
                products,
                first - lo,
                end - lo,
                scale,
                half,
                count,
                min_period,
                min_acf,
                min_prominence,
                periods[block:stop],
                fragile[block:stop],
            )
        block = stop
    return periods, fragile


_SLOTS = 8
"""Seasonal periods whose full-history baselines are cached at once (least recently used out)."""


@njit(cache=True)
def _sparse_table(values: np.ndarray, take_max: bool) -> np.ndarray:
    """``table[j, a]`` = min (max) of ``values[a : a + 2**j]``: any range's extreme in O(1)."""
    n = len(values)
    levels = 1
    while (1 << levels) <= n:
        levels += 1
    table = np.empty((levels, n))
    table[0] = values
    for j in range(1, levels):
        width = 1 << (j - 1)
        for a in range(n - (1 << j) + 1):
            x, y = table[j - 1, a], table[j - 1, a + width]
            table[j, a] = max(x, y) if take_max else min(x, y)
    return table


@njit(cache=True)
def _extreme(table: np.ndarray, a: int, b: int, take_max: bool) -> float:
    """Min (max) of ``values[a:b]`` from its sparse table; NaN when empty."""
    if b <= a:
        return np.nan
    j = 0
    while (1 << (j + 1)) <= b - a:
        j += 1
    x, y = table[j, a], table[j, b - (1 << j)]
    return max(x, y) if take_max else min(x, y)


@njit(cache=True)
def _full_median(filled: np.ndarray, at: int, step: int, count: int, buffer: np.ndarray) -> float:
    """Median of ``filled[at - step]``, ``filled[at - 2 step]``... (``count`` values, all finite)."""
    for s in range(count):
        buffer[s] = filled[at - (s + 1) * step]
    return _median(buffer, count)


@njit(cache=True)
def rolling_rows(
    filled: np.ndarray,
    firsts: np.ndarray,
    ends: np.ndarray,
    periods: np.ndarray,
    context: int,
    horizon: int,
    level_window: int,
    seasons: int,
    history: int,
    short_window: int,
    cooldown: int,
    range_lag: int,
    gain: float,
    floor: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forecast, record edge and ranges of the windows ``[ends[i] - context, ends[i])`` of ``filled``.

    The window's values are ``filled`` from ``firsts[i]`` (its first sample) on, NaN
    before, exactly as the reference forward-fills the context. A baseline value whose
    inputs all lie after the window's first sample does not depend on the window: those
    (the level, each period's seasonal median and level correction) are cached per
    position of the series and shared by every window; the others are computed per window.

    Returns:
        ``yhat`` ``(k, horizon)``, ``edge`` ``(k,)`` (before ``gain``) and ``ranges``
        ``(k, 4)``: low and high of the old part of the window, low and high of the recent
        part (NaN where empty), for the reference's range cap.
    """
    k = len(ends)
    m = periods.shape[1]
    total = len(filled)
    r = min(history, max(context - 1, 1))
    w = level_window
    yhat = np.full((k, horizon), np.nan)
    edges = np.full(k, np.nan)
    ranges = np.full((k, 4), np.nan)
    baselines = np.empty((1 + m, r + horizon))
    residuals = np.empty((1 + m, r))
    squares = np.empty(r)
    deviation = np.empty(r)
    buffer = np.empty(max(w, seasons, r))
    size = np.empty(r)
    lows, highs = _sparse_table(filled, False), _sparse_table(filled, True)
    level_cache = np.empty(total + 1)
    level_known = np.zeros(total + 1, dtype=np.bool_)
    slot_period = np.full(_SLOTS, -1, dtype=np.int64)
    slot_used = np.zeros(_SLOTS, dtype=np.int64)
    seasonal_cache = np.empty((_SLOTS, total + 1))
    seasonal_known = np.zeros((_SLOTS, total + 1), dtype=np.bool_)
    correction_cache = np.empty((_SLOTS, total + 1))
    correction_known = np.zeros((_SLOTS, total + 1), dtype=np.bool_)
    for i in range(k):
        end, first = ends[i], firsts[i]
        start = end - context
        if first >= end:
            continue
        # level: median of the w values before each position (NaN before the first sample)
        for t in range(r + 1):
            at = end - r + t
            if at - w >= first:
                if not level_known[at]:
                    level_cache[at] = _full_median(filled, at, 1, w, buffer)
                    level_known[at] = True
                baselines[0, t] = level_cache[at]
                continue
            n = 0
            for u in range(at - w, at):
                if u >= first:
                    buffer[n] = filled[u]
                    n += 1
            baselines[0, t] = _median(buffer, n)
        for t in range(r + 1, r + horizon):
            baselines[0, t] = baselines[0, r]
        for j in range(m):
            p = periods[i, j]
            if p <= 0:
                baselines[1 + j, :] = np.nan
                continue
            slot = -1
            for q in range(_SLOTS):
                if slot_period[q] == p:
                    slot = q
            if slot < 0:
                slot = np.argmin(slot_used)
                slot_period[slot] = p
                seasonal_known[slot, :] = False
                correction_known[slot, :] = False
            slot_used[slot] = i + 1
            reach = seasons * p
            for t in range(r + horizon):
                at = end - r + t
                if t < r and at - reach >= first:
                    if not seasonal_known[slot, at]:
                        seasonal_cache[slot, at] = _full_median(filled, at, p, seasons, buffer)
                        seasonal_known[slot, at] = True
                    baselines[1 + j, t] = seasonal_cache[slot, at]
                    continue
                n = 0
                for s in range(1, seasons + 1):
                    u = at - s * p
                    if u < end and u >= first and u >= start:
                        buffer[n] = filled[u]
                        n += 1
                baselines[1 + j, t] = _median(buffer, n)
            for t in range(r):
                at = end - r + t
                deviation[t] = (filled[at] if at >= first else np.nan) - baselines[1 + j, t]
            correction = 0.0
            for t in range(r + 1):
                at = end - r + t
                if t >= w and at - w - reach >= first:  # w deviations from full seasonal medians
                    if not correction_known[slot, at]:
                        for u in range(w):
                            buffer[u] = deviation[t - w + u]
                        correction_cache[slot, at] = _median(buffer, w)
                        correction_known[slot, at] = True
                    value = correction_cache[slot, at]
                else:
                    n = 0
                    for u in range(max(t - w, 0), t):
                        if np.isfinite(deviation[u]):
                            buffer[n] = deviation[u]
                            n += 1
                    value = _median(buffer, n)
                correction = value if np.isfinite(value) else 0.0
                if t < r:
                    baselines[1 + j, t] += correction
            for t in range(r, r + horizon):
                baselines[1 + j, t] += correction
        # the baseline whose one-step residuals are smallest (RMS)
        choice, best = 0, np.inf
        for b in range(1 + m):
            n = 0
            for t in range(r):
                at = end - r + t
                value = (filled[at] if at >= first else np.nan) - baselines[b, t]
                residuals[b, t] = value
                finite = np.isfinite(value)
                squares[t] = value * value if finite else 0.0
                n += finite
            err = np.sqrt(_pairwise_sum(squares, r) / max(n, 1)) if n > 0 else np.nan
            if np.isfinite(err) and err < best:
                choice, best = b, err
        n = 0
        for t in range(r):
            if np.isfinite(residuals[choice, t]):
                buffer[n] = residuals[choice, t]
                n += 1
        middle = 0.0
        if n > 0:
            ordered = np.partition(buffer[:n], (n - 1) // 2)
            low_middle = ordered[(n - 1) // 2]
            high_middle = low_middle if n % 2 else ordered[n // 2 :].min()
            middle = 0.5 * (low_middle + high_middle)
            middle = middle if np.isfinite(middle) else 0.0
        for t in range(horizon):
            yhat[i, t] = baselines[choice, r + t] + middle
        for t in range(r):
            size[t] = abs(residuals[choice, t] - middle)
        edges[i] = _edge(size, r, short_window, cooldown, gain, floor)
        seen = max(first, start)
        split = end - min(range_lag, (end - first) // 2)
        ranges[i, 0] = _extreme(lows, seen, split, False)
        ranges[i, 1] = _extreme(highs, seen, split, True)
        ranges[i, 2] = _extreme(lows, max(seen, split), end, False)
        ranges[i, 3] = _extreme(highs, max(seen, split), end, True)
    return yhat, edges, ranges


@njit(cache=True)
def _edge(size: np.ndarray, r: int, short_window: int, cooldown: int, gain: float, floor: float) -> float:
    """The reference's ``_edges`` for one row (same operations, same order)."""
    filled = np.where(np.isfinite(size[:r]), size[:r], 0.0)
    single = np.zeros(r + 1)
    for t in range(r):
        single[t + 1] = max(single[t], filled[t])
    edge = single.copy()
    k = min(short_window, r)
    if k > 1:
        total = np.zeros(r + 1)
        counts = np.zeros(r + 1)
        for t in range(r):
            total[t + 1] = total[t] + filled[t]
            counts[t + 1] = counts[t] + np.isfinite(size[t])
        record = np.zeros(r + 1)
        running = 0.0
        for e in range(r - k + 1):
            sums, n = total[e + k] - total[e], counts[e + k] - counts[e]
            stat = sums / n if n > 0 else np.nan
            running = max(running, stat if np.isfinite(stat) else 0.0)
            record[e + k] = running
        for t in range(r + 1):
            before = total[t] - total[t - k + 1] if t >= k - 1 else 0.0
            edge[t] = min(single[t], max(k * record[t] - before, floor * single[t]))
    cool = min(cooldown, r)
    if cool:
        worst = 0.0
        for t in range(r - cool, r):
            if filled[t] > gain * edge[t]:
                worst = max(worst, filled[t])
        return max(edge[r], worst)
    return edge[r]
