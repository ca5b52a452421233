"""Maps a model spec string (``chronos:…``, ``statsforecast:AutoETS``, ``zscore``) to an adapter.

An explicit table rather than registration on import, so the set of models does not
depend on which modules happen to be imported, and ``import openanomaly`` stays light:
adapters (and torch) are imported only when a model is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from openanomaly.errors import ModelError, UnknownModelSpec

if TYPE_CHECKING:
    from openanomaly.models.base import Forecaster

__all__ = ["ADAPTERS", "STATSFORECAST_MODELS", "load_forecaster", "split_spec", "validate_spec"]

# prefix -> "module:factory"; the factory is called as factory(name, **params).
ADAPTERS: dict[str, str] = {
    "chronos": "openanomaly.models.chronos:ChronosForecaster.from_spec",
    "statsforecast": "openanomaly.models.stats:StatsForecaster.from_spec",
    "zscore": "openanomaly.models.baselines:ZScoreForecaster.from_spec",
    "mad": "openanomaly.models.baselines:MadForecaster.from_spec",
    "default": "openanomaly.models.default:DefaultForecaster.from_spec",
}

# Adapters whose spec has no ":name" part.
_BARE = {"zscore", "mad", "default"}

STATSFORECAST_MODELS = ("AutoETS", "AutoARIMA", "MSTL", "SeasonalNaive")


def split_spec(spec: str) -> tuple[str, str]:
    """``"chronos:amazon/chronos-bolt-small"`` → ``("chronos", "amazon/chronos-bolt-small")``."""
    prefix, _, name = spec.partition(":")
    return prefix.strip(), name.strip()


def validate_spec(spec: str) -> None:
    """Raise UnknownModelSpec unless ``spec`` names a known adapter (and model, where listed)."""
    prefix, name = split_spec(spec)
    known = [f"{p}:<name>" if p not in _BARE else p for p in ADAPTERS]
    if prefix not in ADAPTERS:
        raise UnknownModelSpec(spec, known)
    if prefix in _BARE:
        if name:
            raise UnknownModelSpec(spec, known)
        return
    if not name:
        raise UnknownModelSpec(spec, known)
    if prefix == "statsforecast" and name not in STATSFORECAST_MODELS:
        raise UnknownModelSpec(spec, [f"statsforecast:{m}" for m in STATSFORECAST_MODELS])


def load_forecaster(spec: str, **params: Any) -> Forecaster:
    """Build the forecaster for ``spec``; ``params`` are the adapter's options.

    Raises:
        UnknownModelSpec: the spec names no adapter.
        ModelError: the adapter failed to load (missing weights, bad params).
    """
    validate_spec(spec)
    prefix, name = split_spec(spec)
    module_name, _, attribute = ADAPTERS[prefix].partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    try:
        return factory(name, **params)
    except ModelError:
        raise
    except TypeError as error:
        raise ModelError(f"bad model params {params!r}: {error}", spec=spec) from error
