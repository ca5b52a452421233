"""The calibration stage: turn any forecaster's residual into a score where ``> 1`` means rare.

Why a stage and not a model: a forecaster's own quantile band says how wrong it expects
to be, not how often its error is this large *for this series*. A 0.05/0.95 band marks
10 % of points by construction, and a normal band on a spiky metric pages on every
burst. So after every forecaster (``mad``, ``zscore``, statsforecast, NHITS, Chronos,
``default``) the same stage sets the alert band from the series' own history, and ONE
threshold, ``anomaly_score > 1``, means "rare for this series" for every model.

It is **stateless**: a chunk's band is a function of the ``context`` points before it
only (the history the forecaster sees), so the scheduler, which scores one window at a
time, and a backtest, which scores a year at once, compute the same band. Every step is
a fixed-length look-back that fits inside the context, which is what lets
:func:`stage_bands` compute the bands of many consecutive chunks from one array
(``O(points)``, not ``O(points x context)``) with results bit-identical to one chunk at
a time.

For the chunk that starts at position ``T`` (``x`` = the values, NaN = no sample):

1. **Residual record** from a cheap reference forecast: the median of the
   ``level_window`` points before each position, or, where the step allows two or more
   seasons in the context, a daily or weekly profile (median of the same phase over up
   to ``seasons`` seasons plus the median of its last ``level_window`` deviations),
   whichever has the smallest residuals over the history (a seasonal one must be 10 %
   better): ``size[t] = |x[t] - reference[t]|``. Every point of a chunk is scored
   against the reference one step ahead, from the points before it (the chunk's earlier
   points have arrived when it is scored), because the record holds one-step residuals:
   a reference held flat over a long chunk drifts away from the series by more than any
   one-step record and pages on every slow swing. The choice of reference is per chunk.
   The edge is the largest ``size`` over the last ``history`` points, and at least the
   last ``history_days`` (a record shorter than a day pages on the day's usual peak
   every day; 864 points are three days at 5 minutes, 14.4 hours at 1 minute): the *record*, so
   the score is the new deviation as a ratio to the worst one seen recently: each
   series calibrates itself (a spiky metric tolerates its usual spikes, a smooth one
   alerts on a small step) without a distributional assumption.
2. **Sustained deviations** (``short_window`` k): when the sum of the last k sizes, the
   new one included, would beat its own record over the history, the edge drops to
   what makes it do so, but never below ``floor`` x the single-point record.
3. **One alert per incident** (``cooldown``): the edge is worked out at every recent
   position too; within ``cooldown`` points of an alert only a deviation worse than the
   worst alerted one alerts again (an alert through any reference counts). A dip that
   keeps deepening pages once, not at every point.
4. **The model's say**: the model's band is ``yhat +- gain x max(edge, model
   half-width)``, and a point alerts only when it is outside both that band and the
   reference's (``reference +- gain x edge``): the stage knows the reference's error
   record, not the model's, so a model can veto an alert (it predicted the value) but
   not flood (a 0.05/0.95 band marks 10 % of points by construction). ``gain`` moves
   the threshold, not the ranking. ``default`` *is* the reference.
5. **Range cap** (``range_margin``, ``range_lag``): the band never reaches past the
   context's range before its last ``range_lag`` points, widened by ``range_margin`` of
   it, so a slow drift alerts when it leaves everything the context has seen (NAB's HTM
   has the same "spatial anomaly" rule with the same 5 %). It waits until the series has
   ``range_days`` of samples in the context (or fills a shorter context): a younger
   series has not shown its week's usual highs and lows, and paged on them. During an
   incident the cap is off: after an alert (step 3), and on the side that one of the
   last ``range_lag`` points already left (leaving was the alert); a ramp or a new
   level would otherwise page at every new high.

The score is then :func:`openanomaly.scoring.band_score` against those bands (the
smaller of the two) outside; inside, :func:`sustained_rarity`: how far the mean of the
last ``rank_mean`` points is from a lagged long window (``rank_window``, ``rank_lag``),
so sustained shifts keep ranking high (VUS-PR). A model whose band is already
calibrated (``default``) keeps its own alerts and gets the same ranking inside its
band. ``yhat`` is the model's median and ``yhat_lower``/``yhat_upper`` its calibrated band.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from openanomaly.config import CalibrationConfig, ScoringConfig
from openanomaly.models.base import QuantileForecast
from openanomaly.scoring import FLAT_BAND_REL, Direction, Score, band_score, score_forecast
from openanomaly.times import points_spanning

__all__ = ["StageBands", "calibrated_score", "lookbacks", "score_chunks", "stage_bands", "sustained_rarity"]


class StageBands(NamedTuple):
    """What the stage knows before each point of each chunk, ``(n, k, h)`` each.

    ``edge``: the calibrated residual scale (before ``gain``); ``low``/``high``: the
    range cap (``-inf``/``inf`` where there is none); ``reference``: the stage's own
    one-step forecast of the point (the reference it measures residuals from, chosen
    per series and chunk).
    """

    edge: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reference: np.ndarray


class _Lookbacks(NamedTuple):
    level_window: int
    history: int
    short_window: int
    cooldown: int
    range_lag: int
    range_points: int  # samples a series needs before its range caps (``range_days``, <= the range)
    periods: tuple[tuple[int, int], ...]  # (period, seasons) of each seasonal reference


def lookbacks(config: CalibrationConfig, context: int, step_s: float) -> _Lookbacks:
    """The stage's windows shrunk to fit a ``context``-point history.

    Everything the band of the chunk at ``T`` reads lies in ``[T - context, T)``:
    ``cooldown + history + short_window - 1 + reference look-back <= context``, where a
    seasonal reference of period ``p`` over ``K`` seasons looks back ``K p + level_window``.
    That is what makes the band a function of the forecaster's context alone
    (stateless) and lets a backtest share the work of consecutive chunks. A daily or
    weekly reference is offered only when at least 2 seasons of it fit.
    """
    level = min(config.level_window, max(1, context // 4))
    short = min(config.short_window, max(1, context // 8))
    cool = min(config.cooldown, context // 4)
    # The record spans ``history`` points and at least ``history_days`` (module docs, step 1).
    record = max(config.history, points_spanning(config.history_days, step_s))
    history = max(0, min(record, context - level - (short - 1) - cool))
    lag = min(config.range_lag, context // 2)
    # A context shorter than ``range_days`` is the range its pipeline asked for: capped once full.
    range_points = min(points_spanning(config.range_days, step_s), context - lag)
    room = context - cool - history - (short - 1) - level
    day = round(86_400 / step_s)
    periods = []
    for period in (day, 7 * day) if config.seasons else ():
        seasons = min(config.seasons, room // period) if period >= 2 else 0
        if seasons >= 2:
            periods.append((period, seasons))
    return _Lookbacks(level, history, short, cool, lag, range_points, tuple(periods))


def _median(windows: np.ndarray) -> np.ndarray:
    """Median along the last axis ignoring NaN (NaN where none), exact for identical windows."""
    ordered = np.sort(windows, axis=-1)  # NaN sort last
    count = np.isfinite(ordered).sum(axis=-1)
    size = ordered.shape[-1]
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0)[..., None], axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.minimum(count // 2, size - 1)[..., None], axis=-1)[..., 0]
    return np.where(count > 0, 0.5 * (low + high), np.nan)


def _columns(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``values[:, lo:hi]``, NaN where ``lo`` reaches before column 0."""
    if lo >= 0:
        return values[:, lo:hi]
    return np.concatenate([np.full((values.shape[0], -lo), np.nan), values[:, : max(hi, 0)]], axis=1)


