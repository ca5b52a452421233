"""Typed configuration: TSDB settings and the pipelines to run.

Validation happens here, when YAML is loaded, so a typo fails at start-up with the
file, pipeline and field named, not hours later inside a scheduled job.
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    StrictFloat,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from openanomaly.core.calibration import AlertPolicy
from openanomaly.core.times import DURATION_MAX_CHARS, DURATION_PATTERN, format_duration, parse_duration
from openanomaly.models.fitted import FitSpec

__all__ = [
    "PIPELINE_NAME",
    "PIPELINE_NAME_MAX",
    "ArtifactSettings",
    "CalibrationConfig",
    "Config",
    "ConfigStoreSettings",
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
    "redact_url",
]


def _problem(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    """One located error for ``ValidationError.from_exception_data`` (the message as written)."""
    return InitErrorDetails(
        type=PydanticCustomError("openanomaly", "{message}", {"message": message}), loc=loc, input=value
    )


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"duration must be positive, got {format_duration(value)}")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_CHARS,
            "examples": ["5m", "1h30m"],
        }
    ),
]
PositiveDuration = Annotated[Duration, BeforeValidator(lambda v: _positive(parse_duration(v)))]


def _not_bool_or_text(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


JSON_INT = BeforeValidator(_not_bool_or_text)
Int = Annotated[int, Field(strict=False), JSON_INT]
"""An integer as JSON Schema means it: ``3`` or ``3.0``; not ``true``, ``"3"`` or ``3.5``.
The OpenAPI document calls these ``integer``, so a client may send ``3.0``; a strict
pydantic ``int`` refused it."""


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret_text(value: Any) -> Any:
    """YAML reads ``password: 8812771234567`` as an int; a secret is its text. Coercing
    here, rather than failing, also keeps the value out of the validation error."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Secret = Annotated[SecretStr, BeforeValidator(_secret_text)]
"""A credential: shown as ``**********`` in reprs, logs, errors and dumps;
``.get_secret_value()`` where it is sent."""

_USERINFO = re.compile(r"^(https?://)([^/@\s]*)@")


