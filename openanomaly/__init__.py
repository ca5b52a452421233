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

from openanomaly.config import Config, Pipeline, Settings, TSDBSettings
from openanomaly.errors import (
    ArtifactError,
    ArtifactNotFound,
    ConfigError,
    ConfigValidationError,
    DataError,
    InvalidPipelineName,
    ModelError,
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
from openanomaly.series import SeriesMatrix

if TYPE_CHECKING:
    from openanomaly.configstore import load_config
    from openanomaly.csvseries import read_csv_series
    from openanomaly.detect import Detection, backtest
    from openanomaly.jobs import JobOptions
    from openanomaly.models.registry import load_forecaster
    from openanomaly.scheduler import ensure_scheduler
    from openanomaly.tsdb import PrometheusClient
    from openanomaly.ui import build_playground, launch, mount_playground
    from openanomaly.ui.compute import PlaygroundResult, build_pipeline, make_chart, run_csv, run_query
    from openanomaly.window import score_range, scored_range

_LAZY = {
    "load_config": "openanomaly.configstore",
    "read_csv_series": "openanomaly.csvseries",
    "Detection": "openanomaly.detect",
    "backtest": "openanomaly.detect",
    "JobOptions": "openanomaly.jobs",
    "load_forecaster": "openanomaly.models.registry",
    "ensure_scheduler": "openanomaly.scheduler",
    "PrometheusClient": "openanomaly.tsdb",
    "build_playground": "openanomaly.ui",
    "launch": "openanomaly.ui",
    "mount_playground": "openanomaly.ui",
    "PlaygroundResult": "openanomaly.ui.compute",
    "build_pipeline": "openanomaly.ui.compute",
    "make_chart": "openanomaly.ui.compute",
    "run_csv": "openanomaly.ui.compute",
    "run_query": "openanomaly.ui.compute",
    "score_range": "openanomaly.window",
    "scored_range": "openanomaly.window",
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
    "backtest",
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
