"""statsforecast models (AutoETS, AutoARIMA, MSTL, SeasonalNaive) behind the Forecaster protocol.

Pick these when a metric has a clear, stable seasonality (SeasonalNaive, MSTL) or a
smooth level/trend (AutoETS, AutoARIMA) and you want a model whose band you can
explain, or have no GPU for Chronos. They are fitted per series on its context at every
call (no stored state), so the cost grows with context length and number of series.

Quantiles: statsforecast gives symmetric normal prediction intervals ``lo-L``/``hi-L``
for a coverage ``L`` in percent. A level ``q < 0.5`` is ``lo-(100 - 200q)``, ``q > 0.5``
is ``hi-(200q - 100)``, and ``q = 0.5`` is the mean forecast (the median of the normal
predictive distribution). Any level in (0, 1) is exact under the model's normal errors.

Contexts: leading NaN (left padding) is stripped per row. NaN inside a row (missing
samples) is filled by linear interpolation between the neighbouring samples, and
trailing NaN (newest samples missing) by carrying the last sample forward, so the
forecast stays aligned with the time grid. A row with no finite value gets NaN
forecasts. A row shorter than the model needs (see ``min_context``) raises
``DataError`` by default; ``too_short="nan"`` gives NaN forecasts for such rows instead.
No model silently falls back to a simpler one.

Speed: the adapter calls each model's ``forecast(y, h, level=…)`` per series in
process. ``benchmarks/models_speed.py`` compares it with the ``StatsForecast``
DataFrame API (``benchmarks/results/models_speed.json``): it is as fast or faster,
needs no pandas, and leaves parallelism to the caller (Ray actors), which scales past
one machine.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from openanomaly.errors import DataError, ModelError
from openanomaly.models.base import (
    QuantileForecast,
    check_forecast,
    reject_unknown_params,
    validate_quantile_levels,
)
from openanomaly.models.baselines import as_contexts
from openanomaly.models.registry import STATSFORECAST_MODELS

__all__ = ["STATS_MODELS", "StatsForecaster", "clean_context", "interval_keys", "min_context"]

STATS_MODELS = STATSFORECAST_MODELS

_PARAMS = ("season_length", "too_short", "model_params")
# Models that cannot run without a season length.
_NEEDS_SEASON = {"MSTL", "SeasonalNaive"}


def season_lengths(season_length: int | Sequence[int] | None, *, spec: str) -> list[int]:
    """Normalise ``season_length`` to a non-empty list of positive ints.

    Raises:
        ModelError: not a positive int or a non-empty list of them.
    """
    if season_length is None:
        return [1]
    values = [season_length] if isinstance(season_length, int | np.integer) else season_length
    if isinstance(season_length, bool | str) or not isinstance(values, Sequence) or not values:
        raise ModelError(
            f"season_length must be a positive integer or a list of them, got {season_length!r}", spec=spec
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ModelError(
                f"season_length must be a positive integer or a list of them, got {season_length!r}",
                spec=spec,
            )
    return [int(v) for v in values]


def min_context(model: str, seasons: Sequence[int]) -> int:
    """The fewest points a context needs for ``model`` to forecast with intervals.

    SeasonalNaive needs one full season plus one point (for a residual); MSTL needs two
    full cycles of its longest season (STL's requirement) plus one; AutoETS / AutoARIMA
    need a handful of points to estimate their parameters, and two full seasons when
    seasonal (otherwise they silently drop the season).
    """
    longest = max(seasons)
    if model == "SeasonalNaive":
        return longest + 1
    if model == "MSTL":
        return 2 * longest + 1
    return max(8, 2 * longest + 1) if longest > 1 else 8


def interval_keys(levels: np.ndarray) -> tuple[list[float], list[str]]:
    """statsforecast ``level=`` coverages and the result key for each quantile level.

    Returns:
        (coverages in percent, deduplicated and sorted; one key per level: ``"mean"``,
        ``"lo-<coverage>"`` or ``"hi-<coverage>"``).
    """
    coverages: list[float] = []
    keys: list[str] = []
    for q in levels.tolist():
        if math.isclose(q, 0.5):
            keys.append("mean")
            continue
        coverage = round(abs(200.0 * q - 100.0), 8)
        if coverage not in coverages:
            coverages.append(coverage)
        keys.append(f"{'lo' if q < 0.5 else 'hi'}-{coverage}")
    return sorted(coverages), keys


def clean_context(row: np.ndarray) -> np.ndarray:
    """One context row with leading NaN stripped, inner NaN interpolated, trailing NaN carried.

    Returns an empty array for a row with no finite value.
    """
    finite = np.isfinite(row)
    if not finite.any():
        return row[:0]
    row = row[int(np.argmax(finite)) :]
    finite = finite[finite.size - row.size :]
    if finite.all():
        return row
    index = np.arange(row.size)
    # np.interp holds the last sample constant past it: that is the carry-forward.
    return np.interp(index, index[finite], row[finite])


class StatsForecaster:
    """A statsforecast model fitted on each context at every call (spec ``statsforecast:<Model>``).

    Example:
        >>> import numpy as np
        >>> f = StatsForecaster("SeasonalNaive", season_length=4)
        >>> out = f.forecast(np.tile([1.0, 2.0, 3.0, 4.0], (2, 3)), 4, [0.1, 0.5, 0.9])
        >>> out.median[0].tolist()
        [1.0, 2.0, 3.0, 4.0]
    """

    def __init__(
        self,
        model: str,
        *,
        season_length: int | Sequence[int] | None = None,
        too_short: Literal["error", "nan"] = "error",
        model_params: dict[str, Any] | None = None,
    ) -> None:
        """Args:
        model: one of ``STATS_MODELS``.
        season_length: points per season (``1440`` for daily at 1-minute steps); a list
            of them for MSTL's multiple seasonalities. Required for MSTL and
            SeasonalNaive; AutoETS ignores seasons longer than 24 (statsforecast's limit).
        too_short: what to do with a row shorter than ``min_context``: ``"error"``
            raises ``DataError`` naming the rows; ``"nan"`` gives them NaN forecasts.
        model_params: extra keyword arguments for the statsforecast model class
            (e.g. ``{"model": "ZZN"}`` for AutoETS).

        Raises:
            ModelError: unknown model, bad ``season_length`` or ``too_short``.
        """
        self.spec = f"statsforecast:{model}"
        self.model_name = model
        self.seasons = self._checked(model, season_length=season_length, too_short=too_short)
        self.too_short = too_short
        self.min_context = min_context(model, self.seasons)
        self._model = self._build(dict(model_params or {}))

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> StatsForecaster:
        """Registry factory: ``name`` is the statsforecast model, ``params`` the options."""
        return cls(name, **params)

    @classmethod
    def check_params(cls, name: str, **params: Any) -> None:
        """Validate ``params`` without importing statsforecast (config-load time).

        Raises:
            ModelError: unknown option, unknown model, bad ``season_length``/``too_short``.
        """
        reject_unknown_params(params, _PARAMS, spec=f"statsforecast:{name}")
        cls._checked(
            name, season_length=params.get("season_length"), too_short=params.get("too_short", "error")
        )

    @classmethod
    def context_needed(cls, name: str, params: Mapping[str, Any]) -> int:
        """Fewest context points ``name`` with ``params`` forecasts from (registry fact).

        Config validation compares it with ``schedule.context``: a shorter context would
        make every window fail (or, with ``too_short: nan``, score nothing).
        """
        spec = f"statsforecast:{name}"
        return min_context(name, season_lengths(params.get("season_length"), spec=spec))

    @staticmethod
    def _checked(model: str, *, season_length: Any, too_short: Any) -> list[int]:
        spec = f"statsforecast:{model}"
        if model not in STATS_MODELS:
            raise ModelError(f"unknown statsforecast model; known: {', '.join(STATS_MODELS)}", spec=spec)
        if model in _NEEDS_SEASON and season_length is None:
            raise ModelError(f"{model} needs season_length (points per season)", spec=spec)
        if too_short not in ("error", "nan"):
            raise ModelError(f"too_short must be 'error' or 'nan', got {too_short!r}", spec=spec)
        seasons = season_lengths(season_length, spec=spec)
        if model != "MSTL" and len(seasons) > 1:
            raise ModelError(f"{model} takes one season_length, got {seasons}", spec=spec)
        return seasons

    def _build(self, params: dict[str, Any]) -> Any:
        import statsforecast.models as sf

        season = self.seasons[0]
        try:
            if self.model_name == "MSTL":
                return sf.MSTL(season_length=self.seasons, **params)
            if self.model_name == "SeasonalNaive":
                return sf.SeasonalNaive(season_length=season, **params)
            cls = sf.AutoETS if self.model_name == "AutoETS" else sf.AutoARIMA
            return cls(season_length=season, **params)
        except (TypeError, ValueError) as error:
            raise ModelError(f"bad model_params {params!r}: {error}", spec=self.spec) from error

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Fit the model on each row and forecast ``horizon`` steps.

        Args:
            contexts: float ``(n, L)`` left-padded with NaN; inner NaN is interpolated.
            horizon: steps to forecast, > 0.
            quantiles: strictly increasing levels in (0, 1).

        Returns:
            ``QuantileForecast`` with ``quantiles`` ``(n, horizon, q)``. Rows with no
            finite value (and too-short rows with ``too_short="nan"``) are NaN.

        Raises:
            DataError: some rows are shorter than ``min_context`` (``too_short="error"``).
            ModelError: bad inputs, or statsforecast failed on a row (the row is named).
        """
        values = as_contexts(contexts, horizon, spec=self.spec)
        levels = validate_quantile_levels(quantiles)
        coverages, keys = interval_keys(levels)
        n = values.shape[0]
        rows = [clean_context(values[i]) for i in range(n)]
        short = [i for i, row in enumerate(rows) if 0 < row.size < self.min_context]
        if short and self.too_short == "error":
            shown = ", ".join(map(str, short[:10])) + (" …" if len(short) > 10 else "")
            raise DataError(
                f"{self.spec}: {len(short)} series have fewer than {self.min_context} points of context "
                f"(rows {shown}); give a longer context, a shorter season_length, "
                "or set too_short: nan to skip them"
            )
        # Last slot: statsforecast's mean forecast, the point forecast / median.
        out = np.full((n, horizon, levels.size + 1), np.nan)
        skip = set(short)
        for i, row in enumerate(rows):
            if row.size == 0 or i in skip:
                continue
            out[i] = self._forecast_row(row, horizon, coverages, [*keys, "mean"], index=i)
        band, median = out[:, :, :-1], out[:, :, -1].copy()
        # Interval ends can cross by float rounding when sigma is ~0; keep levels ordered.
        band = np.fmax.accumulate(band, axis=-1)
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=median),
            n_series=n,
            horizon=horizon,
            spec=self.spec,
        )

    def _forecast_row(
        self, row: np.ndarray, horizon: int, coverages: list[float], keys: list[str], *, index: int
    ) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result = self._model.forecast(y=row, h=horizon, level=coverages or None)
        except Exception as error:  # statsforecast raises bare Exception for fit failures
            raise ModelError(
                f"failed on series row {index} ({row.size} points): {error}", spec=self.spec
            ) from error
        missing = [key for key in keys if key not in result]
        if missing:
            raise ModelError(f"statsforecast returned no {missing} (have {sorted(result)})", spec=self.spec)
        return np.stack([np.asarray(result[key], dtype=np.float64) for key in keys], axis=-1)
