"""Maps a model spec string (``chronos:…``, ``statsforecast:AutoETS``, ``zscore``) to an adapter.

An explicit table rather than registration on import, so the set of models does not
depend on which modules happen to be imported, and ``import openanomaly`` stays light:
adapters (and torch) are imported only when a model is loaded or its params checked.

Each entry is an :class:`Adapter`: the facts the rest of the code needs about a model
(how it is fitted, when it wants a GPU, what it can forecast) in one place, so the
scheduler, the fitted-model code, Serve and the config checks ask :func:`model_info`
instead of guessing from the spec's prefix.

To add an adapter: one :class:`Adapter` in ``ADAPTERS``. Its ``check_params`` is
required: a misspelt option must fail when the config is loaded, not when a scheduled
job first loads the model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from openanomaly.errors import ModelError, UnknownModelSpec

if TYPE_CHECKING:
    from openanomaly.models.base import Forecaster

__all__ = [
    "ADAPTERS",
    "NEURALFORECAST_MODELS",
    "STATSFORECAST_MODELS",
    "Adapter",
    "FitKind",
    "ModelInfo",
    "load_forecaster",
    "model_info",
    "split_spec",
    "validate_params",
    "validate_spec",
]

FitKind = Literal["zero_shot", "per_series", "global"]
"""How a model learns: ``zero_shot``: nothing is fitted ahead, each window is forecast
from its context alone (Chronos, ``default``, ``mad``, ``zscore``, SeasonalNaive);
``per_series``: one model per series, fitted on each window's context or, with
``schedule.fit_every``, fitted ahead and stored; ``global``: one model for all series of
a pipeline, which must be trained ahead (``schedule.fit_every`` required)."""

STATSFORECAST_MODELS = ("AutoETS", "AutoARIMA", "MSTL", "SeasonalNaive")
NEURALFORECAST_MODELS = ("NHITS",)
# statsforecast models with a ``forward`` method (fitted parameters applied to new data).
_STATS_FITTED = ("AutoETS", "AutoARIMA", "MSTL")


def _never(params: Mapping[str, Any]) -> bool:
    return False


def _device_gpu(params: Mapping[str, Any]) -> bool:
    """Chronos: ``device: auto`` (the default) or ``cuda[:i]`` uses a GPU when there is one."""
    return str(params.get("device", "auto")) != "cpu"


def _accelerator_gpu(params: Mapping[str, Any]) -> bool:
    """NHITS runs where lightning's ``accelerator`` says: CPU unless the pipeline asks."""
    from openanomaly.models.neural import GPU_ACCELERATORS

    return str(params.get("accelerator", "cpu")) in GPU_ACCELERATORS


@dataclass(frozen=True)
class Adapter:
    """What OpenAnomaly knows about one adapter, answerable without loading a model.

    Hooks that live in the adapter's module are import paths (``"module:attr"``),
    resolved on use, so importing the registry imports no adapter.

    Attributes:
        factory: ``factory(name, **params) -> Forecaster``; loads the model.
        check_params: ``check(name, **params)``; raises ``ModelError`` for an unknown or
            out-of-range option. Cheap: imports nothing heavy, loads nothing.
        names: the model names allowed after ``prefix:``; ``()`` for a bare spec
            (``mad``), ``None`` for any (a Chronos directory or hub id).
        fit: the :data:`FitKind` of a model name.
        gpu: whether a model with these params runs on a GPU when one is visible (the
            scheduler then reserves one for it).
        device_param: the adapter takes a ``device`` param, which a Serve replica fills
            in with the device it was given.
        levels: ``levels(name, params) -> (low, high) | None``: the range of quantile
            levels it can forecast; None: any level in (0, 1), or unknown until loaded.
        min_context: ``min_context(name, params) -> int``: fewest context points a
            forecast needs; None: one point is enough.
        max_horizon: ``max_horizon(name, params) -> int | None``: the longest horizon
            (``infer_every / step``) it forecasts; None: any (or unknown until loaded).
    """

    factory: str
    check_params: str
    names: tuple[str, ...] | None
    fit: Callable[[str], FitKind]
    gpu: Callable[[Mapping[str, Any]], bool] = _never
    device_param: bool = False
    levels: str | None = None
    min_context: str | None = None
    max_horizon: str | None = None


