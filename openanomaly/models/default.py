"""The ``default`` forecaster: the median of the last few points, for the calibration stage.

Pick ``model: default`` when you do not know which model to use: it needs no fitting,
no GPU and no per-metric tuning, and costs microseconds per series. It is a point
forecast only: the median of the last ``level_window`` samples (a robust level that
follows a level shift within a few points, so one shift is one alert, not one per
point). Its band has zero width on purpose: ``default`` is this forecaster plus the
calibration stage (``openanomaly.calibration``, on by default under ``scoring:``), which
sets the alert band from the series' own residual record, sustained deviations,
cooldown and range, exactly as it does after every other model. With
``scoring.calibration.enabled: false`` every departure from the median scores above 1.

Why so simple: it is the stage's own reference forecast, so the new point's residual
is measured the same way as the history it is compared with; the seasonal baselines,
record band and range rules that the previous ``default`` computed itself now live in
the stage, where every model gets them. Cross-validated results: ``docs/accuracy.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import (
    QuantileForecast,
    check_forecast,
    reject_unknown_params,
    validate_quantile_levels,
)
from openanomaly.models.baselines import as_contexts

__all__ = ["DefaultForecaster"]


class DefaultForecaster:
    """Median of the last ``level_window`` samples, flat over the horizon (spec ``default``).

    Args:
        level_window: samples in the median; when none of the last ``level_window``
            points has a sample, the last sample of the context is used.

    Example:
        >>> import numpy as np
        >>> DefaultForecaster().forecast(np.array([[1.0, 9.0, 2.0, 3.0, 2.0, 4.0, 3.0]]), 2, [0.5]).median
        array([[2.5, 2.5]])
    """

    spec: ClassVar[str] = "default"
    is_calibration_reference: ClassVar[bool] = True
    """Tells the calibration stage to score against its own reference forecast (the level
    median, or a daily/weekly seasonal profile where that predicts the series better),
    which this class computes without knowing the step: the level median only."""

    def __init__(self, *, level_window: int = 6) -> None:
        if isinstance(level_window, bool) or not isinstance(level_window, int) or level_window < 1:
            raise ModelError(f"level_window must be an integer >= 1, got {level_window!r}", spec=self.spec)
        self.level_window = level_window

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
        try:
            reject_unknown_params(params, inspect.signature(cls).parameters, spec=cls.spec)
        except ModelError as error:  # the old band knobs moved to the stage: say where
            raise ModelError(
                f"{str(error).removeprefix(f'model {cls.spec!r}: ')} (the alert band is set under "
                "scoring.calibration)",
                spec=cls.spec,
            ) from None
        cls(**params)

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast the recent median for ``horizon`` steps after each context row.

        Args:
            contexts: float ``(n, L)``, oldest first, left-padded with NaN.
            horizon: steps to forecast, > 0.
            quantiles: strictly increasing levels in (0, 1); every level is the median.

        Returns:
            ``QuantileForecast`` ``(n, horizon, q)``; rows without a finite value are NaN.

        Raises:
            ModelError: bad shapes, horizon or levels.
        """
        values = as_contexts(contexts, horizon, spec=self.spec)
        levels = validate_quantile_levels(quantiles)
        n = values.shape[0]
        recent = np.sort(values[:, -self.level_window :], axis=1)  # NaN sort last
        count = np.isfinite(recent).sum(axis=1)
        middle = np.maximum(count - 1, 0) // 2, np.minimum(count // 2, recent.shape[1] - 1)
        low, high = (np.take_along_axis(recent, i[:, None], axis=1)[:, 0] for i in middle)
        level = 0.5 * (low + high)
        gap = np.flatnonzero(count == 0)  # only these rows need a scan of the whole context
        level[gap] = self._last_sample(values[gap])
        median = np.repeat(level[:, None], horizon, axis=1)
        band = np.repeat(median[:, :, None], levels.size, axis=2)
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=median),
            n_series=n,
            horizon=horizon,
            spec=self.spec,
        )

    @staticmethod
    def _last_sample(values: np.ndarray) -> np.ndarray:
        """The last finite value of each row (NaN for a row without one)."""
        finite = np.isfinite(values)
        last = values.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
        return np.where(finite.any(axis=1), values[np.arange(values.shape[0]), last], np.nan)
