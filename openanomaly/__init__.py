"""OpenAnomaly: anomaly detection for Prometheus-compatible metrics.

This module is the public import surface: what the README and docs/ import, what a
program needs to load a configuration, talk to a TSDB, load a forecaster and score a
range, start the scheduler on a Ray cluster, and every exception of the tree in
:mod:`openanomaly.errors`. Deeper modules are the implementation and may move.

``import openanomaly`` stays light (no torch, Ray, Gradio, boto3 or HTTP client): the
names in ``_LAZY`` are imported from their module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from openanomaly.core.config import Config, Pipeline, Settings, TSDBSettings
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import (
    ArtifactError,
    ArtifactNotFound,
    ConfigError,
    ConfigValidationError,
    DataError,
    InvalidPipelineName,
    ModelError,
    NodeLost,
    NoSamples,
    NoSeries,
    OpenAnomalyError,
    PipelineNotFound,
    PlaygroundInputError,
    PreconditionFailed,
    QueryError,
    RayUnavailable,
    RemoteWriteError,
    SchedulerUnavailable,
    TSDBError,
    UnknownModelSpec,
    UsageError,
    WindowTimeout,
)
from openanomaly.models.base import Forecaster, QuantileForecast

if TYPE_CHECKING:
    from openanomaly.configstore.files import load_config
    from openanomaly.core.detect import Detection, score_range
    from openanomaly.io.csvseries import read_csv_series
    from openanomaly.io.tsdb import PrometheusClient
    from openanomaly.models.registry import load_forecaster
    from openanomaly.runtime.options import JobOptions
    from openanomaly.runtime.scheduler_actor import ensure_scheduler
    from openanomaly.runtime.window import scored_range
    from openanomaly.ui import build_playground, launch, mount_playground
    from openanomaly.ui.compute import PlaygroundResult, build_pipeline, make_chart, run_csv, run_query

_LAZY = {
    "load_config": "openanomaly.configstore.files",
    "read_csv_series": "openanomaly.io.csvseries",
    "Detection": "openanomaly.core.detect",
    "JobOptions": "openanomaly.runtime.options",
    "load_forecaster": "openanomaly.models.registry",
    "ensure_scheduler": "openanomaly.runtime.scheduler_actor",
    "PrometheusClient": "openanomaly.io.tsdb",
    "build_playground": "openanomaly.ui",
    "launch": "openanomaly.ui",
    "mount_playground": "openanomaly.ui",
    "PlaygroundResult": "openanomaly.ui.compute",
    "build_pipeline": "openanomaly.ui.compute",
    "make_chart": "openanomaly.ui.compute",
    "run_csv": "openanomaly.ui.compute",
    "run_query": "openanomaly.ui.compute",
    "score_range": "openanomaly.core.detect",
    "scored_range": "openanomaly.runtime.window",
}
"""Public name -> the module that defines it, imported on first access (:func:`__getattr__`)."""

__all__ = [
    "ArtifactError",
    "ArtifactNotFound",
    "Config",
    "ConfigError",
    "ConfigValidationError",
    "DataError",
    "Detection",
    "Forecaster",
    "InvalidPipelineName",
    "JobOptions",
    "ModelError",
    "NoSamples",
    "NoSeries",
    "NodeLost",
    "OpenAnomalyError",
    "Pipeline",
    "PipelineNotFound",
    "PlaygroundInputError",
    "PlaygroundResult",
    "PreconditionFailed",
    "PrometheusClient",
    "QuantileForecast",
    "QueryError",
    "RayUnavailable",
    "RemoteWriteError",
    "SchedulerUnavailable",
    "SeriesMatrix",
    "Settings",
    "TSDBError",
    "TSDBSettings",
    "UnknownModelSpec",
    "UsageError",
    "WindowTimeout",
    "build_pipeline",
    "build_playground",
    "ensure_scheduler",
    "launch",
    "load_config",
    "load_forecaster",
    "make_chart",
    "mount_playground",
    "read_csv_series",
    "run_csv",
    "run_query",
    "score_range",
    "scored_range",
]


def __getattr__(name: str) -> Any:
    """A lazy public name: import its module now and keep the value here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
