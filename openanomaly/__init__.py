"""OpenAnomaly: anomaly detection for Prometheus-compatible metrics.

This module is the public import surface; it stays light (no torch, Ray or boto3).
"""

from openanomaly.config import Config, Pipeline, Settings
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
from openanomaly.series import SeriesMatrix

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
