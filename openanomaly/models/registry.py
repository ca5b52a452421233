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

__all__ = [
    "ADAPTERS",
    "NEURALFORECAST_MODELS",
    "STATSFORECAST_MODELS",
    "load_forecaster",
    "split_spec",
    "validate_params",
    "validate_spec",
]

# prefix -> "module:factory"; the factory is called as factory(name, **params).
# To add an adapter: one entry here (and in _BARE if its spec has no ":name"). If the
# factory is ``Class.from_spec`` and the class has a classmethod
# ``check_params(name, **params)`` that imports nothing heavy, ``validate_params`` uses
# it to reject bad options when the config is loaded instead of when the model is.
ADAPTERS: dict[str, str] = {
    "chronos": "openanomaly.models.chronos:ChronosForecaster.from_spec",
    "statsforecast": "openanomaly.models.stats:StatsForecaster.from_spec",
    "zscore": "openanomaly.models.baselines:ZScoreForecaster.from_spec",
    "mad": "openanomaly.models.baselines:MadForecaster.from_spec",
    "default": "openanomaly.models.default:DefaultForecaster.from_spec",
    # Trained by the scheduler (schedule.fit_every); see openanomaly.models.fitted.
    "neuralforecast": "openanomaly.models.neural:NHITSForecaster.from_spec",
}

# Adapters whose spec has no ":name" part.
_BARE = {"zscore", "mad", "default"}

STATSFORECAST_MODELS = ("AutoETS", "AutoARIMA", "MSTL", "SeasonalNaive")
NEURALFORECAST_MODELS = ("NHITS",)


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
    if prefix == "neuralforecast" and name not in NEURALFORECAST_MODELS:
        raise UnknownModelSpec(spec, [f"neuralforecast:{m}" for m in NEURALFORECAST_MODELS])


def _resolve(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def validate_params(spec: str, params: dict[str, Any]) -> None:
    """Check a spec and its adapter options without loading the model (cheap; for config load).

    Only adapters whose class defines ``check_params`` are checked beyond the spec; the
    check imports the adapter module, which must not import torch/statsforecast at the top.

    Raises:
        UnknownModelSpec: the spec names no adapter.
        ModelError: an option is unknown or out of range (e.g. ``season_length: 0``).
    """
    validate_spec(spec)
    prefix, name = split_spec(spec)
    module_name, _, attribute = ADAPTERS[prefix].partition(":")
    owner, _, method = attribute.rpartition(".")
    if not owner or method != "from_spec":
        return
    check = getattr(_resolve(f"{module_name}:{owner}"), "check_params", None)
    if check is not None:
        check(name, **params)


def load_forecaster(spec: str, **params: Any) -> Forecaster:
    """Build the forecaster for ``spec``; ``params`` are the adapter's options.

    Raises:
        UnknownModelSpec: the spec names no adapter.
        ModelError: the adapter failed to load (missing weights, bad params).
    """
    validate_spec(spec)
    prefix, name = split_spec(spec)
    factory = _resolve(ADAPTERS[prefix])
    try:
        return factory(name, **params)
    except ModelError:
        raise
    except TypeError as error:
        raise ModelError(f"bad model params {params!r}: {error}", spec=spec) from error
