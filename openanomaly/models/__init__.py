"""Forecasting models behind one protocol; see ``registry`` for the spec strings."""

from openanomaly.models.base import Forecaster, QuantileForecast, check_forecast
from openanomaly.models.registry import load_forecaster, validate_spec

__all__ = ["Forecaster", "QuantileForecast", "check_forecast", "load_forecaster", "validate_spec"]