def _before_median(values: np.ndarray, start: int, window: int) -> np.ndarray:
    """``out[:, i] = median(values[:, t - window : t])`` ignoring NaN, for ``t = start + i``."""
    before = _columns(values, start - window, values.shape[1] - 1)
    return _median(np.lib.stride_tricks.sliding_window_view(before, window, axis=1))


def _references(x: np.ndarray, look: _Lookbacks, start: int) -> list[np.ndarray]:
    """Each candidate reference's one-step forecast at columns ``start...``.

    The level reference is the median of the ``level_window`` points before; a seasonal
    one is the median of the same phase over the last ``K`` seasons plus the median of
    its last ``level_window`` deviations (so a level shift is followed within a few
    points). Only the columns from ``start`` are computed: one scheduled window costs its
    history, not its whole context.
    """
    m, w = x.shape[1], look.level_window
    level = _before_median(x, start, w)
    out = [level]
    for period, seasons in look.periods:
        lags = [_columns(x, start - w - j * period, m - j * period) for j in range(1, seasons + 1)]
        profile = _median(np.stack(lags, axis=-1))  # columns start - w ...
        deviation = _columns(x, start - w, m) - profile
        correction = _median(np.lib.stride_tricks.sliding_window_view(deviation[:, :-1], w, axis=1))
        out.append(profile[:, w:] + np.nan_to_num(correction))
    return out


