"""The ``default`` detector: a robust seasonal baseline with a conformal band and alert cooldown.

Pick it when you do not know which model to use. It needs no fitting, no GPU and no
per-metric tuning, runs as vectorised numpy over the whole batch (10,000 series x a few
thousand context points in seconds), and is what ``model: default`` runs. It is the
model behind OpenAnomaly's NAB score (``docs/accuracy.md``).

For each context row (oldest first, NaN = no sample) it:

1. **Finds the season** from the context itself: the autocorrelation (via FFT) of the
   context, and the lag of its highest *prominent* peak (one that rises at least
   ``min_prominence`` above the dip before it and reaches ``min_acf``). A random walk
   has no such peak, so it gets no season. No period has to be configured.
2. **Forecasts** with two robust baselines and keeps, per row, the one whose
   in-context one-step residuals are smaller (median absolute residual):

   * *level*: the median of the last ``level_window`` points;
   * *seasonal*: the median of the same-phase values of the last ``seasons`` periods,
     shifted by the median of the last ``level_window`` deviations from that
     seasonal profile, so a level shift is followed within a few points instead of
     a few periods.
3. **Calibrates the band conformally**: the band at level ``q`` is the forecast plus
   the empirical ``q``-quantile of the baseline's own one-step residuals over the last
   ``residual_window`` context points (centred on their median). So a spiky metric
   gets a wide band and a smooth one a narrow band, and scores are comparable across
   series (the same ``anomaly_score`` threshold means the same rarity everywhere).
4. **Cools down after a deviation**: the upper (lower) band edge is at least the
   largest positive (negative) residual of the last ``cooldown`` points. Right after
   an alert, the same deviation again does not alert again; only a *larger* one does.
   This is what a pager wants (one page per incident, a new page when it gets worse),
   and NAB scores it the same way: only the first detection in a window counts and
   every further alert outside one is a false positive. Set ``cooldown=0`` to turn
   it off.

The forecast is the same for every step of the horizon except for the seasonal
profile; the band does not widen with the horizon, so use ``infer_every`` equal to
``step`` (one point per forecast), which is also what makes the cooldown exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import QuantileForecast, check_forecast, validate_quantile_levels
from openanomaly.models.baselines import as_contexts

__all__ = ["DefaultForecaster", "detect_period"]


def _ffill(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along the last axis (leading NaN stay NaN)."""
    finite = np.isfinite(values)
    index = np.where(finite, np.arange(values.shape[1])[None, :], 0)
    np.maximum.accumulate(index, axis=1, out=index)
    filled = np.take_along_axis(values, index, axis=1)
    return np.where(np.isfinite(filled), filled, np.nan)


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
    best = np.argmax(np.where(ok, acf, -np.inf), axis=1)
    return np.where(ok.any(axis=1), best, 0).astype(np.int64)


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[i, index[i, ...]]`` with NaN where the index is outside ``[0, L)``."""
    n, length = values.shape
    valid = (index >= 0) & (index < length)
    flat = np.clip(index, 0, length - 1).reshape(n, -1)
    taken = np.take_along_axis(values, flat, axis=1).reshape(index.shape)
    return np.where(valid, taken, np.nan)


def _nanquantile(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles along the last axis ignoring NaN (linear interpolation), shape ``(..., q)``.

    ``np.nanquantile`` falls back to masked arrays for short axes and costs ~100x more;
    sorting once (NaN sorts last) and interpolating between order statistics is exact.
    """
    ordered = np.sort(values, axis=-1)
    count = np.isfinite(ordered).sum(axis=-1, keepdims=True)  # (..., 1)
    position = (count - 1) * levels  # (..., q)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(count - 1, 0))
    below = np.maximum(below, 0)
    low = np.take_along_axis(ordered, below, axis=-1)
    high = np.take_along_axis(ordered, above, axis=-1)
    result = low + (high - low) * (position - below)
    return np.where(count > 0, result, np.nan)


