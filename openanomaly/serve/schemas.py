"""Request and response bodies of the HTTP API, and the request limits.

A request is checked in three steps, each before anything proportional to the
request's declared size is allocated:

1. the ingress's ASGI guard refuses a body over ``Limits.max_body_bytes`` (413) before
   reading it;
2. ``parse_request`` (off the event loop: ``serve.bodies``) validates the JSON
   with pydantic in strict mode: ``true`` is not an integer, NaN and Infinity are not
   numbers, and the series count and per-series length are checked against ``Limits``
   *before* the items are built (a 10^6-series body fails on its length, not after
   10^6 objects);
3. ``check_limits`` applies the limits that depend on several fields: points summed
   over all series, the response size (series x horizon x levels), the time grid that
   timestamps imply (``grid_of``: a 2-point series spanning 10^7 ms at a 1 ms step is a
   10^7-point grid) and the context values a ``/v1/detect`` request sends the model.

Every failure is a ``RequestError`` naming the field (``series[3].values``); the app
turns it into the one error body. Values travel as JSON numbers, ``null`` marks a
missing sample. Timestamps are integer milliseconds since the epoch, like
``SeriesMatrix``.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, NamedTuple, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from openanomaly.core.config import JSON_INT, Int, ScoringConfig
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import OpenAnomalyError

__all__ = [
    "MAX_ID_CHARS",
    "DetectRequest",
    "DetectResponse",
    "DetectSeries",
    "DetectSeriesIn",
    "ErrorBody",
    "ForecastRequest",
    "ForecastResponse",
    "ForecastSeries",
    "Grid",
    "Limits",
    "ModelInfo",
    "ModelsResponse",
    "RequestError",
    "SeriesIn",
    "check_limits",
    "clip",
    "grid_of",
    "parse_request",
    "values_array",
]

MAX_ID_CHARS = 200
"""Longest series ``id`` (and longest piece of a request quoted back in an error)."""

# 1e13 ms is the year 2286: any real timestamp, and far from int64 and timedelta overflow.
_MAX_TIMESTAMP_MS = 10**13
_MAX_STEPS = 100_000  # context_length, infer_every: the model input is bounded by Limits anyway
_TOO_LARGE = "too_large"


def clip(value: Any, limit: int = MAX_ID_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting request input in errors."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class RequestError(OpenAnomalyError, ValueError):
    """A request that breaks a limit, names something unknown, or does not validate.

    An :class:`~openanomaly.errors.OpenAnomalyError` (it pickles with its attributes, as
    the parsing process in :mod:`openanomaly.serve.bodies` sends it back) and still a
    ``ValueError`` for callers that catch bad input as one.

    Attributes:
        field: dotted path of the offending field, e.g. ``series[3].values``.
        status: the HTTP status the app answers with.
        reason: the message without the field in front.
    """

    def __init__(self, message: str, *, field: str, status: int = 422) -> None:
        self.field = field
        self.status = status
        self.reason = message
        super().__init__(f"{field}: {message}")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: str = Field(description="Machine-readable kind: invalid_request, too_large, unauthorized, ...")
    message: str = Field(description="One line; starts with the field at fault when there is one")
    field: str | None = Field(description="Dotted path of the field at fault, e.g. series[0].values")


class _Body(BaseModel):
    """Unknown keys are errors (a misspelt option is not silently ignored); types are
    strict (``true`` is not 1, ``"3"`` is not 3) and NaN/Infinity are not numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Limits(BaseModel):
    """Request size limits, set per deployment (``args.limits`` in serve_config.yaml).

    They bound the memory and model time one request can take, and are checked before
    anything of that size is allocated; the defaults suit a CPU replica. Exceeding a
    size limit answers 413 naming the field and the limit. ``GET /openapi.json`` states
    the per-field ones as ``maxItems`` / ``maximum``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=8 * 2**20, gt=0, description="Request body size, refused unread")
    max_series: int = Field(default=1000, gt=0, description="Series per request")
    max_points: int = Field(
        default=10_000, gt=0, description="Points per series, and grid points implied by timestamps_ms"
    )
    max_total_points: int = Field(
        default=1_000_000, gt=0, description="Points summed over all series (on the grid, with timestamps)"
    )
    max_horizon: int = Field(default=1024, gt=0, description="Forecast steps")
    max_scored_points: int = Field(default=1440, gt=0, description="Points scored per series by /v1/detect")
    max_response_values: int = Field(
        default=2_000_000,
        gt=0,
        description="Numbers in a response: series x horizon x (levels + 1), or series x score_last x 4",
    )
    max_context_values: int = Field(
        default=10_000_000,
        gt=0,
        description="Context values /v1/detect sends the model: series x forecasts x context points",
    )


def _limits(info: ValidationInfo) -> Limits:
    return info.context if isinstance(info.context, Limits) else Limits()


def _too_large(count: int, limit: int, what: str) -> PydanticCustomError:
    return PydanticCustomError(
        _TOO_LARGE,
        "{count} {what} sent, the limit is {limit}",
        {"count": count, "what": what, "limit": limit},
    )


Timestamp = Annotated[int, Field(strict=False, ge=0, le=_MAX_TIMESTAMP_MS), JSON_INT]


class SeriesIn(_Body):
    """One series: values oldest first, optionally with their timestamps."""

    id: str | None = Field(
        default=None, max_length=MAX_ID_CHARS, description="Echoed back; default: the series' index"
    )
    values: list[float | None] = Field(
        min_length=1,
        description="Oldest first; null = missing sample; at least one number",
        json_schema_extra={"contains": {"type": "number"}},
    )
    timestamps_ms: list[Timestamp] | None = Field(
        default=None, min_length=1, description="Unix milliseconds, strictly increasing, one per value"
    )

    @field_validator("values", "timestamps_ms", mode="before")
    @classmethod
    def _length(cls, values: Any, info: ValidationInfo) -> Any:
        # Before the items are built: a 10^7-item list fails here, cheaply.
        limit = _limits(info).max_points
        if isinstance(values, list) and len(values) > limit:
            raise _too_large(len(values), limit, "points")
        return values

    @field_validator("values")
    @classmethod
    def _some_finite(cls, values: list[float | None]) -> list[float | None]:
        if all(v is None for v in values):
            raise ValueError("series has no finite value (all null)")
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
    for row, s in enumerate(series):  # numpy reads None as NaN, in C: no Python loop per value
        out[row, width - len(s.values) :] = np.asarray(s.values, dtype=np.float64)
    return out


class DetectSeriesIn(SeriesIn):
    """A series to score: at least one point to score and one before it."""

    values: list[float | None] = Field(
        min_length=2,
        description="Oldest first; null = missing sample; more than score_last points",
        json_schema_extra={"contains": {"type": "number"}},
    )


class _SeriesBody(_Body):
    series: list[SeriesIn] = Field(min_length=1, description="One or more series")
    model: str | None = Field(
        default=None,
        max_length=100,
        description="Deployed model name (GET /v1/models); default model if unset",
    )

    @field_validator("series", mode="before")
    @classmethod
    def _count(cls, series: Any, info: ValidationInfo) -> Any:
        limit = _limits(info).max_series
        if isinstance(series, list) and len(series) > limit:
            raise _too_large(len(series), limit, "series")
        return series


class ForecastRequest(_SeriesBody):
    """``POST /v1/forecast``: forecast ``horizon`` steps after each series."""

    horizon: Int = Field(gt=0, description="Steps to forecast")
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default=[0.1, 0.5, 0.9],
        min_length=1,
        max_length=20,
        json_schema_extra={"uniqueItems": True},
        description="Distinct levels in (0, 1); answered in increasing order (quantile_levels)",
    )
    step_ms: Annotated[int, Field(strict=False, gt=0, le=_MAX_TIMESTAMP_MS), JSON_INT] | None = Field(
        default=None,
        description="Spacing of the forecast timestamps (default: inferred from timestamps_ms); "
        "also tells a model with windows in time (default's one-day record) the step",
    )

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, levels: list[float]) -> list[float]:
        if len(set(levels)) < len(levels):
            raise ValueError(f"quantile levels must be distinct, got {levels}")
        return sorted(levels)


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

    score_last: Int = Field(default=1, gt=0, description="Points at the end of each series to score")
    context_length: Int = Field(
        default=512, gt=0, le=_MAX_STEPS, description="Points of history each forecast sees"
    )
    infer_every: Int = Field(
        default=1,
        gt=0,
        le=_MAX_STEPS,
        description="Points forecast per model call (1: strict one-step-ahead)",
    )
    series: list[DetectSeriesIn] = Field(min_length=1, description="One or more series")  # type: ignore[assignment]
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @field_validator("scoring")
    @classmethod
    def _finite(cls, scoring: ScoringConfig) -> ScoringConfig:
        # ScoringConfig is the pipelines' YAML model (lax, allows inf); a request is stricter.
        if not math.isfinite(scoring.min_deviation):
            raise ValueError("min_deviation must be a finite number")
        return scoring


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


class Grid(NamedTuple):
    """The time grid that a ``/v1/detect`` request's timestamps imply (all in ms)."""

    start: int
    end: int
    step: int

    @property
    def length(self) -> int:
        return (self.end - self.start) // self.step + 1


