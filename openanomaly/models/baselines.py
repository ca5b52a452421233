"""Distribution baselines: a flat forecast from the context's location and spread.

They ignore time structure, so pick them for metrics that hover around a level (error
rates, queue depths) or as a sanity baseline for the learned models. Both are vectorised
over the whole batch with nan-aware numpy; a batch of 10,000 series costs milliseconds.

Quantiles come from a normal distribution around the location:
``location + scale * Phi^-1(q)``, the same for every step of the horizon.

* ``zscore``: location = mean, scale = standard deviation. Sensitive to outliers in
  the context (a past spike widens the band).
* ``mad``: location = median, scale = 1.4826 * median absolute deviation (the MAD
  scaled to equal the standard deviation for normal data). Robust to a few outliers.

A flat context (scale 0) gives a zero-width band; the scorer handles that. A row with
no finite value at all gives NaN forecasts (every level, every step) instead of
failing the whole batch; the scorer turns those into NaN scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import (
    QuantileForecast,
    check_forecast,
    reject_unknown_params,
    validate_quantile_levels,
)

__all__ = ["MadForecaster", "ZScoreForecaster", "as_contexts", "normal_ppf"]

# Scales the median absolute deviation to a consistent estimate of the standard
# deviation for normal data (1 / Phi^-1(0.75)).
MAD_TO_STD = 1.4826


def normal_ppf(levels: np.ndarray) -> np.ndarray:
    """Standard-normal quantile function for each level, float64 ``(q,)``."""
    dist = NormalDist()
    return np.array([dist.inv_cdf(float(q)) for q in levels], dtype=np.float64)


def as_contexts(contexts: Any, horizon: int, *, spec: str) -> np.ndarray:
    """Check the shared ``forecast`` inputs and return the contexts as float64 ``(n, L)``.

    Raises:
        ModelError: contexts are not 2-D, or horizon is not a positive int.
    """
    array = np.asarray(contexts, dtype=np.float64)
    if array.ndim != 2:
        raise ModelError(f"contexts must be a 2-D (series, time) array, got shape {array.shape}", spec=spec)
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon <= 0:
        raise ModelError(f"horizon must be a positive integer, got {horizon!r}", spec=spec)
    return array


def _check_window(window: int | None, *, spec: str) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ModelError(f"window must be an integer >= 2 (context points used), got {window!r}", spec=spec)
    return window


class _DistributionForecaster:
    """Shared machinery: location/scale per row → normal quantiles repeated over the horizon."""

    spec: ClassVar[str]

    def __init__(self, *, window: int | None = None) -> None:
        """Args:
        window: use only the last ``window`` points of each context (``None``: all of it).
            A shorter window follows level changes sooner.
        """
        self.window = _check_window(window, spec=self.spec)

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> _DistributionForecaster:
        """Registry factory: ``name`` is empty for these bare specs."""
        if name:
            raise ModelError(f"takes no model name, got {name!r}", spec=cls.spec)
        return cls(**params)

    @classmethod
    def check_params(cls, name: str, **params: Any) -> None:
        """Validate ``params`` cheaply at config-load time.

        Raises:
            ModelError: a name was given, an unknown option, or a bad ``window``.
        """
        if name:
            raise ModelError(f"takes no model name, got {name!r}", spec=cls.spec)
        reject_unknown_params(params, ("window",), spec=cls.spec)
        _check_window(params.get("window"), spec=cls.spec)

    def _location_scale(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast a flat normal band for each row.

        Args:
            contexts: float ``(n, L)`` left-padded with NaN; inner NaNs are ignored.
            horizon: steps to forecast, > 0.
            quantiles: strictly increasing levels in (0, 1).

        Returns:
            ``QuantileForecast`` with ``quantiles`` ``(n, horizon, q)``; all-NaN rows are NaN.

        Raises:
            ModelError: bad shapes, horizon or levels.
        """
        values = as_contexts(contexts, horizon, spec=self.spec)
        levels = validate_quantile_levels(quantiles)
        n = values.shape[0]
        if self.window is not None:
            values = values[:, -self.window :]
        empty = ~np.isfinite(values).any(axis=1) if values.shape[1] else np.ones(n, dtype=bool)
        location = np.full(n, np.nan)
        scale = np.full(n, np.nan)
        if (~empty).any():
            location[~empty], scale[~empty] = self._location_scale(values[~empty])
        per_level = location[:, None] + scale[:, None] * normal_ppf(levels)[None, :]  # (n, q)
        band = np.broadcast_to(per_level[:, None, :], (n, horizon, levels.size)).copy()
        median = np.broadcast_to(location[:, None], (n, horizon)).copy()
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=median),
            n_series=n,
            horizon=horizon,
            spec=self.spec,
        )


class ZScoreForecaster(_DistributionForecaster):
    """Mean ± z·std of the context: the classic z-score band (spec ``zscore``).

    Example:
        >>> import numpy as np
        >>> f = ZScoreForecaster()
        >>> out = f.forecast(np.array([[1.0, 2.0, 3.0]]), 2, [0.05, 0.5, 0.95])
        >>> out.quantiles.shape
        (1, 2, 3)
    """

    spec = "zscore"

    def _location_scale(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        location = np.nanmean(values, axis=1)
        scale = np.nanstd(values, axis=1)
        return location, scale


class MadForecaster(_DistributionForecaster):
    """Median ± k·1.4826·MAD: a z-score band robust to outliers in the context (spec ``mad``)."""

    spec = "mad"

    def _location_scale(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        location = np.nanmedian(values, axis=1)
        mad = np.nanmedian(np.abs(values - location[:, None]), axis=1)
        return location, MAD_TO_STD * mad