def _edges(size: np.ndarray, look: _Lookbacks, config: CalibrationConfig) -> tuple[np.ndarray, np.ndarray]:
    """The edge before every position of ``size`` (module docs, steps 1-2) and the worst
    alerted size of the last ``cooldown`` positions (step 3), both ``size``'s shape."""
    if look.history == 0:
        return np.zeros(size.shape), np.zeros(size.shape)
    edge = _shift(_trailing(size, look.history, "max"), 0.0)  # the record before t
    if look.short_window > 1:
        k = look.short_window
        sums = _trailing(size, k, "sum")  # the k sizes ending at t
        sum_record = _shift(_trailing(sums, look.history, "max"), 0.0)
        before = _shift(_trailing(size, k - 1, "sum"), 0.0)  # the k - 1 sizes before t
        edge = np.minimum(edge, np.maximum(sum_record - before, config.floor * edge))
    if not look.cooldown:
        return edge, np.zeros(size.shape)
    alerted = np.where(size > config.gain * edge, size, 0.0)
    return edge, _shift(_trailing(alerted, look.cooldown, "max"), 0.0)


def _trailing_max(values: np.ndarray, size: int) -> np.ndarray:
    """``out[:, t] = max(values[:, t - size + 1 : t + 1])`` (``-inf`` before column 0), same shape.

    Doubling (a sparse table): ``log2(size)`` passes over the array, exact, any window.
    """
    m = values.shape[1]
    span = np.concatenate([np.full((values.shape[0], size - 1), -np.inf), values], axis=1)
    width = 1
    while 2 * width <= size:
        span = np.maximum(span[:, :-width], span[:, width:])
        width *= 2
    # span[:, i] = max over [i, i + width) of the padded row; two spans cover the window.
    return np.maximum(span[:, :m], span[:, size - width : size - width + m])


