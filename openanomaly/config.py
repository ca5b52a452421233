"""Typed configuration: TSDB settings and the pipelines to run.

Validation happens here, when YAML is loaded, so a typo fails at start-up with the
file, pipeline and field named, not hours later inside a scheduled job.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

__all__ = [
    "ArtifactSettings",
    "CalibrationConfig",
    "Config",
    "Duration",
    "ModelConfig",
    "OutputConfig",
    "Pipeline",
    "Schedule",
    "ScoringConfig",
    "Settings",
    "TSDBSettings",
    "format_duration",
    "parse_duration",
]

_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: Any) -> timedelta:
    """Parse a Prometheus-style duration (``30s``, ``5m``, ``1h30m``, ``7d``) or seconds.

    Raises:
        ValueError: for anything else, quoting the value.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected a string such as '5m' or '1h30m'")
    text = value.strip()
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}: use a number and a unit (ms, s, m, h, d, w, y), e.g. '5m', '1h30m'"
        )
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The shortest Prometheus duration string for ``value`` (whole milliseconds)."""
    remaining = round(value.total_seconds() * 1000)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001)):
        size = round(seconds * 1000)
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"duration must be positive, got {format_duration(value)}")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
PositiveDuration = Annotated[Duration, BeforeValidator(lambda v: _positive(parse_duration(v)))]


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TSDBSettings(_Strict):
    """Where to read series and write scores. Works with Prometheus and VictoriaMetrics."""

    url: str = Field(description="Base URL of the Prometheus HTTP API, e.g. http://localhost:8428")
    write_url: str | None = Field(
        default=None,
        description="Remote-write endpoint; default: <url>/api/v1/write",
    )
    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: PositiveDuration = timedelta(seconds=30)
    retries: int = Field(default=3, ge=0, le=20)
    backoff: PositiveDuration = timedelta(seconds=0.5)
    max_points_per_query: int = Field(
        default=10_000,
        gt=0,
        description="Points per series per request; longer ranges are split (Prometheus allows 11000)",
    )
    write_batch_samples: int = Field(default=50_000, gt=0, description="Samples per remote-write request")

    @field_validator("url", "write_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_auth(self) -> TSDBSettings:
        if self.bearer_token and (self.username or self.password):
            raise ValueError("set either bearer_token or username/password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password")
        return self

    @property
    def remote_write_url(self) -> str:
        return self.write_url or f"{self.url}/api/v1/write"


class ArtifactSettings(_Strict):
    """Where fitted models are stored so any worker can load them."""

    kind: Literal["none", "file", "s3"] = "none"
    path: str | None = Field(default=None, description="Directory, for kind: file")
    bucket: str | None = None
    prefix: str = "openanomaly"
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO)")
    region: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ArtifactSettings:
        if self.kind == "file" and not self.path:
            raise ValueError("artifacts.kind 'file' needs artifacts.path")
        if self.kind == "s3" and not self.bucket:
            raise ValueError("artifacts.kind 's3' needs artifacts.bucket")
        return self


class Settings(_Strict):
    tsdb: TSDBSettings
    artifacts: ArtifactSettings = ArtifactSettings()


class ModelConfig(_Strict):
    """A model spec plus its options.

    ``spec`` is ``<adapter>:<name>``, e.g. ``chronos:amazon/chronos-bolt-small``,
    ``chronos:/models/bolt-tiny``, ``statsforecast:AutoETS``, ``zscore``, ``mad``.
    ``params`` go to the adapter (``season_length``, ``batch_size``, ``device``…).
    """

    spec: str
    alias: str | None = Field(default=None, description="Value of the model= output label")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("spec")
    @classmethod
    def _known(cls, spec: str) -> str:
        from openanomaly.errors import UnknownModelSpec
        from openanomaly.models.registry import validate_spec

        try:
            validate_spec(spec)
        except UnknownModelSpec as error:
            raise ValueError(str(error)) from error
        return spec

    @model_validator(mode="after")
    def _params_fit_model(self) -> ModelConfig:
        from openanomaly.errors import ModelError
        from openanomaly.models.registry import validate_params

        try:
            validate_params(self.spec, self.params)
        except ModelError as error:
            raise ValueError(str(error)) from error
        return self

    @property
    def label(self) -> str:
        """The ``model=`` label written with every output series."""
        return self.alias or self.spec


class Schedule(_Strict):
    infer_every: PositiveDuration = timedelta(minutes=1)
    context: PositiveDuration = Field(
        default=timedelta(hours=1),
        description="History the forecaster sees before each scored point",
    )
    fit_every: PositiveDuration | None = Field(default=None, description="Fitted models only")
    fit_window: PositiveDuration | None = Field(default=None, description="Fitted models only")


class CalibrationConfig(_Strict):
    """The calibration stage after every forecaster (see ``openanomaly.calibration``).

    On by default, so ``anomaly_score > 1`` means "rare for this series" whatever the
    model. The windows are in points and shrink to fit the pipeline's ``context``.
    """

    enabled: bool = True
    level_window: int = Field(default=6, ge=1)
    seasons: int = Field(default=5, ge=0)
    history: int = Field(default=576, ge=1)
    short_window: int = Field(default=6, ge=1)
    floor: float = Field(default=0.4, ge=0, le=1)
    cooldown: int = Field(default=144, ge=0)
    range_margin: float | None = Field(default=0.05, ge=0)
    range_lag: int = Field(default=144, ge=0)
    gain: float = Field(default=1.88, gt=0)
    rank_window: int = Field(default=1440, ge=2)
    rank_lag: int = Field(default=60, ge=0)


class ScoringConfig(_Strict):
    """How forecasts turn into scores (see ``openanomaly.scoring`` and ``openanomaly.calibration``)."""

    quantiles: tuple[float, float] = (0.05, 0.95)
    direction: Literal["both", "above", "below"] = "both"
    min_deviation: float = Field(default=0.0, ge=0)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)

    @field_validator("quantiles")
    @classmethod
    def _band(cls, band: tuple[float, float]) -> tuple[float, float]:
        low, high = band
        if not 0 < low < 0.5 < high < 1:
            raise ValueError(f"quantiles must satisfy 0 < low < 0.5 < high < 1, got [{low}, {high}]")
        return band


class OutputConfig(_Strict):
    anomaly_score: str = "anomaly_score"
    yhat: str = "yhat"
    yhat_lower: str = "yhat_lower"
    yhat_upper: str = "yhat_upper"
    extra_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("anomaly_score", "yhat", "yhat_lower", "yhat_upper")
    @classmethod
    def _metric_name(cls, name: str) -> str:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
            raise ValueError(f"{name!r} is not a valid Prometheus metric name")
        return name

    @field_validator("extra_labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith("__"):
                raise ValueError(f"{name!r} is not a valid label name")
            if name in ("for", "model"):
                raise ValueError(f"label {name!r} is set by OpenAnomaly and cannot be overridden")
        return labels


class Pipeline(_Strict):
    """One query, one model, one schedule: every series the query returns is scored alone."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]+$")
    query: str = Field(min_length=1)
    step: PositiveDuration = timedelta(minutes=1)
    model: ModelConfig
    schedule: Schedule = Schedule()
    scoring: ScoringConfig = ScoringConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _spec_shorthand(cls, value: Any) -> Any:
        return {"spec": value} if isinstance(value, str) else value

    @field_validator("query")
    @classmethod
    def _not_blank(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("query must not be blank")
        return query

    @model_validator(mode="after")
    def _grid(self) -> Pipeline:
        if self.schedule.context < self.step:
            raise ValueError("schedule.context must cover at least one step")
        return self

    @property
    def context_points(self) -> int:
        return int(self.schedule.context / self.step)

    @property
    def step_ms(self) -> int:
        return round(self.step.total_seconds() * 1000)


class Config(_Strict):
    settings: Settings
    pipelines: list[Pipeline] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for pipeline in self.pipelines:
            if pipeline.name in seen:
                raise ValueError(f"duplicate pipeline name {pipeline.name!r}")
            seen.add(pipeline.name)
        return self

    def pipeline(self, name: str) -> Pipeline:
        for pipeline in self.pipelines:
            if pipeline.name == name:
                return pipeline
        raise KeyError(name)