def redact_url(text: str) -> str:
    """``text`` with the userinfo of an ``http(s)://user:pass@host`` URL replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


class TSDBSettings(_Strict):
    """Where to read series and write scores. Works with Prometheus and VictoriaMetrics.

    Credentials (``bearer_token``, ``password``) are ``SecretStr``. Userinfo in a URL
    (``http://alice:pass@host``) is moved into ``username``/``password`` at load, so no
    URL that ends up in a log line or error message carries it.
    """

    # The input of a failed validation may hold a credential: keep it out of messages.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(description="Base URL of the Prometheus HTTP API, e.g. http://localhost:8428")
    write_url: str | None = Field(
        default=None,
        description="Remote-write endpoint; default: <url>/api/v1/write",
    )
    bearer_token: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    headers: dict[str, Annotated[str, BeforeValidator(_secret_text)]] = Field(default_factory=dict)
    timeout: PositiveDuration = timedelta(seconds=30)
    retries: int = Field(default=3, ge=0, le=20)
    backoff: PositiveDuration = timedelta(seconds=0.5)
    max_points_per_query: int = Field(
        default=10_000,
        gt=0,
        description="Points per series per request; longer ranges are split (Prometheus allows 11000)",
    )
    write_batch_samples: int = Field(default=50_000, gt=0, description="Samples per remote-write request")

    @model_validator(mode="before")
    @classmethod
    def _userinfo_to_basic_auth(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        found = set()
        for key in ("url", "write_url"):
            value = data.get(key)
            match = _USERINFO.match(value) if isinstance(value, str) else None
            if match:
                found.add(urllib.parse.unquote(match.group(2)))
                data[key] = redact_url(value).replace("***@", "", 1)
        if not found:
            return data
        if len(found) > 1 or data.get("username") is not None or data.get("bearer_token"):
            raise ValueError(
                "credentials in the URL and in username/password/bearer_token (or different ones "
                "in url and write_url): give them once, in username/password"
            )
        username, _, password = found.pop().partition(":")
        return data | {"username": username, "password": password or None}

    @field_validator("url", "write_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http(s) URL, got {redact_url(value)!r}")
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

    def secrets(self) -> list[str]:
        """Every credential and header value, for scrubbing server replies that echo them."""
        values = [secret.get_secret_value() for secret in (self.bearer_token, self.password) if secret]
        return [value for value in (*values, *self.headers.values()) if value]


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


class ConfigStoreSettings(_Strict):
    """Where pipelines are kept and edited (:mod:`openanomaly.configstore.stores`); settings: the file.

    ``yaml``: the pipelines file itself (rewritten on each edit). ``s3``: one object per
    pipeline in the artifacts bucket, every version kept, so a cluster whose file is a
    read-only ConfigMap can still be edited; the file's own pipelines are a seed.
    """

    kind: Literal["yaml", "s3"] = "yaml"


class Settings(_Strict):
    tsdb: TSDBSettings
    artifacts: ArtifactSettings = ArtifactSettings()
    config_store: ConfigStoreSettings = ConfigStoreSettings()

    @field_validator("config_store")
    @classmethod
    def _store_has_bucket(cls, store: ConfigStoreSettings, info: ValidationInfo) -> ConfigStoreSettings:
        artifacts = info.data.get("artifacts")
        if store.kind == "s3" and artifacts is not None and artifacts.kind != "s3":
            raise ValueError(
                f"config_store.kind 's3' keeps pipelines in the artifacts bucket: "
                f"set artifacts.kind 's3' (got {artifacts.kind!r})"
            )
        return store


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
            # Located at ``params`` (not the whole model) so the message names the field to fix.
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [_problem(("params",), str(error), self.params)],
            ) from error
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
    """The alert policy after every forecaster (see ``openanomaly.core.calibration``).

    ``anomaly_score > 1`` means "rarer than ``false_alarms_per_week`` for this series",
    read off the series' own residual record; these are all the knobs it has.
    """

    enabled: bool = Field(
        default=True,
        strict=True,
        description="Off: the model's own quantile band scores, uncalibrated (for comparison only)",
    )
    false_alarms_per_week: float = Field(
        strict=False,
        default=1.0,
        gt=0,
        le=1000,
        description="The false-alarm budget per series: how often noise alone may cross score 1 "
        "(before the cooldown merges repeats)",
    )
    cooldown: Duration = Field(
        default="6h",  # as the API schema shows it; validated to a timedelta
        validate_default=True,
        description="After an alert, only a worse deviation alerts again within this long "
        "(one page per incident)",
    )
    min_history: Duration = Field(
        default="1d",
        validate_default=True,
        description="Points whose residual record spans less than this are warm-up: not scored "
        "(0s: as soon as the tail can be fitted)",
    )

    @field_validator("false_alarms_per_week", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool | str):
            raise PydanticCustomError("float_type", "Input should be a valid number")
        return value

    def policy(self) -> AlertPolicy:
        """The plain record the pure stage takes."""
        return AlertPolicy(
            false_alarms_per_week=self.false_alarms_per_week,
            cooldown_s=self.cooldown.total_seconds(),
            min_history_s=self.min_history.total_seconds(),
            enabled=self.enabled,
        )


class ScoringConfig(_Strict):
    """How forecasts turn into scores: :mod:`openanomaly.core.scoring`, then the calibration stage."""

    quantiles: tuple[StrictFloat, StrictFloat] = (0.05, 0.95)
    direction: Literal["both", "above", "below"] = "both"
    min_deviation: float = Field(strict=True, default=0.0, ge=0)
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


PIPELINE_NAME = r"^[a-zA-Z0-9_.-]*[a-zA-Z0-9_-][a-zA-Z0-9_.-]*$"
"""A pipeline's name: safe as a label value, an S3 key part and a URL path segment.

Letters, digits, ``_``, ``.`` and ``-``, and not dots alone: ``.`` and ``..`` (also
sent as ``%2e%2e``) are path segments, not names."""

PIPELINE_NAME_MAX = 200
"""The longest pipeline name (characters)."""


class Pipeline(_Strict):
    """One query, one model, one schedule: every series the query returns is scored alone."""

    name: str = Field(pattern=PIPELINE_NAME, max_length=PIPELINE_NAME_MAX)
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
        # Windows and forecast chunks sit on the infer_every grid, their points on the step
        # grid: both grids must meet, or a window would hold a fractional number of points.
        if self.schedule.infer_every % self.step:
            raise ValueError(
                f"schedule.infer_every ({format_duration(self.schedule.infer_every)}) must be a whole "
                f"multiple of step ({format_duration(self.step)})"
            )
        return self

    @property
    def context_points(self) -> int:
        return int(self.schedule.context / self.step)

    @property
    def fit_spec(self) -> FitSpec:
        """What fitting this pipeline's model needs, as the plain record the model layer takes."""
        return FitSpec(
            spec=self.model.spec,
            params=self.model.params,
            quantiles=self.scoring.quantiles,
            context=self.context_points,
        )

    @property
    def chunk_points(self) -> int:
        """Points forecast per chunk: ``infer_every // step``, at least 1."""
        return max(1, int(self.schedule.infer_every / self.step))

    @property
    def step_ms(self) -> int:
        return round(self.step.total_seconds() * 1000)

    @property
    def infer_every_ms(self) -> int:
        return round(self.schedule.infer_every.total_seconds() * 1000)


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