def _rms(values: np.ndarray) -> np.ndarray:
    """Root mean square along the last axis ignoring NaN (NaN where a row has none)."""
    finite = np.isfinite(values)
    total = np.where(finite, values * values, 0.0).sum(axis=-1)
    count = finite.sum(axis=-1)
    return np.where(count > 0, np.sqrt(total / np.maximum(count, 1)), np.nan)


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median along the last axis ignoring NaN (NaN where a row has none)."""
    return _nanquantile(values, np.array([0.5]))[..., 0]


class DefaultForecaster:
    """Robust seasonal/level baseline + conformal band + cooldown (spec ``default``).

    Args:
        level_window: points in the level median (and the seasonal level correction).
        seasons: past periods in the seasonal median.
        residual_window: recent one-step residuals that calibrate the band.
        cooldown: points after a deviation during which only a larger one alerts (0: off).
        min_acf, min_prominence: how clear a season must be to be used (see ``detect_period``).
        batch_rows: rows processed at once, to bound memory on large batches.
    """

    spec: ClassVar[str] = "default"

    def __init__(
        self,
        *,
        level_window: int = 6,
        seasons: int = 5,
        residual_window: int = 576,
        cooldown: int = 576,
        min_acf: float = 0.3,
        min_prominence: float = 0.2,
        batch_rows: int = 256,
    ) -> None:
        for name, value, low in (
            ("level_window", level_window, 1),
            ("seasons", seasons, 1),
            ("residual_window", residual_window, 8),
            ("cooldown", cooldown, 0),
            ("batch_rows", batch_rows, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ModelError(f"{name} must be an integer >= {low}, got {value!r}", spec=self.spec)
        self.level_window = level_window
        self.seasons = seasons
        self.residual_window = residual_window
        self.cooldown = cooldown
        self.min_acf = float(min_acf)
        self.min_prominence = float(min_prominence)
        self.batch_rows = batch_rows

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> DefaultForecaster:
        """Registry factory: ``default`` takes no model name."""
        if name:
            raise ModelError(f"takes no model name, got {name!r}", spec=cls.spec)
        return cls(**params)

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast ``horizon`` points after each context row, with a conformal band.

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

    def _forecast_rows(
        self, raw: np.ndarray, horizon: int, levels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n, length = raw.shape
        values = _ffill(raw)
        period = detect_period(values, min_acf=self.min_acf, min_prominence=self.min_prominence)
        w = self.level_window
        # Positions whose one-step residuals calibrate the band, and the forecast targets.
        r = min(self.residual_window, max(length - 1, 1))
        past = np.arange(length - r, length)  # (r,)
        ahead = np.arange(length, length + horizon)  # (h,)
        targets = np.concatenate([past, ahead])  # (r + h,)

        # Level baseline at each target: median of the w points before it (never after).
        # Forecast points use the last w context points (no look-ahead inside the horizon).
        anchor = np.minimum(targets, length)
        lag_w = np.arange(1, w + 1)
        level_idx = np.broadcast_to(anchor[None, :, None] - lag_w[None, None, :], (n, targets.size, w))
        level = _nanmedian(_gather(values, level_idx))  # (n, r + h)

        # Seasonal baseline: median of same-phase values k = 1..seasons periods back,
        # skipping the ones that fall inside the forecast horizon.
        k = np.arange(1, self.seasons + 1)
        p = np.maximum(period, 1)[:, None, None]
        season_idx = targets[None, :, None] - k[None, None, :] * p  # (n, r + h, K)
        season_idx = np.where(season_idx < anchor[None, :, None], season_idx, -1)
        seasonal = _nanmedian(_gather(values, season_idx))  # (n, r + h)
        # Level correction: median deviation from the profile over the w points before.
        profile_dev = values[:, past] - seasonal[:, :r]  # (n, r)
        dev_idx = np.broadcast_to(
            anchor[None, :, None] - lag_w[None, None, :] - (length - r), level_idx.shape
        )
        correction = _nanmedian(_gather(profile_dev, dev_idx))
        seasonal = seasonal + np.nan_to_num(correction)

        actual = values[:, past]
        res_level = actual - level[:, :r]
        res_season = actual - seasonal[:, :r]
        err_level = _rms(res_level)
        err_season = _rms(res_season)
        use_season = (period > 0) & np.isfinite(err_season) & (err_season < err_level)
        baseline = np.where(use_season[:, None], seasonal, level)
        residual = np.where(use_season[:, None], res_season, res_level)  # (n, r)

        centre = _nanmedian(residual)
        spread = _nanquantile(residual, levels) - centre[:, None]  # (n, q)
        yhat = baseline[:, r:] + np.nan_to_num(centre)[:, None]  # (n, h)
        spread = np.nan_to_num(spread)
        if self.cooldown:
            recent = residual[:, -self.cooldown :] - np.nan_to_num(centre)[:, None]
            with np.errstate(all="ignore"):
                up = np.nan_to_num(
                    np.nanmax(np.where(np.isfinite(recent), recent, -np.inf), axis=1), neginf=0
                )
                down = np.nan_to_num(
                    np.nanmin(np.where(np.isfinite(recent), recent, np.inf), axis=1), posinf=0
                )
            spread = np.where(levels[None, :] > 0.5, np.maximum(spread, up[:, None]), spread)
            spread = np.where(levels[None, :] < 0.5, np.minimum(spread, down[:, None]), spread)
        band = yhat[:, :, None] + spread[:, None, :]
        empty = ~np.isfinite(raw).any(axis=1)
        band[empty] = np.nan
        yhat[empty] = np.nan
        # The band must be ordered; a degenerate residual sample can tie levels, never invert them.
        band = np.maximum.accumulate(band, axis=2)
        return band, yhat