def _window_max(values: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """``out[:, j] = max(values[:, ends[j] - size : ends[j]])``, ``(n, len(ends))``.

    Few windows: reduced directly; many: from one doubling pass. Max is exact, so both
    give the same numbers.
    """
    if len(ends) * size <= values.shape[1] * 2 * max(1, size.bit_length()):
        views = np.lib.stride_tricks.sliding_window_view(values, size, axis=1)
        return views[:, ends - size].max(axis=-1)
    return _trailing_max(values, size)[:, ends - 1]


def _trailing(values: np.ndarray, size: int, reduce: str) -> np.ndarray:
    """``out[:, t] = max/min/sum(values[:, t - size + 1 : t + 1])`` (pads: -inf/inf/0), same shape."""
    if reduce == "max":
        return _trailing_max(values, size)
    if reduce == "min":
        return -_trailing_max(-values, size)
    padded = np.concatenate([np.zeros((values.shape[0], size - 1)), values], axis=1)
    return np.lib.stride_tricks.sliding_window_view(padded, size, axis=1).sum(axis=-1)


def _shift(values: np.ndarray, fill: float) -> np.ndarray:
    """``out[:, t] = values[:, t - 1]``: turns "ending at t" into "ending before t"."""
    return np.concatenate([np.full((values.shape[0], 1), fill), values[:, :-1]], axis=1)


def _padded(
    values: np.ndarray, starts: np.ndarray, context: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """``values`` with NaN before column 0, so every start has a full context to its left,
    and after the end, so every chunk has ``horizon`` columns; and the starts in it."""
    starts = np.asarray(starts, dtype=np.int64)
    pad = max(0, context - int(starts.min(initial=context)))
    n = values.shape[0]
    x = np.concatenate(
        [np.full((n, pad), np.nan), np.asarray(values, dtype=np.float64), np.full((n, horizon), np.nan)], 1
    )
    return x, starts + pad


_SEASONAL_MARGIN = 0.9
"""A seasonal reference is chosen only when its residuals are at least 10 % smaller."""


def stage_bands(
    values: np.ndarray,
    starts: np.ndarray,
    *,
    horizon: int,
    context: int,
    step_s: float,
    config: CalibrationConfig,
) -> StageBands:
    """The stage's edge, range cap and reference forecast for each chunk (module docs).

    Args:
        values: float ``(n, m)`` grid values, NaN = no sample; columns before 0 count as
            NaN, so a short array is a series that starts later.
        starts: int ``(k,)`` column of each chunk's first point; only the ``context``
            columns before a start are read.
        horizon: points per chunk.
        context: the pipeline's context in points (the forecaster's history).
        step_s: the grid step in seconds (places the daily and weekly references).
        config: the stage's knobs.

    Returns:
        :class:`StageBands`. The same chunk gets bit-identical bands whether it is passed
        alone (with its context) or among thousands.
    """
    look = lookbacks(config, context, step_s)
    n = values.shape[0]
    x, at = _padded(values, starts, context, horizon)
    # Every point is scored one step ahead of the points before it, the chunk's earlier
    # points included (they have arrived when the chunk is scored): the record holds
    # one-step residuals, and a reference held flat over a 64-point chunk drifts from
    # the series by more than any one-step record, which paged on every slow swing
    # (the shipped Chronos, 64-point chunks: 786 alerts on one NAB file, mad 19).
    points = (at[:, None] + np.arange(horizon)[None, :]).reshape(-1)
    low, high = _range_cap(x, points, context, look, config.range_margin)
    # The per-position steps need residuals from ``need`` columns before a start only:
    # one scheduled window then costs its history, not its whole context.
    need = look.cooldown + look.history + look.short_window - 1
    first = max(0, int(at.min()) - need) if at.size else 0
    references = _references(x, look, first)
    x, at, points = x[:, first:], at - first, points - first
    forecast = np.stack(references)  # (c, n, M)
    size = np.abs(x[None] - forecast)
    # A reference that could not forecast a sample it should have (too few seasons yet)
    # never wins the choice below; in the record it counts as no deviation.
    unfit = np.where(np.isnan(forecast) & np.isfinite(x[None]), np.inf, 0.0)
    size = np.where(np.isfinite(size), size, 0.0)
    c, m = size.shape[0], x.shape[1]
    edges, worst = (
        part.reshape(c, n, m)[:, :, points] for part in _edges(size.reshape(c * n, m), look, config)
    )
    # Per series and chunk, the reference with the smallest mean residual over the history;
    # a seasonal one must beat the level by a margin, so noise does not flip between them.
    if c > 1 and look.history:
        windows = np.lib.stride_tricks.sliding_window_view(size, look.history, axis=2)
        fit = windows[:, :, at - look.history].sum(axis=-1)  # (c, n, k)
        missing = np.lib.stride_tricks.sliding_window_view(unfit, look.history, axis=2)
        fit = fit + missing[:, :, at - look.history].max(axis=-1)
        fit[0] *= _SEASONAL_MARGIN
        choice = np.argmin(fit, axis=0)  # ties: the level reference
    else:
        choice = np.zeros((n, at.size), dtype=np.int64)
    choice = np.repeat(choice, horizon, axis=1)  # one reference per chunk, for all its points
    # An alert seen through any reference starts the cooldown: the choice may change
    # between two chunks, an incident must not page again because of that.
    edge = np.maximum(np.take_along_axis(edges, choice[None], axis=0)[0], worst.max(axis=0))
    reference = np.take_along_axis(forecast[:, :, points], choice[None], axis=0)[0]
    # During an incident the cap is off too: a new level keeps setting new highs, and
    # each would page again.
    incident = worst.max(axis=0) > 0
    low, high = np.where(incident, -np.inf, low), np.where(incident, np.inf, high)
    shape = (n, at.size, horizon)
    return StageBands(*(part.reshape(shape) for part in (edge, low, high, reference)))


_RANK_SAMPLES = 360
"""At most this many points of the ranking window are used (evenly spaced): its median
and MAD barely move, and the cost per chunk stays bounded."""


def _rank_window(x: np.ndarray, at: np.ndarray, lag: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of the ``window`` points ending ``lag`` before each ``at``, ``(n, k)`` each."""
    stride = max(1, window // _RANK_SAMPLES)
    views = np.lib.stride_tricks.sliding_window_view(x, window, axis=1)[:, at - lag - window, ::stride]
    centre = _median(views)
    return centre, _median(np.abs(views - centre[..., None]))


def sustained_rarity(
    values: np.ndarray,
    starts: np.ndarray,
    *,
    horizon: int,
    context: int,
    config: CalibrationConfig,
    direction: Direction,
) -> np.ndarray:
    """How far the recent level of each chunk point is from the series' normal level, in ``[0, 1)``.

    What ranks the points inside the alert band (VUS-PR), for every model: ``z =
    |mean of the rank_mean points ending at t - median| / MAD`` of the ``rank_window``
    points ending ``rank_lag`` before the chunk, mapped to ``z / (z + 3)`` (monotone).
    The mean makes it a *sustained*-deviation measure: noise averages out, a shift or a
    slow excursion keeps ranking high for as long as it lasts, where a one-step
    residual fades after a few points. Chosen by leave-one-group-out cross-validation
    on NAB and SMD (``docs/accuracy.md``): VUS-PR 0.19 -> 0.32 on NAB and 0.05 -> 0.31
    on SMD for ``default``. Like the bands it reads only the ``context`` points before
    a chunk (and the chunk's own points up to ``t``), so it is stateless and a chunk
    gets the same numbers alone or in a backtest.

    Args:
        values, starts, horizon, context, config: as :func:`stage_bands`.
        direction: ``above``/``below`` rank only rises/drops.

    Returns:
        float ``(n, k, h)``; 0 where the window or the level has no sample.
    """
    lag = min(config.rank_lag, context // 2)
    window = min(config.rank_window, context - lag)
    mean = min(config.rank_mean, context)
    x, at = _padded(values, starts, context, horizon)
    centre, spread = _rank_window(x, at, lag, window)
    columns = at[:, None] + np.arange(horizon)[None, :]  # (k, h)
    recent = np.lib.stride_tricks.sliding_window_view(x, mean, axis=1)[:, columns - mean + 1]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a window with no sample: NaN, ranked 0
        deviation = np.nanmean(recent, axis=-1) - centre[..., None]
    if direction == "above":
        deviation = np.maximum(deviation, 0.0)
    elif direction == "below":
        deviation = np.minimum(deviation, 0.0)
    floor = FLAT_BAND_REL * np.maximum(np.abs(centre), 1.0)
    with np.errstate(invalid="ignore"):
        z = np.abs(deviation) / np.maximum(spread, floor)[..., None]
        return np.where(np.isfinite(z), z / (z + 3.0), 0.0)


def _range_cap(
    x: np.ndarray, at: np.ndarray, context: int, look: _Lookbacks, margin: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The range cap before each ``at`` (module docs, step 5): ``(low, high)``, ``(n, k)`` each."""
    n = x.shape[0]
    if margin is None:
        return np.full((n, at.size), -np.inf), np.full((n, at.size), np.inf)
    lag = look.range_lag
    span = context - lag
    for_max, for_min = np.where(np.isnan(x), -np.inf, x), np.where(np.isnan(x), np.inf, x)
    old_high, old_low = _window_max(for_max, at - lag, span), -_window_max(-for_min, at - lag, span)
    if lag:
        new_high, new_low = _window_max(for_max, at, lag), -_window_max(-for_min, at, lag)
    else:
        new_high, new_low = np.full(old_high.shape, -np.inf), np.full(old_high.shape, np.inf)
    seen = np.isfinite(old_high)
    with np.errstate(invalid="ignore"):
        slack = np.where(seen, margin * (old_high - old_low), 0.0)
        above, below = new_high > old_high + slack, new_low < old_low - slack
    # No sample ``range_points`` or more before: the range is too young to say "never seen".
    young = look.range_points
    aged = np.isfinite(_window_max(for_max, at - young + 1, context - young + 1)) if young else seen
    off = ~(seen & aged)  # no range (yet); a side left has paged that incident
    return np.where(off | below, -np.inf, old_low - slack), np.where(off | above, np.inf, old_high + slack)


def calibrated_score(
    actual: np.ndarray,
    forecast: QuantileForecast,
    bands: StageBands,
    scoring: ScoringConfig,
) -> Score:
    """Score ``actual`` ``(r, h)`` against the model's median and the stage's band.

    Args:
        actual: the chunks' values, ``(r, h)``; NaN = no sample.
        forecast: the model's forecast for those ``r`` chunks (median and the band at
            ``scoring.quantiles``).
        bands: :func:`stage_bands` for the same ``r`` chunks, ``(r, h)`` each.
        scoring: direction, ``min_deviation`` and the calibration's ``gain``.

    Returns:
        :class:`~openanomaly.scoring.Score` ``(r, h)``: the alert band is
        ``yhat +- gain * max(edge, model half-width)``, clipped to the range cap but
        always containing ``yhat``.
    """
    low_q, high_q = scoring.quantiles
    reference = np.where(np.isfinite(bands.reference), bands.reference, forecast.median)
    gain = scoring.calibration.gain

    def band(centre: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        upper = np.minimum(centre + half, np.maximum(bands.high, centre))
        lower = np.maximum(centre - half, np.minimum(bands.low, centre))
        score = band_score(
            actual,
            yhat=centre,
            yhat_lower=lower,
            yhat_upper=upper,
            direction=scoring.direction,
            min_deviation=scoring.min_deviation,
        )
        return score, lower, upper

    stage_score, _, _ = band(reference, gain * bands.edge)
    model_half = 0.5 * (forecast.level(high_q) - forecast.level(low_q))
    score, lower, upper = band(forecast.median, gain * np.fmax(bands.edge, model_half))
    # The stage knows the reference's error record, not the model's: a point is rare only
    # when it is outside both bands, so a model can veto the reference's alerts (it
    # predicted the value) but cannot flood (its residuals are not calibrated).
    return Score(np.fmin(score, stage_score), forecast.median, lower, upper)


def score_chunks(
    values: np.ndarray,
    starts: np.ndarray,
    rows: np.ndarray,
    actual: np.ndarray,
    forecast: QuantileForecast,
    scoring: ScoringConfig,
    *,
    context: int,
    step_s: float,
    calibrated: bool = False,
) -> Score:
    """Score the forecast chunks ``rows`` of ``values``: calibrated, or the raw band when disabled.

    Alerts (``> 1``) come from the stage's band, or from the model's own band when it is
    ``calibrated`` (``default``); every other point is ranked by :func:`sustained_rarity`
    either way, so "how rare" means the same for every model.

    Args:
        values: float ``(n, m)`` grid values holding every chunk and its context.
        starts: int ``(k,)`` first column of each chunk (the same for every series).
        rows: int ``(r,)`` the forecast chunks, indices into the series-major ``n * k``.
        actual: ``(r, h)`` their values; ``forecast``: the model's forecast for them.
        scoring: the pipeline's scoring (``calibration.enabled`` switches the stage).
        context: the pipeline's context in points; ``step_s``: its step in seconds.
        calibrated: the model's band is already calibrated (the stage only ranks).
    """
    config = scoring.calibration
    if not config.enabled:
        return score_forecast(actual, forecast, scoring)
    n, k, h = values.shape[0], len(starts), actual.shape[1]
    if calibrated:
        score = score_forecast(actual, forecast, scoring)
    else:
        bands = stage_bands(values, starts, horizon=h, context=context, step_s=step_s, config=config)
        picked = StageBands(*(field.reshape(n * k, *field.shape[2:])[rows] for field in bands))
        score = calibrated_score(actual, forecast, picked, scoring)
    rank = sustained_rarity(
        values, starts, horizon=h, context=context, config=config, direction=scoring.direction
    ).reshape(n * k, h)[rows]
    inside = np.where(np.isnan(score.anomaly_score), np.nan, rank)
    return score._replace(anomaly_score=np.where(score.anomaly_score > 1, score.anomaly_score, inside))
