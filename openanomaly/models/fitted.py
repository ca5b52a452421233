"""Fitted models: fit every ``fit_every`` on ``fit_window``, store, apply to new data.

Why: fitting AutoETS/AutoARIMA on every scheduled window (what the zero-fit
``statsforecast:`` adapter does) costs a fit per series per window. A pipeline with
``schedule.fit_every`` set instead fits once per ``fit_every`` on the last
``fit_window`` of data, stores the fitted model in the ArtifactStore, and every window
in between only *applies* it to the new context (statsforecast's ``forward``: the
fitted parameters, re-filtered over the new data, no re-estimation).

Two kinds of fitted model:

* **per series** (``statsforecast:AutoETS``, ``statsforecast:AutoARIMA``,
  ``statsforecast:MSTL``): one model per label set, stored under that series' key.
  Models without ``forward`` (``SeasonalNaive``) have nothing to fit and are refused.
* **global** (``neuralforecast:NHITS``, see :mod:`openanomaly.models.neural`): one
  model for all series of the pipeline, stored under ``GLOBAL_SERIES_KEY``; after
  loading it is an ordinary batch :class:`~openanomaly.models.base.Forecaster`.

Blobs are pickles: only load artifacts from a store you trust (the same trust as
loading model weights).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import Forecaster, QuantileForecast, check_forecast, validate_quantile_levels
from openanomaly.models.registry import model_info

__all__ = [
    "FitSpec",
    "StatsForward",
    "fit_global",
    "fit_per_series",
    "is_global",
    "load_global",
    "load_series_model",
    "min_fit_points",
]

_PICKLE_PROTOCOL = 5


@dataclass(frozen=True)
class FitSpec:
    """What fitting needs of a pipeline, as a plain record (``Pipeline.fit_spec`` builds it):
    the model layer never sees the config model."""

    spec: str
    params: Mapping[str, Any] = field(default_factory=dict)
    quantiles: tuple[float, float] = (0.05, 0.95)
    context: int = 1


def is_global(fit: FitSpec) -> bool:
    """True when the model is one model for all series (registry fit kind ``global``)."""
    return model_info(fit.spec, fit.params).fit == "global"


def min_fit_points(fit: FitSpec) -> int:
    """Finite points a series needs in ``fit_window`` to be fitted (2 longest seasons, at least 10)."""
    from openanomaly.models.stats import season_lengths

    seasons = season_lengths(fit.params.get("season_length"), spec=fit.spec)
    return max(10, 2 * max(seasons))


def _stats_model(fit: FitSpec) -> Any:
    from statsforecast import models as sf_models

    info = model_info(fit.spec, fit.params)
    season = fit.params.get("season_length", 1)
    params = {"season_length": season, **fit.params.get("model_params", {})}
    try:
        return getattr(sf_models, info.name)(**params)
    except (TypeError, ValueError) as error:
        raise ModelError(f"bad model params {params!r}: {error}", spec=fit.spec) from error


def fit_per_series(fit: FitSpec, values: np.ndarray) -> list[bytes | None]:
    """Fit one model per row of ``values`` ``(n, t)`` (NaN = missing, dropped before fitting).

    Returns:
        one pickled model per row; None where a row has fewer than
        :func:`min_fit_points` finite points (that series is not scored until it has).

    Raises:
        ModelError: the model cannot be built or a fit fails.
    """
    template = _stats_model(fit)
    need = min_fit_points(fit)
    blobs: list[bytes | None] = []
    for row in np.asarray(values, dtype=np.float64):
        y = row[np.isfinite(row)]
        if y.size < need:
            blobs.append(None)
            continue
        model = template.new() if hasattr(template, "new") else pickle.loads(pickle.dumps(template))
        try:
            model.fit(y)
        except Exception as error:  # statsforecast raises plain exceptions on degenerate data
            raise ModelError(f"fit failed on {y.size} points: {error}", spec=fit.spec) from error
        blobs.append(pickle.dumps(model, protocol=_PICKLE_PROTOCOL))
    return blobs


def _level_keys(levels: np.ndarray) -> tuple[list[float], list[str]]:
    """statsforecast interval levels (percent) for quantile levels, and the output key of each."""
    intervals: set[float] = set()
    keys = []
    for q in levels:
        if np.isclose(q, 0.5):
            keys.append("mean")
            continue
        width = round(abs(1 - 2 * float(q)) * 100, 6)
        intervals.add(width)
        keys.append(f"{'lo' if q < 0.5 else 'hi'}-{width}")
    return sorted(intervals), keys


class StatsForward:
    """A fitted statsforecast model applied to new contexts with ``forward`` (no refit).

    One model belongs to one series: call it with that series' contexts only
    (one row per chunk of the series). Quantile ``q`` is the ``lo``/``hi`` bound of the
    ``|1 - 2q|`` prediction interval; ``0.5`` is the mean.
    """

    def __init__(self, model: Any, *, spec: str) -> None:
        self.model = model
        self.spec = spec

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast each row of ``contexts`` ``(k, L)`` (left-padded NaN dropped) ``horizon`` steps.

        Raises:
            ModelError: ``forward`` failed.
        """
        levels = validate_quantile_levels(quantiles)
        intervals, keys = _level_keys(levels)
        contexts = np.asarray(contexts, dtype=np.float64)
        out = np.full((contexts.shape[0], horizon, levels.size), np.nan)
        for i, row in enumerate(contexts):
            y = row[np.isfinite(row)]
            if y.size < 2:
                continue
            try:
                result = self.model.forward(y=y, h=horizon, level=intervals)
            except Exception as error:
                raise ModelError(f"forward failed: {error}", spec=self.spec) from error
            for j, key in enumerate(keys):
                out[i, :, j] = np.asarray(result[key], dtype=np.float64)
        out = np.sort(out, axis=-1)  # NaN rows stay NaN; guards float noise at the band edges
        median = out[:, :, int(np.argmin(np.abs(levels - 0.5)))]
        return check_forecast(
            QuantileForecast(quantiles=out, levels=levels, median=median.copy()),
            n_series=contexts.shape[0],
            horizon=horizon,
            spec=self.spec,
        )


def load_series_model(fit: FitSpec, blob: bytes) -> StatsForward:
    """The forecaster for one series from its stored blob.

    Raises:
        ModelError: the blob is not a model this version can read.
    """
    try:
        model = pickle.loads(blob)
    except Exception as error:
        raise ModelError(f"cannot unpickle stored model: {error}", spec=fit.spec) from error
    return StatsForward(model, spec=fit.spec)


def fit_global(fit: FitSpec, values: np.ndarray, *, horizon: int) -> bytes:
    """Fit one model on all rows of ``values`` ``(n, t)``; the serialised model.

    Raises:
        ModelError: the spec is not a global model, or training failed.
    """
    if is_global(fit):  # NHITS is the one global adapter
        from openanomaly.models.neural import NHITSForecaster

        low, high = fit.quantiles
        model = NHITSForecaster.fit(
            values,
            horizon=horizon,
            input_size=fit.context,
            quantiles=(low, 0.5, high),
            spec=fit.spec,
            **fit.params,
        )
        return model.to_bytes()
    raise ModelError("not a global fitted model", spec=fit.spec)


def load_global(fit: FitSpec, blob: bytes) -> Forecaster:
    """The batch forecaster from a stored global model."""
    if is_global(fit):  # NHITS is the one global adapter
        from openanomaly.models.neural import NHITSForecaster

        return NHITSForecaster.from_bytes(blob, spec=fit.spec)
    raise ModelError("not a global fitted model", spec=fit.spec)
