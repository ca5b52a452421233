"""Request and response bodies of the HTTP API, and the request limits.

pydantic checks the shape of every request (types, horizon > 0, sorted quantile levels)
and FastAPI turns a failure into a 422 whose ``loc`` names the field. Limits that an
operator sets at deploy time (``Limits``) cannot live in static ``Field`` constraints,
so ``check_limits`` applies them after parsing and raises ``RequestError`` naming the
field, which the app turns into a 413.

Values travel as JSON numbers; ``null`` (or ``NaN``) marks a missing sample. Timestamps
are integer milliseconds since the epoch, like ``SeriesMatrix``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openanomaly.config import ScoringConfig

__all__ = [
    "DetectRequest",
    "DetectResponse",
    "DetectSeries",
    "ForecastRequest",
    "ForecastResponse",
    "ForecastSeries",
    "Limits",
    "ModelInfo",
    "ModelsResponse",
    "RequestError",
    "SeriesIn",
    "check_limits",
    "values_array",
]


class RequestError(ValueError):
    """A request that parsed but breaks a limit or names something unknown.

    Attributes:
        field: dotted path of the offending field, e.g. ``series[3].values``.
        status: the HTTP status the app answers with.
    """

    def __init__(self, message: str, *, field: str, status: int = 422) -> None:
        self.field = field
        self.status = status
        super().__init__(f"{field}: {message}")


class _Body(BaseModel):
    """Unknown keys are errors, so a misspelt option is not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Limits(_Body):
    """Request size limits, set per deployment (``args.limits`` in serve_config.yaml).

    They bound the memory and model time one request can take; the defaults suit a
    CPU replica. Exceeding one answers 413 naming the field and the limit.
    """

    max_series: int = Field(default=1000, gt=0, description="Series per request")
    max_points: int = Field(default=10_000, gt=0, description="Points per series")
    max_total_points: int = Field(default=1_000_000, gt=0, description="Points summed over all series")
    max_horizon: int = Field(default=1024, gt=0, description="Forecast steps")
    max_scored_points: int = Field(default=1440, gt=0, description="Points scored per series by /v1/detect")


class SeriesIn(_Body):
    """One series: values oldest first, optionally with their timestamps."""

    id: str | None = Field(default=None, description="Echoed back; default: the series' index")
    values: list[float | None] = Field(description="Oldest first; null or NaN = missing sample")
    timestamps_ms: list[int] | None = Field(
        default=None, description="Unix milliseconds, strictly increasing, one per value"
    )

    @field_validator("values")
    @classmethod
    def _some_finite(cls, values: list[float | None]) -> list[float | None]:
        if not values:
            raise ValueError("series is empty: send at least one value")
        if any(v is not None and math.isinf(v) for v in values):
            raise ValueError("values must be finite numbers or null (got an infinity)")
        if all(v is None or math.isnan(v) for v in values):
            raise ValueError("series has no finite value (all null/NaN)")
        return values

    @model_validator(mode="after")
    def _timestamps_match(self) -> SeriesIn:
        if self.timestamps_ms is not None:
            if len(self.timestamps_ms) != len(self.values):
                raise ValueError(
                    f"timestamps_ms has {len(self.timestamps_ms)} entries but values has {len(self.values)}"
                )
            if any(b <= a for a, b in itertools.pairwise(self.timestamps_ms)):
                raise ValueError("timestamps_ms must be strictly increasing")
        return self


def values_array(series: list[SeriesIn]) -> np.ndarray:
    """The series as one float64 ``(n, L)`` array left-padded with NaN (null → NaN)."""
    width = max(len(s.values) for s in series)
    out = np.full((len(series), width), np.nan)
    for row, s in enumerate(series):
        out[row, width - len(s.values) :] = [np.nan if v is None else v for v in s.values]
    return out


class _SeriesBody(_Body):
    series: list[SeriesIn] = Field(min_length=1, description="One or more series")
    model: str | None = Field(
        default=None, description="Deployed model name (GET /v1/models); default model if unset"
    )