def grid_of(request: DetectRequest) -> Grid | None:
    """The grid the series are aligned on: the step inferred from the first series, from
    the earliest to the latest timestamp of any series; ``None`` without timestamps.

    Computed from a few numbers, so its size can be checked before it is allocated.

    Raises:
        RequestError: timestamps on some series only, or fewer than 2 on the first.
    """
    with_ts = [s.timestamps_ms is not None for s in request.series]
    if not any(with_ts):
        return None
    if not all(with_ts):
        index = with_ts.index(False)
        raise RequestError(
            "give timestamps_ms for every series or for none", field=f"series[{index}].timestamps_ms"
        )
    first = request.series[0].timestamps_ms or []
    if len(first) < 2:
        raise RequestError("need at least 2 timestamps to infer the step", field="series[0].timestamps_ms")
    step = min(b - a for a, b in itertools.pairwise(first))
    start = min(s.timestamps_ms[0] for s in request.series)  # type: ignore[index]
    end = max(s.timestamps_ms[-1] for s in request.series)  # type: ignore[index]
    return Grid(start, end, step)


def _check(count: int, limit: int, what: str, *, field: str, status: int = 413) -> None:
    if count > limit:
        raise RequestError(f"{count} {what}, the limit is {limit}", field=field, status=status)


def check_limits(request: ForecastRequest | DetectRequest, limits: Limits) -> None:
    """Apply the deployment's limits that span several fields to a parsed request.

    Series count and per-series length are checked while parsing (``parse_request``).

    Raises:
        RequestError: (413) too many points in all, or a response, grid or model input
            over its limit; (422) a horizon, ``score_last`` or ``context_length``
            beyond what the limits or the series allow. The field is named.
    """
    n = len(request.series)
    lengths = [len(s.values) for s in request.series]
    _check(sum(lengths), limits.max_total_points, "points sent in all", field="series")
    if isinstance(request, ForecastRequest):
        _check(request.horizon, limits.max_horizon, "steps asked", field="horizon", status=422)
        values = n * request.horizon * (len(request.quantiles) + 1)
        _check(values, limits.max_response_values, "numbers in the response", field="horizon")
        return
    _check(request.score_last, limits.max_scored_points, "points to score", field="score_last", status=422)
    for index, length in enumerate(lengths):
        if request.score_last >= length:
            raise RequestError(
                f"score_last={request.score_last} leaves no context: the series has only {length} points",
                field=f"series[{index}].values",
            )
    grid = grid_of(request)
    width = max(lengths) if grid is None else grid.length
    if grid is not None:
        _check(
            width, limits.max_points, "grid points implied by timestamps_ms", field="series[0].timestamps_ms"
        )
        _check(n * width, limits.max_total_points, "grid points in all", field="series")
    _check(
        n * request.score_last * 4, limits.max_response_values, "numbers in the response", field="score_last"
    )
    forecasts = -(-request.score_last // request.infer_every)
    context = n * forecasts * min(request.context_length, width)
    _check(context, limits.max_context_values, "context values for the model", field="context_length")


_R = TypeVar("_R", ForecastRequest, DetectRequest)


def _field(loc: tuple[int | str, ...]) -> str:
    """``("series", 0, "values")`` → ``series[0].values``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _containers(body: bytes, *, max_objects: int, max_arrays: int) -> tuple[int, int] | None:
    """Objects and arrays in a JSON text, if more than ``max_objects`` / ``max_arrays``.

    pydantic-core builds every object of a body before any validator sees it, holding
    the GIL: 500,000 ``{"values":[1]}`` take seconds and stall the event loop whatever
    thread runs them. Counting first costs milliseconds: a count of ``{`` and ``[``
    bytes, and only when that is over the bound (or a string holds such bytes), an
    exact count outside strings, vectorised with numpy.
    """
    if body.count(b"{") <= max_objects and body.count(b"[") <= max_arrays:
        return None
    text = np.frombuffer(body, dtype=np.uint8)
    positions = np.arange(len(text), dtype=np.int64)
    # Run of backslashes ending just before each byte: odd means the byte is escaped.
    last_plain = np.maximum.accumulate(np.where(text == ord("\\"), -1, positions))
    quote = text == ord('"')
    quote[1:] &= (positions[:-1] - last_plain[:-1]) % 2 == 0
    outside = (np.cumsum(quote) % 2 == 0) & ~quote
    objects = int(np.count_nonzero((text == ord("{")) & outside))
    arrays = int(np.count_nonzero((text == ord("[")) & outside))
    return (objects, arrays) if objects > max_objects or arrays > max_arrays else None


def parse_request(model: type[_R], body: bytes, limits: Limits) -> _R:
    """Validate a raw JSON body against ``model`` and ``limits``; CPU-bound, so the app
    runs it in a worker thread.

    Raises:
        RequestError: the first problem, naming its field: 413 for a size limit, 422
            otherwise (malformed JSON included). Input is never quoted at length.
    """
    # A request holds the root, one object per series and the scoring options; arrays:
    # series, quantiles, the band, and values plus timestamps per series.
    max_objects, max_arrays = limits.max_series + 2, 2 * limits.max_series + 3
    counts = _containers(body, max_objects=max_objects, max_arrays=max_arrays)
    if counts is not None:
        raise RequestError(
            f"the body holds {counts[0]} JSON objects and {counts[1]} arrays; {limits.max_series} series "
            f"(the limit) take at most {max_objects} and {max_arrays}",
            field="series",
            status=413,
        )
    try:
        request = model.model_validate_json(body, context=limits)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        loc = tuple(first["loc"])
        field = _field(loc)
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "json_invalid":
            raise RequestError(f"malformed JSON: {first['ctx']['error']}"[:300], field="body") from None
        status = 413 if first["type"] == _TOO_LARGE else 422
        raise RequestError(message, field=field, status=status) from None
    check_limits(request, limits)
    return request


# Grid spacing used for series sent without timestamps: any value works, it only
# converts point counts (context_length, infer_every) into durations for Pipeline.
_DEFAULT_STEP_MS = 60_000


def forecast_timestamps(series: SeriesIn, step_ms: int | None, horizon: int) -> list[int] | None:
    ts = series.timestamps_ms
    if not ts:
        return None
    if step_ms is None:
        if len(ts) < 2:
            return None
        step_ms = int(np.median(np.diff(ts)))
    return [ts[-1] + step_ms * (k + 1) for k in range(horizon)]


def detect_matrix(request: DetectRequest) -> tuple[SeriesMatrix, int]:
    """The request's series on one time grid, and the grid step in ms.

    Without timestamps every series is right-aligned on a synthetic grid (the last
    values line up). With timestamps, every series must carry them; they are aligned on
    the step inferred from the first series (``detect.align_to_grid`` semantics).
    """
    from openanomaly.core.detect import align_to_grid

    series = request.series
    labels = tuple({"series": str(i)} for i in range(len(series)))
    grid = grid_of(request)  # its size was checked by check_limits, before this allocates it
    if grid is None:
        values = values_array(series)
        timestamps = np.arange(values.shape[1], dtype=np.int64) * _DEFAULT_STEP_MS
        return SeriesMatrix(labels, timestamps, values), _DEFAULT_STEP_MS
    start, end, step = grid
    rows = []
    for s in series:
        values = [[np.nan if v is None else v for v in s.values]]
        one = SeriesMatrix.from_rows([{}], s.timestamps_ms or [], values)
        rows.append(align_to_grid(one, step_ms=step, start_ms=start, end_ms=end).values[0])
    timestamps = np.arange(start, end + 1, step, dtype=np.int64)
    return SeriesMatrix(labels, timestamps, np.vstack(rows)), step