ADAPTERS: dict[str, Adapter] = {
    "chronos": Adapter(
        factory="openanomaly.models.chronos:ChronosForecaster.from_spec",
        check_params="openanomaly.models.chronos:ChronosForecaster.check_params",
        names=None,
        fit=lambda name: "zero_shot",
        gpu=_device_gpu,
        device_param=True,
        levels="openanomaly.models.chronos:producible_levels",
        max_horizon="openanomaly.models.chronos:longest_horizon",
    ),
    "statsforecast": Adapter(
        factory="openanomaly.models.stats:StatsForecaster.from_spec",
        check_params="openanomaly.models.stats:StatsForecaster.check_params",
        names=STATSFORECAST_MODELS,
        fit=lambda name: "per_series" if name in _STATS_FITTED else "zero_shot",
        min_context="openanomaly.models.stats:StatsForecaster.context_needed",
    ),
    "zscore": Adapter(
        factory="openanomaly.models.baselines:ZScoreForecaster.from_spec",
        check_params="openanomaly.models.baselines:ZScoreForecaster.check_params",
        names=(),
        fit=lambda name: "zero_shot",
    ),
    "mad": Adapter(
        factory="openanomaly.models.baselines:MadForecaster.from_spec",
        check_params="openanomaly.models.baselines:MadForecaster.check_params",
        names=(),
        fit=lambda name: "zero_shot",
    ),
    "default": Adapter(
        factory="openanomaly.models.default:DefaultForecaster.from_spec",
        check_params="openanomaly.models.default:DefaultForecaster.check_params",
        names=(),
        fit=lambda name: "zero_shot",
    ),
    # Trained by the scheduler (schedule.fit_every); see openanomaly.models.fitted.
    "neuralforecast": Adapter(
        factory="openanomaly.models.neural:NHITSForecaster.from_spec",
        check_params="openanomaly.models.neural:NHITSForecaster.check_params",
        names=NEURALFORECAST_MODELS,
        fit=lambda name: "global",
        gpu=_accelerator_gpu,
    ),
}


@dataclass(frozen=True)
class ModelInfo:
    """The facts about one spec with its params (see :func:`model_info`).

    Attributes:
        spec: the spec string, e.g. ``"statsforecast:AutoETS"``.
        prefix, name: its two parts (``name`` is ``""`` for a bare spec).
        fit: :data:`FitKind`.
        gpu: runs on a GPU when one is visible.
        device_param: takes a ``device`` param (Serve fills it in).
        levels: ``(low, high)`` quantile levels it can forecast, or None for any.
        min_context: fewest context points a forecast needs.
        max_horizon: the longest horizon it forecasts, or None for any.
    """

    spec: str
    prefix: str
    name: str
    fit: FitKind
    gpu: bool
    device_param: bool
    levels: tuple[float, float] | None
    min_context: int
    max_horizon: int | None


def split_spec(spec: str) -> tuple[str, str]:
    """``"chronos:amazon/chronos-bolt-small"`` → ``("chronos", "amazon/chronos-bolt-small")``."""
    prefix, _, name = spec.partition(":")
    return prefix.strip(), name.strip()


def validate_spec(spec: str) -> None:
    """Raise UnknownModelSpec unless ``spec`` names a known adapter (and model, where listed)."""
    prefix, name = split_spec(spec)
    known = [f"{p}:<name>" if a.names != () else p for p, a in ADAPTERS.items()]
    adapter = ADAPTERS.get(prefix)
    if adapter is None or bool(name) != (adapter.names != ()):
        raise UnknownModelSpec(spec, known)
    if adapter.names and name not in adapter.names:
        raise UnknownModelSpec(spec, [f"{prefix}:{m}" for m in adapter.names])


def _resolve(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def model_info(spec: str, params: Mapping[str, Any] | None = None) -> ModelInfo:
    """The facts about ``spec`` with ``params``, without loading the model.

    Example:
        >>> model_info("chronos:amazon/chronos-bolt-small", {"device": "cpu"}).levels
        (0.1, 0.9)

    Raises:
        UnknownModelSpec: the spec names no adapter.
    """
    validate_spec(spec)
    prefix, name = split_spec(spec)
    adapter = ADAPTERS[prefix]
    params = dict(params or {})
    levels = _resolve(adapter.levels)(name, params) if adapter.levels else None
    return ModelInfo(
        spec=spec,
        prefix=prefix,
        name=name,
        fit=adapter.fit(name),
        gpu=adapter.gpu(params),
        device_param=adapter.device_param,
        levels=levels,
        min_context=_resolve(adapter.min_context)(name, params) if adapter.min_context else 1,
        max_horizon=_resolve(adapter.max_horizon)(name, params) if adapter.max_horizon else None,
    )


def validate_params(spec: str, params: Mapping[str, Any]) -> None:
    """Check a spec and its adapter options without loading the model (cheap; for config load).

    Raises:
        UnknownModelSpec: the spec names no adapter.
        ModelError: an option is unknown or out of range (e.g. ``season_length: 0``).
    """
    validate_spec(spec)
    prefix, name = split_spec(spec)
    _resolve(ADAPTERS[prefix].check_params)(name, **params)


def load_forecaster(spec: str, **params: Any) -> Forecaster:
    """Build the forecaster for ``spec``; ``params`` are the adapter's options.

    Raises:
        UnknownModelSpec: the spec names no adapter.
        ModelError: the adapter failed to load (missing weights, bad params).
    """
    validate_spec(spec)
    prefix, name = split_spec(spec)
    factory = _resolve(ADAPTERS[prefix].factory)
    try:
        return factory(name, **params)
    except ModelError:
        raise
    except TypeError as error:
        raise ModelError(f"bad model params {params!r}: {error}", spec=spec) from error
