"""The ingress's settings: ``args`` of ``serve_config.yaml`` (models, limits, the scheduler link).

``serve run serve_config.yaml`` passes the application's ``args`` to
:func:`openanomaly.serve.app.build_app`, which validates them as :class:`AppSettings`.
"""

import os
import re

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from openanomaly.runtime.scheduler_actor import DEFAULT_NAME, DEFAULT_NAMESPACE
from openanomaly.serve.forecaster import ForecasterConfig
from openanomaly.serve.schemas import Limits

__all__ = ["AppSettings", "SchedulerLink"]


class SchedulerLink(BaseModel):
    """Which cluster scheduler ``/v1/pipelines`` talks to, and whether the app starts it.

    With ``pipelines`` set (``serve_config.yaml`` sets ``pipelines.yaml``; the chart the
    mounted ConfigMap), the ingress starts the named detached scheduler actor on that
    file, or finds the one already running, so ``serve run`` / a RayService brings up
    scoring too, and ``/v1/pipelines/{name}`` manages the pipelines of its store. Without
    it ``GET /v1/pipelines`` shows a scheduler started by ``openanomaly scheduler``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: str | None = Field(
        default=None,
        description="pipelines YAML the scheduler runs and /v1/pipelines manages: an absolute "
        "path or ~/...; created with no pipelines if missing",
    )
    name: str = DEFAULT_NAME
    namespace: str = DEFAULT_NAMESPACE

    @field_validator("pipelines")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        """A relative path would name a different file in every process: ``serve run``
        starts the replicas in a copy of its working directory (Ray's ``working_dir``),
        so pipelines saved there would vanish with it."""
        if not path:
            return path
        expanded = os.path.expanduser(path)
        if not os.path.isabs(expanded):
            raise ValueError(
                f"scheduler.pipelines must be an absolute path or start with ~/, got {path!r} "
                "(serve run starts the replicas in a copy of the current directory)"
            )
        return expanded


class AppSettings(BaseModel):
    """The ``args`` of the application in serve_config.yaml.

    Example::

        args:
          default_model: ets
          models:
            ets: {spec: "statsforecast:AutoETS", max_batch_size: 64}
            bolt: {spec: "chronos:amazon/chronos-bolt-small", params: {batch_size: 256}}
          limits: {max_series: 1000, max_points: 10000}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ForecasterConfig] = Field(min_length=1, description="Model name → its user_config")
    default_model: str | None = Field(
        default=None, description="Used when a request names none; default: the first model"
    )
    limits: Limits = Field(default_factory=Limits)
    scheduler: SchedulerLink = Field(default_factory=SchedulerLink)
    playground: bool = Field(
        default=True, description="Mount the Gradio playground at /playground/ (same bearer token)"
    )

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, ForecasterConfig]) -> dict[str, ForecasterConfig]:
        for name in models:
            if not re.fullmatch(r"[a-zA-Z0-9_.-]+", name):
                raise ValueError(f"model name {name!r} may only contain letters, digits, '_', '.', '-'")
        return models

    @model_validator(mode="after")
    def _default_known(self) -> "AppSettings":
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of {sorted(self.models)}")
        return self

    @property
    def default(self) -> str:
        return self.default_model or next(iter(self.models))
