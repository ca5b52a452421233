"""The forecaster contract every model adapter implements.

A batch of contexts goes in as one 2-D float array, left-padded with NaN (the same
convention Chronos uses), so adapters never see per-series Python objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from openanomaly.errors import ModelError

__all__ = [
    "ChunkedForecaster",
    "Forecaster",
    "QuantileForecast",
    "StepAware",
    "check_forecast",
    "reject_unknown_params",
    "validate_quantile_levels",
]


@dataclass(frozen=True)
class QuantileForecast:
    """Quantile forecasts for a batch of series.

    Attributes:
        quantiles: float64, shape ``(n_series, horizon, n_levels)``, non-decreasing
            along the last axis.
        levels: float64, shape ``(n_levels,)``, strictly increasing in (0, 1).
        median: float64, shape ``(n_series, horizon)``: the point forecast ``yhat``.
    """

    quantiles: np.ndarray
    levels: np.ndarray
    median: np.ndarray

    def level(self, q: float) -> np.ndarray:
        """The ``(n_series, horizon)`` forecast at level ``q`` (must be one of ``levels``)."""
        index = np.flatnonzero(np.isclose(self.levels, q))
        if index.size == 0:
            raise ModelError(f"quantile level {q} was not forecast; have {self.levels.tolist()}")
        return self.quantiles[:, :, index[0]]


@runtime_checkable
class Forecaster(Protocol):
    """Forecasts ``horizon`` steps after each context.

    Implementations batch internally and must return exactly one row per context.
    A context with no finite value gets an all-NaN row (every level, every step) rather
    than failing the batch, so one dead series cannot stop thousands of live ones;
    callers that must reject such series check for them before forecasting.

    Optional capabilities are declared as the protocols :class:`StepAware` and
    :class:`ChunkedForecaster`, which a model implements on top of this one.
    """

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast a batch.

        Args:
            contexts: float array ``(n_series, context_length)``, oldest first, left-padded
                with NaN for shorter series; NaN may also appear inside (missing samples).
            horizon: number of steps to forecast, > 0.
            quantiles: strictly increasing levels in (0, 1).

        Raises:
            ModelError: when the model cannot forecast this batch.
        """
        ...


@runtime_checkable
class StepAware(Protocol):
    """A model whose forecast depends on the step in time (``default``'s daily and weekly
    candidates): the window path calls ``for_step`` with the pipeline's step, the Serve
    deployment with the request's."""

    def for_step(self, step_s: float) -> Forecaster: ...


@runtime_checkable
class ChunkedForecaster(Protocol):
    """A model that forecasts many consecutive contexts of one series sharing the work.

    ``forecast_chunks(values, ends, rows, context, horizon, quantiles)`` must equal
    ``forecast(contexts[rows], horizon, quantiles)`` with ``contexts[i * k + j] = values[i,
    ends[j] - context : ends[j]]``; a backtest then costs one pass over each series
    instead of one copy of every context.
    """

    def forecast_chunks(
        self,
        values: np.ndarray,
        ends: np.ndarray,
        rows: np.ndarray,
        context: int,
        horizon: int,
        quantiles: Sequence[float],
    ) -> QuantileForecast: ...


def reject_unknown_params(params: Mapping[str, Any], known: Iterable[str], *, spec: str) -> None:
    """Every adapter's ``check_params`` starts here: a misspelt option is an error, not ignored.

    Raises:
        ModelError: naming the unknown options and listing the known ones.
    """
    known = tuple(known)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ModelError(f"unknown params {unknown}; known: {', '.join(known)}", spec=spec)


def validate_quantile_levels(quantiles: Sequence[float]) -> np.ndarray:
    """The levels as a float64 array, or a ModelError saying what is wrong with them."""
    levels = np.asarray(quantiles, dtype=np.float64)
    if levels.ndim != 1 or levels.size == 0:
        raise ModelError(f"quantile levels must be a non-empty list, got {quantiles!r}")
    if not np.all((levels > 0) & (levels < 1)):
        raise ModelError(f"quantile levels must lie in (0, 1), got {levels.tolist()}")
    if not np.all(np.diff(levels) > 0):
        raise ModelError(f"quantile levels must be strictly increasing, got {levels.tolist()}")
    return levels


def check_forecast(
    forecast: QuantileForecast, *, n_series: int, horizon: int, spec: str | None = None
) -> QuantileForecast:
    """Check an adapter's output against the contract; raise instead of scoring garbage."""
    expected = (n_series, horizon, forecast.levels.size)
    if forecast.quantiles.shape != expected:
        raise ModelError(
            f"forecast has shape {forecast.quantiles.shape}, expected {expected} "
            "(series, horizon, quantiles)",
            spec=spec,
        )
    if forecast.median.shape != (n_series, horizon):
        raise ModelError(
            f"median has shape {forecast.median.shape}, expected {(n_series, horizon)}", spec=spec
        )
    if np.any(np.diff(forecast.quantiles, axis=-1) < -1e-9):
        raise ModelError("forecast quantiles are not ordered by level", spec=spec)
    return forecast
