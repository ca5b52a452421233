"""The ``default`` model: the robust seasonal reference forecaster.

Pick it when you do not know which model to use: no fitting, no GPU, no per-metric
tuning, vectorised numpy over the whole batch. It forecasts with the stage's own
reference (:mod:`openanomaly.models.reference`): the level median of the last few points or a
daily / weekly profile, whichever predicted the series' recent past best. Like every
model it is followed by the calibration stage (:mod:`openanomaly.core.calibration`), which
alone turns its forecast into ``anomaly_score``.

Its quantiles are normal quantiles of its recent one-step error (mean absolute residual
over the record, scaled to a standard deviation). The forecast is exact one step ahead;
over a longer horizon the level holds flat and the profile carries the season.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import QuantileForecast, check_forecast, validate_quantile_levels
from openanomaly.models.baselines import as_contexts
from openanomaly.models.reference import candidate_forecasts, choose, seasonal_periods, window_sums

__all__ = ["DefaultForecaster"]

_RECORD_SHARE = 0.5
"""The part of the context whose one-step errors choose the candidate (as the stage's record)."""

_MEAN_ABS_TO_SD = math.sqrt(math.pi / 2)
"""A normal error's standard deviation over its mean absolute value."""


class DefaultForecaster:
    """Robust seasonal reference forecaster (spec ``default``; see module docs).

    Args:
        step_s: the series' step in seconds, which places the daily and weekly
            candidates; ``None`` (not yet known): the level only. The window path and
            the Serve deployment set it through :meth:`for_step`.
    """

    spec: ClassVar[str] = "default"

    def __init__(self, *, step_s: float | None = None) -> None:
        if step_s is not None and not step_s > 0:
            raise ModelError(f"step_s must be > 0, got {step_s!r}", spec=self.spec)
        self.step_s = step_s

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> DefaultForecaster:
        """Registry factory: ``default`` takes no model name and no params."""
        cls.check_params(name, **params)
        return cls()

    @classmethod
    def check_params(cls, name: str, **params: Any) -> None:
        """Raises ModelError for a model name or any param (its alert knobs are the stage's now)."""
        if name:
            raise ModelError(f"takes no model name, got {name!r}", spec=cls.spec)
        if params:
            raise ModelError(
                f"unknown params {sorted(params)}; known: none (its alert knobs are the stage's, "
                "under scoring.calibration: false_alarms_per_week, cooldown, min_history)",
                spec=cls.spec,
            )

    def for_step(self, step_s: float) -> DefaultForecaster:
        """This forecaster for series sampled every ``step_s`` seconds."""
        if step_s == self.step_s:
            return self
        stepped = copy.copy(self)
        stepped.step_s = float(step_s)
        return stepped

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast ``horizon`` points after each context row (float ``(n, L)``, NaN-padded)."""
        values = as_contexts(contexts, horizon, spec=self.spec)
        n, length = values.shape
        ends = np.array([length], dtype=np.int64)
        return self.forecast_chunks(values, ends, np.arange(n), length, horizon, quantiles)

    def forecast_chunks(
        self,
        values: np.ndarray,
        ends: np.ndarray,
        rows: np.ndarray,
        context: int,
        horizon: int,
        quantiles: Sequence[float],
    ) -> QuantileForecast:
        """:meth:`forecast` of many consecutive contexts of the same series, sharing the work.

        Equal to ``forecast(contexts[rows], horizon, quantiles)`` with ``contexts[i * k + j]
        = values[i, ends[j] - context : ends[j]]`` (``k = len(ends)``): every candidate
        reads only the ``context`` columns before its end.

        Args:
            values: float ``(n, m)``, NaN-padded on the left so that ``ends - context >= 0``.
            ends: int ``(k,)``, increasing: the column after each context.
            rows: int ``(r,)`` flat indices ``i * k + j`` to forecast.
        """
        levels = validate_quantile_levels(quantiles)
        ends = np.asarray(ends, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        n, k = x.shape[0], ends.size
        record = max(1, int(context * _RECORD_SHARE))
        periods = seasonal_periods(self.step_s, context - record) if self.step_s else ()
        first = max(0, int(ends.min()) - record)
        columns = np.arange(first, int(ends.max()))
        candidates = candidate_forecasts(x, columns, columns, periods).forecast  # (c, n, M)
        actual = x[:, first : int(ends.max())]
        valid = np.isfinite(actual)[None] & np.isfinite(candidates)
        size = np.where(valid, np.abs(actual[None] - candidates), 0.0)
        local = ends - first
        span = np.minimum(record, local)
        choice = choose(size, valid, local, int(span.min()))  # (n, k)
        targets = (ends[:, None] + np.arange(horizon)[None, :]).reshape(-1)
        ahead = candidate_forecasts(x, targets, np.repeat(ends, horizon), periods).forecast
        ahead = ahead.reshape(-1, n, k, horizon)
        yhat = np.take_along_axis(ahead, choice[None, :, :, None], axis=0)[0]  # (n, k, h)
        # The chosen candidate's mean absolute one-step error over the record.
        record_span = int(span.min())
        err = window_sums(size, local, record_span) / np.maximum(
            window_sums(valid.astype(np.float64), local, record_span), 1
        )
        scale = _MEAN_ABS_TO_SD * np.take_along_axis(err, choice[None], axis=0)[0]  # (n, k)
        z = np.array([NormalDist().inv_cdf(float(level)) for level in levels])
        band = yhat[..., None] + scale[:, :, None, None] * z[None, None, None, :]
        median = yhat.reshape(n * k, horizon)[rows]
        band = np.maximum.accumulate(band.reshape(n * k, horizon, levels.size)[rows], axis=2)
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=median),
            n_series=rows.size,
            horizon=horizon,
            spec=self.spec,
        )
