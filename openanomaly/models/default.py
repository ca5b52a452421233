"""The ``default`` detector: a robust seasonal baseline whose band is the *record* residual.

Pick it when you do not know which model to use. It needs no fitting, no GPU and no
per-metric tuning, runs as vectorised numpy over the whole batch, and is what
``model: default`` runs. It is the model behind OpenAnomaly's NAB score
(``docs/accuracy.md``). A backtest (thousands of overlapping contexts of one series)
takes :meth:`DefaultForecaster.forecast_chunks` instead, which gives the same forecasts
incrementally (:mod:`openanomaly.models.default_rolling`).

For each context row (oldest first, NaN = no sample) it:

1. **Finds candidate seasons** from the context itself: the autocorrelation (via FFT)
   and its ``periods`` highest *prominent* peaks (each rises at least ``min_prominence``
   above the dip before it and reaches ``min_acf``; at least three cycles in the
   context). A random walk has none; hourly-sampled traffic offers daily and weekly.
2. **Forecasts** one step ahead with robust baselines and keeps, per row, the one whose
   one-step residuals over the last ``history`` context points are smallest (RMS):

   * *level*: the median of the last ``level_window`` points;
   * *seasonal* (one per candidate period): the median of the same-phase values of the
     last ``seasons`` periods, shifted by the median of the last ``level_window``
     deviations from that profile, so a level shift is followed within a few points
     (one alert per shift, not one per point).
3. **Sets the band at the record residual**: the alert edge is ``gain`` x the largest
   |residual| (around their median) over the last ``history`` points, so the score is
   the new deviation as a ratio to the worst one seen recently: ``|residual| / edge``
   inside the band, ``0.5 + |residual| / (2 edge)`` outside, 1 on the edge. This is
   the anomaly-likelihood idea without a distributional assumption: each series
   calibrates itself (a spiky metric tolerates its usual spikes, a smooth one alerts on
   a small step), so ONE threshold (``score > 1``) means the same rarity everywhere. It
   also works as a cooldown: after an incident the record is the incident, and only a
   worse deviation alerts again for ``history`` points.
4. **Lowers the bar for sustained deviations** (``short_window`` > 1): when the mean
   |residual| of the last ``short_window`` points (the new one included) would beat
   its own record over the history, the edge drops to what makes it do so, but never
   below ``floor`` x the single-point record (so the score stays a ratio to the
   record, comparable across series). ``gain`` multiplies the final edge, so it moves
   the alert threshold without changing how points rank.
5. **Alerts once per incident** (``cooldown``): the edge is worked out at every history
   point too, to know which recent points alerted; within ``cooldown`` points of an
   alert only a deviation ``gain`` x worse than the worst alerted one alerts again. A
   dip that keeps deepening beats the sustained test at every point; without this it
   pages at every point, with it once.
6. **Caps the band at the context's range** (``range_margin``): a value more than
   ``range_margin`` x (max - min) beyond everything the context has seen alerts however
   smooth the way there (NAB's HTM detector has the same "spatial anomaly" rule, with
   the same 5 %). The range is that of the context before its last ``range_lag``
   points, so a slow drift alerts when it leaves the old range instead of dragging the
   range along point by point. Leaving the range starts an incident, as an alert does
   for step 5: while one of the last ``range_lag`` points lies above it, the upper cap
   is off (below: the lower one) and the record band alone decides on that side, so a
   ramp or a new level pages once, not at each new high. In a long context the cap
   waits for ``range_days`` (5) days of samples: a younger series has not shown its
   week's usual highs and lows (both rules cross-validated, ``docs/accuracy.md``); a
   shorter context is the range its pipeline asked for, capped once the series fills
   it. The longer the context, the more "never seen" means: give ``default`` weeks of
   context (the NAB figures use 28 days).

The band is symmetric around the forecast. At the levels 0.05/0.95 it is the alert
edge; other levels scale it like normal quantiles (0.99 is 1.41x wider, 0.5 is the
forecast). The forecast is flat across the horizon except for the seasonal profile
and the band does not widen, so use ``infer_every`` equal to ``step`` (one point per
forecast): that is what makes the record and the sustained test exact.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from openanomaly.config import CalibrationConfig
from openanomaly.errors import ModelError
from openanomaly.models.base import (
    QuantileForecast,
    check_forecast,
    reject_unknown_params,
    validate_quantile_levels,
)
from openanomaly.models.baselines import as_contexts
from openanomaly.times import points_spanning

__all__ = ["DefaultForecaster", "candidate_periods", "detect_period"]

_STAGE = CalibrationConfig()
"""The knobs ``default`` shares with the calibration stage (same names, same meaning: the
stage is ``default``'s band for any model), so one set of cross-validated values serves both."""

_ROLLING_MIN_CHUNKS = 16
"""Fewer contexts per series than this go through ``forecast`` (nothing to update incrementally)."""


def _ffill(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along the last axis (leading NaN stay NaN)."""
    finite = np.isfinite(values)
    index = np.where(finite, np.arange(values.shape[1])[None, :], 0)
    np.maximum.accumulate(index, axis=1, out=index)
    filled = np.take_along_axis(values, index, axis=1)
    return np.where(np.isfinite(filled), filled, np.nan)


def _acf_peaks(
    values: np.ndarray, *, min_period: int, min_acf: float, min_prominence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation ``(n, L // 2 + 1)`` of each row and the mask of its usable peaks."""
    length = values.shape[1]
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1, keepdims=True)
    mean = total / np.maximum(count, 1)[:, None]
    centred = np.where(finite, values - np.nan_to_num(mean), 0.0)
    size = 1 << int(np.ceil(np.log2(max(2 * length, 2))))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, : length // 2 + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        acf = acf / acf[:, :1]
    acf = np.nan_to_num(acf, nan=0.0)
    lags = np.arange(acf.shape[1])
    peak = np.zeros_like(acf, dtype=bool)
    peak[:, 1:-1] = (acf[:, 1:-1] >= acf[:, :-2]) & (acf[:, 1:-1] > acf[:, 2:])
    dip = np.minimum.accumulate(acf, axis=1)
    ok = (
        peak
        & (lags[None, :] >= min_period)
        & (lags[None, :] * 3 <= count[:, None])
        & (acf >= min_acf)
        & (acf - dip >= min_prominence)
    )
    return acf, ok


def detect_period(
    values: np.ndarray, *, min_period: int = 4, min_acf: float = 0.3, min_prominence: float = 0.2
) -> np.ndarray:
    """The dominant seasonal period of each row, in points (0 = none).

    Args:
        values: float ``(n, L)``, forward-filled; leading NaN allowed.
        min_period: shortest lag considered.
        min_acf: a period's autocorrelation must reach this.
        min_prominence: and rise this much above the lowest autocorrelation at shorter lags.

    Returns:
        int64 ``(n,)``; a period is at most a third of the finite part of the row, so
        at least three cycles back it up.
    """
    return candidate_periods(
        values, count=1, min_period=min_period, min_acf=min_acf, min_prominence=min_prominence
    )[:, 0]


def _rms(values: np.ndarray) -> np.ndarray:
    """Root mean square along the last axis ignoring NaN (NaN where a row has none)."""
    finite = np.isfinite(values)
    total = np.where(finite, values * values, 0.0).sum(axis=-1)
    count = finite.sum(axis=-1)
    return np.where(count > 0, np.sqrt(total / np.maximum(count, 1)), np.nan)


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median along the last axis ignoring NaN (NaN where a row has none)."""
    ordered = np.sort(values, axis=-1)
    size = ordered.shape[-1]
    if size and not np.isnan(ordered[..., -1]).any():  # no NaN: fixed middle positions
        return 0.5 * (ordered[..., (size - 1) // 2] + ordered[..., size // 2])
    count = np.isfinite(ordered).sum(axis=-1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0), axis=-1)[..., 0]
    high = np.take_along_axis(ordered, np.minimum(count // 2, max(size - 1, 0)), axis=-1)[..., 0]
    return np.where(count[..., 0] > 0, 0.5 * (low + high), np.nan)


def candidate_periods(
    values: np.ndarray,
    *,
    count: int = 2,
    min_period: int = 4,
    min_acf: float = 0.3,
    min_prominence: float = 0.2,
) -> np.ndarray:
    """Up to ``count`` candidate seasonal periods per row, best autocorrelation first (0 = none).

    Like :func:`detect_period` but keeps the ``count`` highest prominent peaks, so a
    series with both a daily and a weekly cycle offers both and the forecaster keeps the
    one that predicts its own context better.

    Returns:
        int64 ``(n, count)``.
    """
    acf, ok = _acf_peaks(values, min_period=min_period, min_acf=min_acf, min_prominence=min_prominence)
    ranked = np.where(ok, acf, -np.inf)
    lags = np.arange(acf.shape[1])
    chosen = np.zeros((values.shape[0], count), dtype=np.int64)
    for j in range(count):
        best = np.argmax(ranked, axis=1)
        found = np.isfinite(ranked[np.arange(len(best)), best])
        chosen[:, j] = np.where(found, best, 0)
        # 1-4x a chosen period (within 2 %) repeats it: offer a different cycle next
        # (a weekly cycle, 7x the daily one, stays a candidate).
        base = np.maximum(chosen[:, j], 1)[:, None]
        multiple = np.round(lags[None, :] / base)
        slack = np.maximum(1, 0.02 * lags[None, :])
        near = (multiple >= 1) & (multiple <= 4) & (np.abs(lags[None, :] - multiple * base) <= slack)
        ranked = np.where(near & found[:, None], -np.inf, ranked)
    return chosen


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive columns ignoring NaN, ``(n, m - window + 1)``."""
    finite = np.isfinite(values)
    total = np.concatenate(
        [np.zeros((values.shape[0], 1)), np.cumsum(np.where(finite, values, 0.0), axis=1)], 1
    )
    count = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(finite, axis=1)], 1)
    sums = total[:, window:] - total[:, :-window]
    counts = count[:, window:] - count[:, :-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _left_pad(values: np.ndarray, first: int) -> np.ndarray:
    """``values[:, first:]``, NaN-padded on the left when ``first`` is negative."""
    if first >= 0:
        return values[:, first:]
    return np.concatenate([np.full((values.shape[0], -first), np.nan), values], axis=1)


def _window_median(values: np.ndarray, window: int) -> np.ndarray:
    """NaN-ignoring median of each run of ``window`` columns, ``(n, m - window + 1)``."""
    return _nanmedian(np.lib.stride_tricks.sliding_window_view(values, window, axis=1))


class DefaultForecaster:
    """Robust seasonal/level baseline + record-residual band (spec ``default``; see module docs).

    Args:
        level_window: points in the level median (and the seasonal level correction).
        seasons: past periods in the seasonal median.
        history: context points whose one-step residuals pick the baseline and set the
            record (the band); also how long an incident raises the bar. Noise beats the
            record of ``N`` points about once in ``N``, so the longer the record the
            rarer a page: 864 (three days at 5 minutes) against 576 took NAB 72.9 -> 77.7
            at score > 1, same windows hit, false alerts 56 -> 34; cross-validated, 1008
            loses windows (``docs/accuracy.md``).
        history_days: when the step is known (every pipeline, ``/v1/detect``), the record
            covers at least this many days too (:meth:`for_step`; 0: points only).
        short_window: points in the sustained-deviation test (1: off).
        gain: the alert edge as a multiple of the record residual.
        periods: candidate seasonal periods tried per series.
        floor: the sustained test never lowers the edge below this fraction of the
            single-point one.
        cooldown: points after an alert during which only a deviation ``gain`` x worse
            than the worst alerted one alerts (0: off).
        range_margin: the band never reaches past the context's range widened by this
            fraction of it (None: no range cap).
        range_lag: the range is that of the context before its last ``range_lag`` points.
        range_days: when the step is known, the cap waits until the series has this many
            days of samples in the context, or fills a shorter context (module docs,
            step 6; 0: from the first sample).
        min_acf, min_prominence: how clear a season must be to be used (see ``detect_period``).
        batch_rows: rows processed at once, to bound memory on large batches.
    """

    spec: ClassVar[str] = "default"
    calibrated: ClassVar[bool] = True
    """Its band is already the series' own record band, with the sustained-deviation test,
    one alert per incident and the range cap built in, so the calibration stage keeps its
    alerts and only ranks the points inside its band. Measured (docs/accuracy.md): NAB
    77.7 and SMD 48.7 at score > 1 (76.6 and 48.7 held out; 63.0 on unseen NAB files, for
    an older version), against 38.7 and 42.4 for the recent median scored by the stage;
    kept as ``default`` until the stage does better held-out."""

    def __init__(
        self,
        *,
        level_window: int = _STAGE.level_window,
        seasons: int = _STAGE.seasons,
        history: int = _STAGE.history,
        history_days: float = _STAGE.history_days,
        short_window: int = _STAGE.short_window,
        cooldown: int = _STAGE.cooldown,
        range_lag: int = _STAGE.range_lag,
        gain: float = _STAGE.gain,
        periods: int = 2,
        floor: float = _STAGE.floor,
        range_margin: float | None = _STAGE.range_margin,
        range_days: float = _STAGE.range_days,
        min_acf: float = 0.3,
        min_prominence: float = 0.2,
        batch_rows: int = 256,
    ) -> None:
        for name, value, low in (
            ("level_window", level_window, 1),
            ("seasons", seasons, 1),
            ("history", history, 8),
            ("short_window", short_window, 1),
            ("cooldown", cooldown, 0),
            ("range_lag", range_lag, 0),
            ("periods", periods, 1),
            ("batch_rows", batch_rows, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ModelError(f"{name} must be an integer >= {low}, got {value!r}", spec=self.spec)
        if isinstance(gain, bool) or not isinstance(gain, int | float) or not gain > 0:
            raise ModelError(f"gain must be a number > 0, got {gain!r}", spec=self.spec)
        for name, days in (("history_days", history_days), ("range_days", range_days)):
            if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
                raise ModelError(f"{name} must be a number >= 0, got {days!r}", spec=self.spec)
        if range_margin is not None and (
            isinstance(range_margin, bool) or not isinstance(range_margin, int | float) or range_margin < 0
        ):
            raise ModelError(
                f"range_margin must be a number >= 0 or null, got {range_margin!r}", spec=self.spec
            )
        self.level_window = level_window
        self.seasons = seasons
        self.history = history
        self.history_days = float(history_days)
        self.range_days = float(range_days)
        self.range_points = 0
        """Samples the context must hold before the range caps the band (``for_step``)."""
        self._for_step: dict[tuple[int, int], DefaultForecaster] = {}
        self.short_window = short_window
        self.cooldown = cooldown
        self.range_lag = range_lag
        self.gain = float(gain)
        self.periods = periods
        self.floor = float(floor)
        self.range_margin = None if range_margin is None else float(range_margin)
        self.min_acf = float(min_acf)
        self.min_prominence = float(min_prominence)
        self.batch_rows = batch_rows

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> DefaultForecaster:
        """Registry factory: ``default`` takes no model name."""
        cls.check_params(name, **params)
        return cls(**params)

    @classmethod
    def check_params(cls, name: str, **params: Any) -> None:
        """Validate options at config load: the constructor's checks, nothing loaded.

        Raises:
            ModelError: a model name, an unknown option, or a value out of range.
        """
        if name:
            raise ModelError(f"takes no model name, got {name!r}", spec=cls.spec)
        reject_unknown_params(params, inspect.signature(cls).parameters, spec=cls.spec)
        cls(**params)

    def for_step(self, step_s: float) -> DefaultForecaster:
        """This forecaster for series sampled every ``step_s`` seconds: its windows in days, in points.

        Why: a record shorter than a day has not seen the day's usual worst moment (the
        nightly batch, the morning ramp) and pages on it every day. ``history`` = 864
        points is three days at 5 minutes but 14.4 hours at 1 minute. Chosen by
        leave-one-group-out cross-validation (``docs/accuracy.md``): every held-out SMD
        machine (1-minute) picked a day-long record; with it SMD goes 26.0 -> 44.1 NAB
        standard at score > 1; NAB's 5-minute and coarser files are unchanged (576 points,
        then, was already more than a day there).

        The range cap waits for ``range_days`` of samples: a range over a day or two has
        not seen the week's usual extremes, and a new series paged on them (module
        docs, step 6).
        """
        history = max(self.history, points_spanning(self.history_days, step_s))
        key = (history, points_spanning(self.range_days, step_s))
        if key == (self.history, self.range_points):
            return self
        if key not in self._for_step:
            stepped = copy.copy(self)
            (stepped.history, stepped.range_points), stepped._for_step = key, {}
            self._for_step[key] = stepped
        return self._for_step[key]

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast ``horizon`` points after each context row, with a record-residual band.

        Args:
            contexts: float ``(n, L)``, oldest first, left-padded with NaN.
            horizon: steps to forecast, > 0.
            quantiles: strictly increasing levels in (0, 1).

        Returns:
            ``QuantileForecast`` with ``quantiles`` ``(n, horizon, q)``; rows without a finite
            value are NaN.

        Raises:
            ModelError: bad shapes, horizon or levels.
        """
        values = as_contexts(contexts, horizon, spec=self.spec)
        levels = validate_quantile_levels(quantiles)
        n = values.shape[0]
        band = np.full((n, horizon, levels.size), np.nan)
        median = np.full((n, horizon), np.nan)
        for start in range(0, n, self.batch_rows):
            stop = min(n, start + self.batch_rows)
            band[start:stop], median[start:stop] = self._forecast_rows(values[start:stop], horizon, levels)
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=median),
            n_series=n,
            horizon=horizon,
            spec=self.spec,
        )

    def _baselines(self, values: np.ndarray, periods: np.ndarray, r: int, horizon: int) -> np.ndarray:
        """One-step baselines at the last ``r`` context positions and the horizon.

        Each baseline at position ``t`` uses only values before ``t`` (and, in the
        horizon, only the context).

        Returns:
            ``(1 + m, n, r + horizon)``: the level baseline, then one seasonal baseline per
            candidate period column (NaN where a row has no such period).
        """
        n, length = values.shape
        w = self.level_window
        # Level at position t = median of values[t - w : t], for t = length - r .. length.
        level = _window_median(_left_pad(values, length - r - w), w)  # (n, r + 1)
        out = [np.concatenate([level, np.repeat(level[:, -1:], horizon - 1, axis=1)], axis=1)]
        targets = np.concatenate([np.arange(length - r, length), np.arange(length, length + horizon)])
        anchor = np.minimum(targets, length)
        k = np.arange(1, self.seasons + 1)
        reach = int(self.seasons * max(int(periods.max(initial=0)), 1))
        padded = np.concatenate([np.full((n, reach), np.nan), values, np.full((n, 1), np.nan)], axis=1)
        for j in range(periods.shape[1]):
            p = np.maximum(periods[:, j], 1)
            index = targets[None, :, None] - k[None, None, :] * p[:, None, None]  # (n, r + h, K)
            index = np.where(index < anchor[None, :, None], index, length)  # length -> the NaN column
            seasonal = _nanmedian(
                np.take_along_axis(padded, (index + reach).reshape(n, -1), axis=1).reshape(index.shape)
            )
            # Level correction: median deviation from the profile over the w points before.
            deviation = values[:, length - r :] - seasonal[:, :r]
            correction = _window_median(_left_pad(deviation, -w), w)  # (n, r + 1)
            correction = np.concatenate([correction, np.repeat(correction[:, -1:], horizon - 1, axis=1)], 1)
            seasonal = seasonal + np.nan_to_num(correction)
            out.append(np.where((periods[:, j] > 0)[:, None], seasonal, np.nan))
        return np.stack(out)

    def _edges(self, size: np.ndarray) -> np.ndarray:
        """The alert edge (before ``gain``) for the point after ``size`` ``(n, r)``, ``(n,)``.

        The edge at each position is the record |residual| before it, lowered when the
        mean |residual| of the ``k`` points ending there would beat its own record (then
        the point may be at most ``k * record - (sum of the k - 1 before it)``), never
        below ``floor`` x the single-point record. It is computed at every history
        position, not only the new one, to know which recent points alerted: during an
        incident (an alert within the last ``cooldown`` points) only a deviation ``gain`` x
        worse than the worst alerted one alerts again, so one incident is one alert.
        """
        n, r = size.shape
        filled = np.where(np.isfinite(size), size, 0.0)
        zero = np.zeros((n, 1))
        # single[:, i] = record before position i (i = r: the new point).
        single = np.concatenate([zero, np.maximum.accumulate(filled, axis=1)], axis=1)  # (n, r + 1)
        edge = single
        k = min(self.short_window, r)
        if k > 1:
            stat = _rolling_mean(size, k)  # (n, r - k + 1); stat[:, m] ends at position m + k - 1
            record = np.maximum.accumulate(np.where(np.isfinite(stat), stat, 0.0), axis=1)
            record = np.concatenate([np.zeros((n, k)), record], axis=1)  # record of windows ending before i
            total = np.concatenate([zero, np.cumsum(filled, axis=1)], axis=1)  # (n, r + 1)
            before = np.concatenate([np.zeros((n, k - 1)), total[:, k - 1 :] - total[:, : r + 2 - k]], 1)
            edge = np.minimum(single, np.maximum(k * record - before, self.floor * single))
        cool = min(self.cooldown, r)
        if cool:
            recent = filled[:, r - cool :]
            alerted = recent > self.gain * edge[:, r - cool : r]
            worst = np.max(np.where(alerted, recent, 0.0), axis=1)
            return np.maximum(edge[:, r], worst)
        return edge[:, r]

    def _cap_to_range(
        self, band: np.ndarray, ranges: np.ndarray, yhat: np.ndarray, context: int
    ) -> np.ndarray:
        """Clip the band to the context's range widened by ``range_margin`` of it (module docs, step 6).

        ``ranges`` ``(n, 5)``: low and high of the context before its last ``range_lag``
        points, low and high of those last points, and the context's points since its
        first sample (:func:`_ranges`). Where those last points already left the range,
        the incident has paged; where the series is younger than ``range_points`` (or,
        in a ``context`` shorter than that, than the context's part before its last
        ``range_lag`` points), the range has not seen enough: the band stays as it is.
        """
        low, high, recent_low, recent_high, seen = ranges.T
        slack = self.range_margin * (high - low)
        young = seen < min(self.range_points, context - self.range_lag)
        with np.errstate(invalid="ignore"):
            above, below = (recent_high > high + slack) | young, (recent_low < low - slack) | young
        cap_hi = np.where(above, np.inf, np.fmax(high + slack, np.fmax.reduce(yhat, axis=1)))
        cap_lo = np.where(below, -np.inf, np.fmin(low - slack, np.fmin.reduce(yhat, axis=1)))
        return np.clip(band, cap_lo[:, None, None], cap_hi[:, None, None])

    def _band(
        self,
        yhat: np.ndarray,
        edge: np.ndarray,
        ranges: np.ndarray,
        context: int,
        levels: np.ndarray,
        empty: np.ndarray,
    ) -> np.ndarray:
        """The quantile band ``(n, h, q)`` around ``yhat`` from the alert ``edge`` (before ``gain``).

        A flat history (record 0) makes any departure alert; scoring floors the width.
        ``gain`` scales the whole edge, so it moves the alert threshold and nothing else.
        """
        # Signed normal quantiles, scaled so the 0.95 level sits at gain x edge: (q,).
        scale = self.gain * _norm_ppf(levels) / _norm_ppf(np.array([0.95]))
        spread = edge[:, None] * scale[None, :]
        band = yhat[:, :, None] + spread[:, None, :]
        if self.range_margin is not None:
            band = self._cap_to_range(band, ranges, yhat, context)
        band[empty] = np.nan
        yhat[empty] = np.nan
        return np.maximum.accumulate(band, axis=2)

    def _forecast_rows(
        self, raw: np.ndarray, horizon: int, levels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        length = raw.shape[1]
        values = _ffill(raw)
        periods = candidate_periods(
            values, count=self.periods, min_acf=self.min_acf, min_prominence=self.min_prominence
        )
        r = min(self.history, max(length - 1, 1))
        baselines = self._baselines(values, periods, r, horizon)  # (1 + m, n, r + h)
        actual = values[:, length - r :]
        residuals = actual[None] - baselines[:, :, :r]
        err = _rms(residuals)  # (1 + m, n)
        choice = np.argmin(np.where(np.isfinite(err), err, np.inf), axis=0)  # (n,)
        baseline = np.take_along_axis(baselines, choice[None, :, None], axis=0)[0]
        residual = np.take_along_axis(residuals, choice[None, :, None], axis=0)[0]  # (n, r)

        centre = np.nan_to_num(_nanmedian(residual))
        yhat = baseline[:, r:] + centre[:, None]  # (n, h)
        size = np.abs(residual - centre[:, None])  # (n, r)
        edge = self._edges(size)  # (n,), the same on both sides
        empty = ~np.isfinite(raw).any(axis=1)
        ranges = _ranges(values, self.range_lag)
        return self._band(yhat, edge, ranges, length, levels, empty), yhat

    def forecast_chunks(
        self,
        values: np.ndarray,
        ends: np.ndarray,
        rows: np.ndarray,
        context: int,
        horizon: int,
        quantiles: Sequence[float],
    ) -> QuantileForecast:
        """:meth:`forecast` of many consecutive contexts of the same series, incrementally.

        Equal to ``forecast(contexts[rows], horizon, quantiles)`` with ``contexts[i * k + j]
        = values[i, ends[j] - context : ends[j]]`` (``k = len(ends)``); the backtest's path
        (:mod:`openanomaly.detect`). Each series is forward-filled once and its contexts'
        autocorrelations are updated point by point instead of recomputed
        (:mod:`openanomaly.models.default_rolling`): 30-70x faster on NAB and SMD
        (``docs/accuracy.md``, Speed).

        Args:
            values: float ``(n, m)``, NaN-padded on the left so that ``ends - context >= 0``.
            ends: int ``(k,)``, increasing: the column after each context.
            rows: int ``(r,)``, increasing flat indices ``i * k + j`` to forecast.
        """
        ends = np.asarray(ends, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        k = max(len(ends), 1)
        series, last_of_row = rows // k, ends[rows % k] if len(ends) else rows
        if len(ends) < _ROLLING_MIN_CHUNKS:  # a scheduled window: nothing to share, no compiled code
            columns = (last_of_row - context)[:, None] + np.arange(context)
            return self.forecast(values[series[:, None], columns], horizon, quantiles)
        from openanomaly.models.default_rolling import rolling_periods, rolling_rows

        levels = validate_quantile_levels(quantiles)
        yhat = np.full((rows.size, horizon), np.nan)
        edge = np.full(rows.size, np.nan)
        ranges = np.full((rows.size, 5), np.nan)
        empty = np.ones(rows.size, dtype=bool)
        for i in np.unique(series):
            picked = np.flatnonzero(series == i)
            last = last_of_row[picked]
            raw = np.asarray(values[i], dtype=np.float64)
            # first sample at or after each column (len(raw): none)
            after = np.flatnonzero(np.isfinite(raw))
            firsts = np.append(after, raw.size)[np.searchsorted(after, last - context)]
            live = firsts < last
            picked, last, firsts = picked[live], last[live], firsts[live]
            empty[picked] = False
            filled = _ffill(raw[None, :])[0]
            periods, fragile = rolling_periods(
                filled,
                firsts,
                last,
                context=context,
                count=self.periods,
                min_period=4,
                min_acf=self.min_acf,
                min_prominence=self.min_prominence,
            )
            if fragile.any():  # a decision within rounding of flipping: the reference decides
                windows = raw[(last[fragile] - context)[:, None] + np.arange(context)[None, :]]
                periods[fragile] = candidate_periods(
                    _ffill(windows),
                    count=self.periods,
                    min_acf=self.min_acf,
                    min_prominence=self.min_prominence,
                )
            ranges[picked, 4] = last - firsts  # the forward-filled context's samples, as _ranges counts
            yhat[picked], edge[picked], ranges[picked, :4] = rolling_rows(
                filled,
                firsts,
                last,
                periods,
                context,
                horizon,
                self.level_window,
                self.seasons,
                self.history,
                self.short_window,
                self.cooldown,
                self.range_lag,
                self.gain,
                self.floor,
            )
        band = self._band(yhat, edge, ranges, context, levels, empty)
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=yhat),
            n_series=rows.size,
            horizon=horizon,
            spec=self.spec,
        )


def _ranges(values: np.ndarray, range_lag: int) -> np.ndarray:
    """Each forward-filled row's low and high before its last ``range_lag`` points, of those, and its samples.

    ``(n, 5)``: what :meth:`DefaultForecaster._cap_to_range` reads.

    Half the samples at most are "last", so a young series still has a range to compare with.
    fmin/fmax skip NaN; a part with no sample gets NaN, which never caps the band.
    """
    length = values.shape[1]
    seen = np.isfinite(values)  # forward-filled: every point after the first sample
    samples = seen.sum(axis=1)
    lag = np.minimum(range_lag, samples // 2)[:, None]
    is_recent = np.arange(length)[None, :] >= length - lag
    old = np.where(seen & ~is_recent, values, np.nan)
    recent = np.where(seen & is_recent, values, np.nan)
    return np.stack(
        [
            np.fmin.reduce(old, axis=1),
            np.fmax.reduce(old, axis=1),
            np.fmin.reduce(recent, axis=1),
            np.fmax.reduce(recent, axis=1),
            samples,
        ],
        axis=1,
    )


def _norm_ppf(p: np.ndarray) -> np.ndarray:
    """Standard normal quantiles of ``p`` (same shape)."""
    dist = NormalDist()
    return np.array([dist.inv_cdf(float(x)) for x in np.ravel(p)]).reshape(np.shape(p))
