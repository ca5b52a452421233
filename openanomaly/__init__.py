"""OpenAnomaly: anomaly detection for Prometheus-compatible metrics.

This module is the public import surface; it stays light (no torch, Ray or boto3).
"""

from openanomaly.core.config import Config, Pipeline, Settings
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ModelError,
    OpenAnomalyError,
    QueryError,
    RemoteWriteError,
    TSDBError,
    UnknownModelSpec,
)
from openanomaly.models.base import Forecaster, QuantileForecast

__all__ = [
    "ArtifactError",
    "Config",
    "ConfigError",
    "DataError",
    "Forecaster",
    "ModelError",
    "OpenAnomalyError",
    "Pipeline",
    "QuantileForecast",
    "QueryError",
    "RemoteWriteError",
    "SeriesMatrix",
    "Settings",
    "TSDBError",
    "UnknownModelSpec",
]
