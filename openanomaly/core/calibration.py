"""The calibration stage: the one place where a forecast becomes ``anomaly_score``.

Every model, ``default`` included, goes through it, so ``anomaly_score > 1`` means the
same thing for every pipeline: *rarer than this series' false-alarm budget*. The budget
is the user's (:attr:`AlertPolicy.false_alarms_per_week`); what it means for a series is
read off the series' own past.

For a point at column ``t`` (``x`` = the values, NaN = no sample):

1. **Residual record.** The stage's yardstick is the robust seasonal reference forecast
   (:mod:`openanomaly.models.reference`), one step ahead: ``size[t] = |x[t] - reference[t]|``.
   It is cheap, stateless and the same for every model, so the record can be rebuilt
   from the context alone.
2. **Tail threshold** (peaks over threshold, as SPOT; Siffer et al., KDD 2017). Over the
   record the ``TAIL_FRACTION`` largest residuals are fitted with an exponential tail
   above the one below them, ``u``: ``q = u + mean excess x ln(K / (N p))`` over the
   ``K`` of them strictly above ``u`` (a tie is no excess), where ``p`` is
   the budget as a rate per point. The same fit on the sums of ``SUSTAINED``
   consecutive residuals catches a shift too small for one point but too long for
   noise: the edge drops to what makes that sum exceed its own threshold, never below
   ``SUSTAINED_FLOOR`` of the one-point edge. The two tests share the budget (half
   each), so noise crosses ``score 1`` about ``false_alarms_per_week`` times a week,
   whatever the metric's scale or shape.
3. **One page per incident** (``cooldown``): within ``cooldown`` of an alert only a
   deviation worse than the worst alerted one alerts again.
4. **The model's say.** A point alerts only when it is outside both the reference's band
   (``reference +- edge``) and the model's (``yhat +- max(edge, the model's half-band)``):
   a model that predicted the value vetoes the alert; a model with wide or careless
   quantiles cannot flood, because the threshold is the record's.

The thresholds are refit at the first column of every hour of absolute time
(``anchor``), from the record before that column; a point's band therefore depends on
the ``context`` points before its chunk only, and a scheduled window and a backtest give
bit-identical scores. Points whose record holds less than ``min_history`` are warm-up:
they get no score (they are not written, never ranked).

Inside the band the score ranks by :func:`sustained_rarity`, so sustained shifts rank
above noise (VUS-PR) without moving any alert.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from openanomaly.core.scoring import FLAT_BAND_REL, Direction, Score, band_score, score_forecast
from openanomaly.models.base import QuantileForecast
from openanomaly.models.reference import (
    LEVEL_WINDOW,
    Periods,
    candidate_forecasts,
    choose,
    median,
    seasonal_periods,
    window_sums,
)

__all__ = ["AlertPolicy", "StageBands", "lookback", "score_chunks", "stage_bands", "sustained_rarity"]

WEEK_S = 7 * 86_400

TAIL_FRACTION = 0.02
"""The tail: the largest 2 % of a full record, a fixed number of peaks (SPOT's initial threshold
at the record's 98th percentile)."""

SUSTAINED = 6
"""Points in the sustained-deviation sum: a shift lasting this long is judged as one event."""

SUSTAINED_FLOOR = 0.4
"""The sustained test lowers the edge to no less than this share of the one-point edge, so a
score stays a ratio to the one-point threshold, comparable across series."""

RECORD_SHARE = 0.5
"""The record's share of the context; the rest holds the seasonal reference's past seasons."""

REFIT_S = 3_600
"""Thresholds are refit once an hour of absolute time: a scheduled window and a backtest
refit at the same columns, and the cost is the record once an hour, not once a point."""

RANGE_MARGIN = 0.05
"""How far past the range the context has seen a value must go (HTM's "spatial anomaly")."""

RANGE_LAG_S = 3 * 86_400
"""The range is that of the context before its last three days (at most half the context):
a drift or a new level that left it within them is one incident, not a new one at each new
high, and a new level has filled the range by the time it counts."""

RANK_WINDOW, RANK_LAG, RANK_MEAN = 1440, 288, 60
"""The ranking inside the band: the mean of the last ``RANK_MEAN`` points against the median
and MAD of ``RANK_WINDOW`` points ending ``RANK_LAG`` before the chunk."""


@dataclass(frozen=True)
class AlertPolicy:
    """The stage's knobs as a plain record (the config layer builds it; see ``CalibrationConfig``)."""

    false_alarms_per_week: float = 1.0
    cooldown_s: float = 6 * 3_600
    min_history_s: float = 86_400
    enabled: bool = True


class StageBands(NamedTuple):
    """What the stage knows before each point of each chunk, ``(n, k, h)`` each.

    ``edge``: the half-width of the alert band (NaN during warm-up); ``low``/``high``: the
    range cap (``-inf``/``inf`` where there is none); ``reference``: the reference
    forecast of the point.
    """

    edge: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reference: np.ndarray


class Lookback(NamedTuple):
    """The stage's windows in points, shrunk so that all of them fit the context."""

    record: int
    cooldown: int
    sustained: int
    refit: int
    min_history: int
    periods: Periods
    rate: float  # the budget per point, for each of the two tests
    step_s: float
    range_points: int  # points the range must hold before it caps: one budget period


def _points(seconds: float, step_s: float) -> int:
    return max(0, math.ceil(seconds / step_s - 1e-9))


def lookback(policy: AlertPolicy, context: int, step_s: float) -> Lookback:
    """The stage's windows for a ``context``-point history at ``step_s``.

    Everything the band of a chunk reads lies in the ``context`` points before it: the
    cooldown, the refit stride, the sustained sum, the record and the reference's own
    look-back (``LEVEL_WINDOW`` plus its seasons) add up to at most ``context``.
    """
    cool = min(_points(policy.cooldown_s, step_s), context // 4)
    sustained = max(1, min(SUSTAINED, context // 8))
    refit = max(1, min(_points(REFIT_S, step_s), context // 8))
    spare = max(0, context - cool - refit - (sustained - 1) - LEVEL_WINDOW)
    record = int(spare * RECORD_SHARE)
    periods = seasonal_periods(step_s, spare - record)
    # The budget per point, shared by the two tests (one point, the sustained sum).
    rate = policy.false_alarms_per_week * step_s / WEEK_S / (2 if sustained > 1 else 1)
    min_history = min(record, max(1, _points(policy.min_history_s, step_s)))
    range_points = math.ceil(WEEK_S / step_s / policy.false_alarms_per_week)
    return Lookback(record, cool, sustained, refit, min_history, periods, rate, step_s, range_points)


def _tail(records: np.ndarray, count: np.ndarray, rate: float, min_count: int) -> np.ndarray:
    """The ``1 - rate`` quantile of each row of ``records`` (``(..., H)``, ``-inf`` = none; it
    is partitioned in place) from its tail; ``count``: the samples of each row.

    Peaks over threshold with an exponential tail: ``u`` is the value below the record's
    ``TAIL_FRACTION * H`` largest; the ``K`` of them strictly above ``u`` are its excesses,
    taken as exponential with their mean as scale, so ``P(size > q) = (K / N) exp(-(q - u)
    / scale)``, solved for ``rate``. A value equal to ``u`` is no excess: a quantised or
    mostly idle metric ties many residuals at ``u``, and counting them as excesses of 0
    would shrink the scale and page on its next ordinary step. With no excess, ``u``.
    """
    h = records.shape[-1]
    top = max(2, math.ceil(TAIL_FRACTION * h))
    if h <= top:
        return np.full(records.shape[:-1], np.nan)
    records.partition(h - top - 1, axis=-1)
    u = records[..., h - top - 1]
    with np.errstate(invalid="ignore", divide="ignore"):  # rows short of samples: NaN, dropped below
        tail = records[..., h - top :] - u[..., None]  # ties at u add 0 to the sum
        excesses = np.count_nonzero(tail > 0, axis=-1)
        scale = tail.sum(axis=-1) / excesses
        q = np.where(excesses > 0, u + scale * np.log(excesses / (np.maximum(count, 1) * rate)), u)
    return np.where((count >= min_count) & np.isfinite(q), np.maximum(q, 0.0), np.nan)


def _thresholds(stat: np.ndarray, valid: np.ndarray, anchors: np.ndarray, look: Lookback) -> np.ndarray:
    """The tail threshold of ``stat`` ``(r, m)`` over the record before each anchor column, ``(r, a)``."""
    r, h = stat.shape[0], look.record
    out = np.full((r, anchors.size), np.nan)
    if h == 0 or anchors.size == 0:
        return out
    finite = valid & np.isfinite(stat)
    values = np.where(finite, stat, -np.inf)
    counted = np.concatenate([np.zeros((r, 1), np.int64), np.cumsum(finite, axis=1)], axis=1)
    count = counted[:, anchors] - counted[:, anchors - h]  # samples in each record
    views = np.lib.stride_tricks.sliding_window_view(values, h, axis=1)
    block = max(1, 4_000_000 // (h * anchors.size))  # rows per block: bounded memory
    for lo in range(0, r, block):
        rows = slice(lo, lo + block)
        out[rows] = _tail(views[rows, anchors - h], count[rows], look.rate, look.min_history)
    return out


def _trailing_sum(values: np.ndarray, size: int) -> np.ndarray:
    """``out[:, t] = sum(values[:, t - size + 1 : t + 1])`` (zeros before column 0), window by window."""
    padded = np.concatenate([np.zeros((values.shape[0], size - 1)), values], axis=1)
    return window_sums(padded, np.arange(size, padded.shape[1] + 1), size)


def _trailing_max_before(values: np.ndarray, size: int) -> np.ndarray:
    """``out[:, t] = max(values[:, t - size : t])`` (0 where empty)."""
    m = values.shape[1]
    if size == 0:
        return np.zeros(values.shape)
    padded = np.concatenate([np.zeros((values.shape[0], size)), values], axis=1)
    span, width = padded, 1
    while 2 * width <= size:  # doubling: span[:, i] = max(padded[:, i : i + width])
        span = np.maximum(span[:, :-width], span[:, width:])
        width *= 2
    return np.maximum(span[:, :m], span[:, size - width : size - width + m])


def _padded(values: np.ndarray, starts: np.ndarray, context: int, horizon: int) -> tuple[np.ndarray, int]:
    """``values`` with NaN before column 0 (every start gets a full context) and after the end."""
    pad = max(0, context - int(np.min(starts, initial=context)))
    n = values.shape[0]
    x = np.concatenate(
        [np.full((n, pad), np.nan), np.asarray(values, dtype=np.float64), np.full((n, horizon), np.nan)], 1
    )
    return x, pad


def stage_bands(
    values: np.ndarray,
    starts: np.ndarray,
    *,
    horizon: int,
    context: int,
    step_s: float,
    origin: int,
    policy: AlertPolicy,
) -> StageBands:
    """The alert band of each point of each chunk (module docs).

    Args:
        values: float ``(n, m)`` grid values, NaN = no sample.
        starts: int ``(k,)`` column of each chunk's first point, increasing; only the
            ``context`` columns before a start are read.
        horizon: points per chunk.
        context: the pipeline's context in points.
        step_s: the grid step in seconds.
        origin: the absolute grid index (``timestamp // step``) of column 0: it places
            the hourly refits, so every window refits at the same instants.
        policy: the alert knobs.

    Returns:
        :class:`StageBands`, bit-identical for a chunk passed alone or among thousands.
    """
    look = lookback(policy, context, step_s)
    starts = np.asarray(starts, dtype=np.int64)
    n = values.shape[0]
    x, pad = _padded(values, starts, context, horizon)
    at = starts + pad
    base = origin - pad  # absolute index of column 0 of x
    # Columns whose residuals any band reads: the record before the earliest anchor, the
    # cooldown and the sustained sum before the first point.
    first = max(0, int(at.min()) - look.cooldown - look.refit - (look.sustained - 1) - look.record)
    columns = np.arange(first, x.shape[1])
    candidates = candidate_forecasts(x, columns, columns, look.periods).forecast  # (c, n, M)
    c, m = candidates.shape[0], columns.size
    actual = x[:, first:]
    valid = np.isfinite(actual)[None] & np.isfinite(candidates)
    size = np.where(valid, np.abs(actual[None] - candidates), 0.0).reshape(c * n, m)
    valid = valid.reshape(c * n, m)
    sums = _trailing_sum(size, look.sustained)
    # A point reads the edges of its own column and of the cooldown before it: only the
    # columns from `lo` on get edges.
    lo = max(0, int(at.min()) - first - look.cooldown)
    absolute = base + first + np.arange(lo, m)
    anchor = absolute - absolute % look.refit - base - first  # the first column of its hour
    used = np.unique(anchor)
    used = used[used >= look.record]
    one = np.full((c * n, m - lo), np.nan)
    many = np.full((c * n, m - lo), np.nan)
    if used.size:
        slot = np.searchsorted(used, anchor)
        ok = (slot < used.size) & (used[np.minimum(slot, used.size - 1)] == anchor)
        q1 = _thresholds(size, valid, used, look)
        qk = _thresholds(sums, valid, used, look) if look.sustained > 1 else q1
        one[:, ok], many[:, ok] = q1[:, slot[ok]], qk[:, slot[ok]]
    size_tail = size[:, lo:]
    before = sums[:, lo:] - size_tail  # the sustained - 1 residuals before each column
    edge = np.fmin(one, np.fmax(many - before, SUSTAINED_FLOOR * one)) if look.sustained > 1 else one
    alerted = np.where(size_tail > edge, size_tail, 0.0)  # NaN edge (warm-up): no alert
    points = (at[:, None] + np.arange(horizon)[None, :]).reshape(-1) - first  # (k h,)
    read = points - lo  # the same columns among those with edges
    worst = _trailing_max_before(alerted, look.cooldown).reshape(c, n, m - lo).max(axis=0)[:, read]
    edge = edge.reshape(c, n, m - lo)
    choice = choose(size.reshape(c, n, m), valid.reshape(c, n, m), at - first, look.record)
    choice = np.repeat(choice, horizon, axis=1)[None]  # one candidate per chunk, all its points
    picked = np.take_along_axis(edge[:, :, read], choice, axis=0)[0]
    edge_points = np.fmax(picked, worst)
    edge_points = np.where(np.isfinite(picked), edge_points, np.nan)
    reference = np.take_along_axis(candidates[:, :, points], choice, axis=0)[0]
    low, high = _range_cap(x, points + first, context, look)
    incident = worst > 0  # during an incident a new high is not news
    low, high = np.where(incident, -np.inf, low), np.where(incident, np.inf, high)
    shape = (n, at.size, horizon)
    return StageBands(*(part.reshape(shape) for part in (edge_points, low, high, reference)))


def _range_cap(x: np.ndarray, at: np.ndarray, context: int, look: Lookback) -> tuple[np.ndarray, np.ndarray]:
    """The range the context has seen before each column ``at``, widened by ``RANGE_MARGIN``.

    The range is that of the context before its last three days (``RANGE_LAG_S``); where
    one of those points already left it (on a side), that side is off: leaving was the
    alert, and a ramp or a new level would otherwise page at every new high. A new point
    tops ``N`` earlier ones by chance about once in ``N``, so the cap applies once the
    range holds the points of one budget period (a week at one false alarm a week), or the
    whole context when that is shorter: then "never seen" is rarer than the budget.
    """
    lag = min(_points(RANGE_LAG_S, look.step_s), context // 2)
    span = context - lag
    young = min(look.range_points, span)
    for_max, for_min = np.where(np.isnan(x), -np.inf, x), np.where(np.isnan(x), np.inf, x)
    old_high = _window_extreme(for_max, at - lag, span)
    old_low = -_window_extreme(-for_min, at - lag, span)
    aged = np.isfinite(_window_extreme(for_max, at - young + 1, context - young + 1))
    if lag:
        new_high, new_low = _window_extreme(for_max, at, lag), -_window_extreme(-for_min, at, lag)
    else:
        new_high, new_low = np.full(old_high.shape, -np.inf), np.full(old_high.shape, np.inf)
    seen = np.isfinite(old_high)
    with np.errstate(invalid="ignore"):
        slack = np.where(seen, RANGE_MARGIN * (old_high - old_low), 0.0)
        above, below = new_high > old_high + slack, new_low < old_low - slack
    high_off, low_off = ~(seen & aged) | above, ~(seen & aged) | below
    return np.where(low_off, -np.inf, old_low - slack), np.where(high_off, np.inf, old_high + slack)


def _window_extreme(values: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """``out[:, j] = max(values[:, ends[j] - size : ends[j]])``, ``(n, len(ends))``."""
    if size <= 0:
        return np.full((values.shape[0], ends.size), -np.inf)
    if ends.size * size <= values.shape[1] * 2 * size.bit_length():  # few windows: reduce each
        padded = np.concatenate([np.full((values.shape[0], size), -np.inf), values], axis=1)
        views = np.lib.stride_tricks.sliding_window_view(padded, size, axis=1)
        return views[:, ends].max(axis=-1)  # views[:, e] covers values[:, e - size : e]
    return _trailing_max_before(np.concatenate([values, values[:, :1]], axis=1), size)[:, ends]


def sustained_rarity(
    values: np.ndarray, starts: np.ndarray, *, horizon: int, context: int, direction: Direction
) -> np.ndarray:
    """How far the recent level of each chunk point is from the series' normal level, in ``[0, 1)``.

    What ranks the points inside the alert band (VUS-PR), for every model: ``z = |mean of
    the RANK_MEAN points ending at t - median| / MAD`` of the ``RANK_WINDOW`` points ending
    ``RANK_LAG`` before the chunk, mapped to ``z / (z + 3)``. The mean makes it a
    *sustained*-deviation measure: a shift keeps ranking high while it lasts, where a
    one-step residual fades. Stateless like the bands.

    Returns:
        float ``(n, k, h)``; 0 where the window or the level has no sample.
    """
    lag = min(RANK_LAG, context // 2)
    window = max(1, min(RANK_WINDOW, context - lag))
    mean = min(RANK_MEAN, context)
    x, pad = _padded(values, starts, context, horizon)
    at = np.asarray(starts, dtype=np.int64) + pad
    stride = max(1, window // 360)  # 360 evenly spaced points: the median and MAD barely move
    views = np.lib.stride_tricks.sliding_window_view(x, window, axis=1)[:, at - lag - window, ::stride]
    centre = median(views)
    spread = median(np.abs(views - centre[..., None]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty window: NaN, ranked 0
        columns = at[:, None] + np.arange(horizon)[None, :]
        recent = np.lib.stride_tricks.sliding_window_view(x, mean, axis=1)[:, columns - mean + 1]
        deviation = np.nanmean(recent, axis=-1) - centre[..., None]
    if direction == "above":
        deviation = np.maximum(deviation, 0.0)
    elif direction == "below":
        deviation = np.minimum(deviation, 0.0)
    floor = FLAT_BAND_REL * np.maximum(np.abs(centre), 1.0)
    with np.errstate(invalid="ignore"):
        z = np.abs(deviation) / np.maximum(spread, floor)[..., None]
        return np.where(np.isfinite(z), z / (z + 3.0), 0.0)


def calibrated_score(
    actual: np.ndarray,
    forecast: QuantileForecast,
    bands: StageBands,
    *,
    quantiles: tuple[float, float],
    direction: Direction,
    min_deviation: float,
) -> Score:
    """Score ``actual`` ``(r, h)`` outside both the reference's band and the model's (module docs, 4)."""
    low_q, high_q = quantiles

    def band(centre: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        upper = np.minimum(centre + half, np.maximum(bands.high, centre))
        lower = np.maximum(centre - half, np.minimum(bands.low, centre))
        with np.errstate(invalid="ignore"):
            score = band_score(
                actual,
                yhat=centre,
                yhat_lower=lower,
                yhat_upper=upper,
                direction=direction,
                min_deviation=min_deviation,
            )
        return score, lower, upper

    reference = np.where(np.isfinite(bands.reference), bands.reference, forecast.median)
    stage_score, _, _ = band(reference, bands.edge)
    model_half = 0.5 * (forecast.level(high_q) - forecast.level(low_q))
    score, lower, upper = band(forecast.median, np.fmax(bands.edge, model_half))
    score = np.where(np.isnan(bands.edge), np.nan, np.fmin(score, stage_score))
    return Score(score, forecast.median, lower, upper)


def score_chunks(
    values: np.ndarray,
    starts: np.ndarray,
    rows: np.ndarray,
    actual: np.ndarray,
    forecast: QuantileForecast,
    *,
    policy: AlertPolicy,
    quantiles: tuple[float, float],
    direction: Direction,
    min_deviation: float,
    context: int,
    step_s: float,
    origin: int,
) -> Score:
    """Score the forecast chunks ``rows`` (indices into the series-major ``n * k``) of ``values``.

    Alerts (``> 1``) come from the stage's band; every other point is ranked by
    :func:`sustained_rarity`. With the stage disabled the model's own band scores.
    """
    if not policy.enabled:
        return score_forecast(
            actual, forecast, quantiles=quantiles, direction=direction, min_deviation=min_deviation
        )
    n, k, h = values.shape[0], len(starts), actual.shape[1]
    bands = stage_bands(
        values, starts, horizon=h, context=context, step_s=step_s, origin=origin, policy=policy
    )
    picked = StageBands(*(field.reshape(n * k, h)[rows] for field in bands))
    score = calibrated_score(
        actual, forecast, picked, quantiles=quantiles, direction=direction, min_deviation=min_deviation
    )
    rank = sustained_rarity(values, starts, horizon=h, context=context, direction=direction)
    inside = np.where(np.isnan(score.anomaly_score), np.nan, rank.reshape(n * k, h)[rows])
    return score._replace(anomaly_score=np.where(score.anomaly_score > 1, score.anomaly_score, inside))