class ForecastRequest(_SeriesBody):
    """``POST /v1/forecast``: forecast ``horizon`` steps after each series."""

    horizon: int = Field(gt=0, description="Steps to forecast")
    quantiles: list[float] = Field(
        default=[0.1, 0.5, 0.9], min_length=1, description="Strictly increasing levels in (0, 1)"
    )
    step_ms: int | None = Field(
        default=None,
        gt=0,
        description="Spacing of the forecast timestamps; default: inferred from timestamps_ms",
    )

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, levels: list[float]) -> list[float]:
        if not all(0 < q < 1 for q in levels):
            raise ValueError(f"quantile levels must lie in (0, 1), got {levels}")
        if any(b <= a for a, b in itertools.pairwise(levels)):
            raise ValueError(f"quantile levels must be strictly increasing, got {levels}")
        return levels


class ForecastSeries(BaseModel):
    id: str
    median: list[float | None] = Field(description="Point forecast, one per step")
    quantiles: list[list[float | None]] = Field(
        description="Shape (levels, horizon): row i is the forecast at quantile_levels[i]"
    )
    timestamps_ms: list[int] | None = Field(default=None, description="When timestamps or step_ms were given")


class ForecastResponse(BaseModel):
    model: str
    spec: str
    quantile_levels: list[float]
    series: list[ForecastSeries]


class DetectRequest(_SeriesBody):
    """``POST /v1/detect``: score the last ``score_last`` points of each series.

    Each scored point is judged against a forecast made only from the points before
    it (no look-ahead): the tail is cut into chunks of ``infer_every`` points and each
    chunk is forecast from the ``context_length`` points that precede it, the same
    rolling scheme a scheduled pipeline runs.
    """

    score_last: int = Field(default=1, gt=0, description="Points at the end of each series to score")
    context_length: int = Field(default=512, gt=0, description="Points of history each forecast sees")
    infer_every: int = Field(
        default=1, gt=0, description="Points forecast per model call (1: strict one-step-ahead)"
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)


class DetectSeries(BaseModel):
    id: str
    anomaly_score: list[float | None] = Field(
        description="<= 1 inside the band, > 1 outside; null where not scored"
    )
    yhat: list[float | None]
    yhat_lower: list[float | None]
    yhat_upper: list[float | None]
    timestamps_ms: list[int] | None = None
    anomalies: list[int] = Field(description="Indices (into the scored tail) with anomaly_score > 1")


class DetectResponse(BaseModel):
    model: str
    spec: str
    series: list[DetectSeries]


class ModelInfo(BaseModel):
    name: str
    spec: str
    device: str
    max_batch_size: int
    batch_wait_timeout_s: float
    default: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


def check_limits(request: ForecastRequest | DetectRequest, limits: Limits) -> None:
    """Apply the deployment's limits to a parsed request.

    Raises:
        RequestError: (413) too many series or points, or (422) a horizon or
            ``score_last`` beyond what the series or limits allow; the field is named.
    """
    if len(request.series) > limits.max_series:
        raise RequestError(
            f"{len(request.series)} series sent, the limit is {limits.max_series}", field="series", status=413
        )
    total = 0
    for index, s in enumerate(request.series):
        if len(s.values) > limits.max_points:
            raise RequestError(
                f"{len(s.values)} points sent, the limit is {limits.max_points} per series",
                field=f"series[{index}].values",
                status=413,
            )
        total += len(s.values)
    if total > limits.max_total_points:
        raise RequestError(
            f"{total} points sent in all, the limit is {limits.max_total_points}", field="series", status=413
        )
    if isinstance(request, ForecastRequest) and request.horizon > limits.max_horizon:
        raise RequestError(f"{request.horizon} exceeds the limit {limits.max_horizon}", field="horizon")
    if isinstance(request, DetectRequest):
        if request.score_last > limits.max_scored_points:
            raise RequestError(
                f"{request.score_last} exceeds the limit {limits.max_scored_points}", field="score_last"
            )
        for index, s in enumerate(request.series):
            if request.score_last >= len(s.values):
                raise RequestError(
                    f"score_last={request.score_last} leaves no context: the series has only "
                    f"{len(s.values)} points",
                    field=f"series[{index}].values",
                )
