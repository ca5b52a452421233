"""Chronos-Bolt and Chronos-2 (zero-shot foundation models) behind the Forecaster protocol.

Pick Chronos when series are many and varied and you cannot tune a model per metric:
it needs no fitting and forecasts thousands of series per call, best on a GPU.

The spec ``chronos:<name or directory>`` goes to ``BaseChronosPipeline.from_pretrained``,
which reads ``chronos_pipeline_class`` from the checkpoint's config, so Chronos-Bolt,
Chronos-2 (and the original sample-based Chronos) load through the same call.

Behaviour made explicit here (the pipelines would warn and carry on):

* **Quantile levels.** Bolt is trained on 0.1…0.9, Chronos-2 on 0.01…0.99. Levels
  between trained ones are interpolated linearly (exact for trained levels). Levels
  outside the trained range follow ``tail_quantiles``: ``"error"`` (default) raises
  ``ModelError``; ``"clamp"`` uses the outermost trained level (what Chronos itself does,
  so a requested 0.05 is really 0.1); ``"normal"`` extrapolates from the median as if
  the tail were normal (scales the outermost trained offset by the ratio of normal
  z-values). Quantiles are sorted per step first (random or undertrained weights can
  cross them).
* **Horizon.** Longer than the model's native prediction length (Bolt: 64, Chronos-2:
  its output patches) raises ``ModelError`` unless ``allow_long_horizon=True``, which
  rolls the forecast out autoregressively (quality degrades with distance).
* **Missing data.** Left padding and inner NaN are passed to the model, which masks
  them. A row with no finite value in the part of the context the model reads gets NaN
  forecasts instead of failing the batch (the scorer turns those into NaN scores).
* **Hub access.** Hub names are first looked up in the local Hugging Face cache; if not
  there, the hub is probed once (3 s) instead of letting ``huggingface_hub`` retry for
  half a minute, and an unreachable hub is a ``ModelError`` saying to download the model
  elsewhere and point the spec at the directory.
* **Shipped weights.** ``chronos:openanomaly-bolt-mini`` is a small Chronos-Bolt
  pretrained on synthetic series (:mod:`openanomaly.pretrain`) and stored in the
  package; the name resolves to that directory (:data:`SHIPPED_MODELS`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import (
    QuantileForecast,
    check_forecast,
    reject_unknown_params,
    validate_quantile_levels,
)
from openanomaly.models.baselines import as_contexts

if TYPE_CHECKING:
    import torch

__all__ = [
    "BOLT_PREDICTION_LENGTH",
    "BOLT_QUANTILES",
    "CHRONOS2_QUANTILES",
    "HUB_MODELS",
    "SHIPPED_MODELS",
    "ChronosForecaster",
    "check_levels",
    "checkpoint_location",
    "longest_horizon",
    "map_levels",
    "native_horizon",
    "producible_levels",
    "resolve_device",
    "resolve_dtype",
    "trained_levels",
]

# The levels the released checkpoints were trained on (their config.json
# ``chronos_config.quantiles``); used for hub ids, whose config is not read before loading.
BOLT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CHRONOS2_QUANTILES = (0.01, *(round(0.05 * i, 2) for i in range(1, 20)), 0.99)  # 21 levels
BOLT_PREDICTION_LENGTH = 64
# Checkpoints shipped inside the package (pretrained on synthetic series, see
# openanomaly.pretrain): ``chronos:<name>`` loads them offline like a local directory.
SHIPPED_MODELS = {"openanomaly-bolt-mini": Path(__file__).parent / "weights" / "openanomaly-bolt-mini"}
# The released checkpoints on the Hugging Face hub: the hub ids a pipeline sent over the
# API may name (:mod:`openanomaly.models.trust`); any other checkpoint is a directory.
HUB_MODELS = (
    *(f"amazon/chronos-bolt-{size}" for size in ("tiny", "mini", "small", "base")),
    *(f"amazon/chronos-t5-{size}" for size in ("tiny", "mini", "small", "base", "large")),
    "amazon/chronos-2",
)

TailPolicy = Literal["error", "clamp", "normal"]
_TAILS = ("error", "clamp", "normal")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_PARAMS = ("device", "dtype", "batch_size", "allow_long_horizon", "tail_quantiles")
HUB_HINT = (
    "download the model elsewhere and point the spec at the local directory, "
    "e.g. chronos:/models/chronos-bolt-small"
)


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; explicit values pass."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but torch sees no CUDA device; use device: cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``"auto"`` → bfloat16 on CUDA (half the memory, tensor cores), float32 on CPU."""
    import torch

    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def map_levels(
    values: np.ndarray, trained: Sequence[float], wanted: np.ndarray, *, tails: TailPolicy, spec: str
) -> np.ndarray:
    """Forecasts at the trained levels → forecasts at the wanted levels.

    Args:
        values: float ``(n, h, len(trained))``, the model's quantiles (sorted per step here).
        trained: the model's quantile levels, increasing, including 0.5.
        wanted: requested levels ``(q,)``.
        tails: policy for levels outside ``[trained[0], trained[-1]]`` (module docstring).

    Returns:
        float64 ``(n, h, q)``.

    Raises:
        ModelError: a wanted level is outside the trained range and ``tails="error"``.
    """
    grid = np.asarray(trained, dtype=np.float64)
    values = np.sort(values, axis=-1)
    low, high = grid[0], grid[-1]
    outside = check_levels(trained, wanted, tails=tails, spec=spec)
    # Linear interpolation along the level axis, vectorised: index of the bracket per level.
    clipped = np.clip(wanted, low, high)
    upper = np.clip(np.searchsorted(grid, clipped, side="left"), 1, grid.size - 1)
    lower = upper - 1
    weight = (clipped - grid[lower]) / (grid[upper] - grid[lower])
    out = values[..., lower] * (1 - weight) + values[..., upper] * weight
    if outside.size and tails == "normal":
        median = _at(values, grid, 0.5)
        dist = NormalDist()
        for j, q in enumerate(wanted.tolist()):
            if low <= q <= high:
                continue
            edge = low if q < low else high
            ratio = dist.inv_cdf(q) / dist.inv_cdf(edge)
            out[..., j] = median + (_at(values, grid, edge) - median) * ratio
    return out


def check_levels(trained: Sequence[float], wanted: np.ndarray, *, tails: TailPolicy, spec: str) -> np.ndarray:
    """The wanted levels outside the trained range; raise if there are any and ``tails="error"``.

    Raises:
        ModelError: naming the levels, the trained range and how to proceed.
    """
    low, high = float(trained[0]), float(trained[-1])
    outside = wanted[(wanted < low - 1e-12) | (wanted > high + 1e-12)]
    if outside.size and tails == "error":
        raise ModelError(
            f"quantile levels {outside.tolist()} are outside the levels this model was trained on "
            f"[{low}, {high}]; request levels inside that range (scoring.quantiles), or set the "
            "model param tail_quantiles: clamp (use the outermost trained level) or normal "
            "(extrapolate a normal tail)",
            spec=spec,
        )
    return outside


def _at(values: np.ndarray, grid: np.ndarray, level: float) -> np.ndarray:
    index = np.flatnonzero(np.isclose(grid, level))
    if index.size:
        return values[..., index[0]]
    return np.apply_along_axis(lambda row: np.interp(level, grid, row), -1, values)


def checkpoint_location(name: str) -> str:
    """A shipped model's name (:data:`SHIPPED_MODELS`) → its directory; other names unchanged."""
    return str(SHIPPED_MODELS[name]) if name in SHIPPED_MODELS else name


def _checkpoint_config(name: str) -> dict[str, Any] | None:
    """The ``config.json`` of a checkpoint directory; None for a hub id or an unreadable file."""
    path = Path(checkpoint_location(name)).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not a checkpoint we can read: loading it reports the problem
    return config if isinstance(config, dict) else None


def _family(name: str) -> str:
    """``amazon/chronos-bolt-small`` → ``chronos-bolt-small``: how a hub id says what it is."""
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def trained_levels(name: str) -> tuple[float, ...] | None:
    """The quantile levels checkpoint ``name`` was trained on, without loading it.

    A directory: its ``config.json`` (``chronos_config.quantiles``; the sample-based
    ``ChronosPipeline`` has none, it estimates any level). A hub id: by name family
    (``chronos-bolt``: 0.1…0.9, ``chronos-2``: 0.01…0.99; ``chronos-t5`` is sample-based).
    None when any level is possible or it cannot be told before loading (a missing
    directory, an unknown family): the load itself then checks.
    """
    config = _checkpoint_config(name)
    if config is not None:
        levels = (config.get("chronos_config") or {}).get("quantiles")
        if config.get("chronos_pipeline_class") == "ChronosPipeline" or not levels:
            return None
        return tuple(float(q) for q in levels)
    if _family(name).startswith("chronos-bolt"):
        return BOLT_QUANTILES
    if _family(name).startswith("chronos-2"):
        return CHRONOS2_QUANTILES
    return None


def native_horizon(name: str) -> int | None:
    """Steps checkpoint ``name`` forecasts in one pass, without loading it (None: unknown).

    ``chronos_config.prediction_length`` (Bolt, original Chronos), or Chronos-2's
    ``max_output_patches`` x ``output_patch_size``; for a hub id only the Bolt family (64).
    """
    config = _checkpoint_config(name)
    if config is not None:
        chronos = config.get("chronos_config") or {}
        if "prediction_length" in chronos:
            return int(chronos["prediction_length"])
        if "max_output_patches" in chronos and "output_patch_size" in chronos:
            return int(chronos["max_output_patches"]) * int(chronos["output_patch_size"])
        return None
    return BOLT_PREDICTION_LENGTH if _family(name).startswith("chronos-bolt") else None


def longest_horizon(name: str, params: Mapping[str, Any]) -> int | None:
    """The longest horizon the adapter forecasts with ``params`` (registry fact; None: any).

    Past the native horizon it raises unless ``allow_long_horizon`` rolls the forecast out.
    """
    return None if params.get("allow_long_horizon", False) else native_horizon(name)


def producible_levels(name: str, params: Mapping[str, Any]) -> tuple[float, float] | None:
    """The range of levels the adapter can forecast with ``params`` (registry fact).

    ``tail_quantiles: clamp | normal`` answers any level; with ``error`` (the default)
    only levels inside the trained range. None: any level (or unknown before loading).
    """
    levels = trained_levels(name)
    if levels is None or params.get("tail_quantiles", "error") != "error":
        return None
    return levels[0], levels[-1]


def _is_local(name: str) -> bool:
    """A spec name that can only mean a directory (not a hub ``org/model`` id)."""
    return name.startswith(("/", "./", "../", "~", "\\")) or (len(name) > 1 and name[1] == ":")


def _hub_reachable(timeout: float = 3.0) -> bool:
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError:
        return False
    return True


class ChronosForecaster:
    """A Chronos pipeline forecasting batches of contexts (spec ``chronos:<name or dir>``).

    Example:
        >>> from openanomaly.models import load_forecaster  # doctest: +SKIP
        >>> f = load_forecaster("chronos:/models/chronos-bolt-small", device="auto")  # doctest: +SKIP
        >>> f.forecast(contexts, 12, [0.1, 0.5, 0.9]).quantiles.shape  # doctest: +SKIP
        (n_series, 12, 3)
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "auto",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
        batch_size: int = 256,
        allow_long_horizon: bool = False,
        tail_quantiles: TailPolicy = "error",
    ) -> None:
        """Load the model.

        Args:
            name_or_path: a local checkpoint directory, or a hub id
                (``amazon/chronos-bolt-small``) found in the local HF cache or downloaded.
            device: ``"auto"`` (CUDA if visible, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
            dtype: weights dtype; ``"auto"`` = bfloat16 on CUDA, float32 on CPU.
            batch_size: series per forward pass; bounds memory (activation memory grows
                with batch x context length; x levels when ``allow_long_horizon`` rolls out).
            allow_long_horizon: permit horizons beyond the model's native prediction length.
            tail_quantiles: levels outside the trained range: ``"error"``, ``"clamp"``,
                ``"normal"`` (see module docstring).

        Raises:
            ModelError: bad options, missing directory, no hub access, not a Chronos model.
        """
        self.spec = f"chronos:{name_or_path}"
        self.check_params(
            name_or_path,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            allow_long_horizon=allow_long_horizon,
            tail_quantiles=tail_quantiles,
        )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.allow_long_horizon = allow_long_horizon
        self.tail_quantiles: TailPolicy = tail_quantiles
        self.pipeline = self._load(name_or_path)
        from chronos import ForecastType

        self._sampled = self.pipeline.forecast_type == ForecastType.SAMPLES
        self.trained_levels: list[float] | None = (
            None if self._sampled else [float(q) for q in self.pipeline.quantiles]
        )
        if self.trained_levels is not None and not any(math.isclose(q, 0.5) for q in self.trained_levels):
            raise ModelError("checkpoint has no 0.5 quantile level, so no median", spec=self.spec)
        self.prediction_length = int(self.pipeline.model_prediction_length)
        self.context_length = int(getattr(self.pipeline, "model_context_length", 0)) or None

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> ChronosForecaster:
        """Registry factory: ``name`` is the hub id or directory, ``params`` the options."""
        return cls(name, **params)

    @classmethod
    def check_params(cls, name: str, **params: Any) -> None:
        """Validate options without importing torch (config-load time).

        Raises:
            ModelError: unknown option or value out of range.
        """
        spec = f"chronos:{name}"
        reject_unknown_params(params, _PARAMS, spec=spec)
        device = params.get("device", "auto")
        if not isinstance(device, str) or not (
            device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            raise ModelError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}", spec=spec)
        if params.get("dtype", "auto") not in _DTYPES:
            raise ModelError(f"dtype must be one of {', '.join(_DTYPES)}, got {params['dtype']!r}", spec=spec)
        batch_size = params.get("batch_size", 256)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelError(f"batch_size must be a positive integer, got {batch_size!r}", spec=spec)
        if not isinstance(params.get("allow_long_horizon", False), bool):
            raise ModelError("allow_long_horizon must be true or false", spec=spec)
        if params.get("tail_quantiles", "error") not in _TAILS:
            raise ModelError(
                f"tail_quantiles must be one of {', '.join(_TAILS)}, got {params['tail_quantiles']!r}",
                spec=spec,
            )

    def _load(self, name: str) -> Any:
        from chronos import BaseChronosPipeline

        kwargs: dict[str, Any] = {"device_map": self.device, "torch_dtype": self.dtype}
        name = checkpoint_location(name)
        path = Path(name).expanduser()
        if path.is_dir():
            return self._from_pretrained(BaseChronosPipeline, str(path), local_files_only=True, **kwargs)
        if _is_local(name) or path.exists():
            raise ModelError(
                f"no model directory at {str(path)!r}; give the directory that holds config.json "
                "and model.safetensors",
                spec=self.spec,
            )
        # A hub id: the local HF cache first, so offline machines with a cached copy work.
        try:
            return BaseChronosPipeline.from_pretrained(name, local_files_only=True, **kwargs)
        except OSError:
            pass
        except Exception as error:
            raise self._not_chronos(name, error) from error
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if offline or not _hub_reachable():
            why = "HF_HUB_OFFLINE is set" if offline else "no Hugging Face hub access"
            raise ModelError(f"{name!r} is not in the local cache and {why}: {HUB_HINT}", spec=self.spec)
        return self._from_pretrained(BaseChronosPipeline, name, **kwargs)

    def _from_pretrained(self, base: Any, name: str, **kwargs: Any) -> Any:
        try:
            return base.from_pretrained(name, **kwargs)
        except OSError as error:
            raise ModelError(
                f"could not load {name!r}: {error}. If offline, {HUB_HINT}", spec=self.spec
            ) from error
        except Exception as error:
            raise self._not_chronos(name, error) from error

    def _not_chronos(self, name: str, error: Exception) -> ModelError:
        return ModelError(
            f"{name!r} is not a loadable Chronos checkpoint (config.json with chronos_config and "
            f"chronos_pipeline_class, plus weights): {type(error).__name__}: {error}",
            spec=self.spec,
        )

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast a batch, ``batch_size`` series per forward pass.

        Args:
            contexts: float ``(n, L)``, left-padded with NaN; inner NaN allowed. Only the
                last ``context_length`` points (the model's limit) are read.
            horizon: steps to forecast, > 0; at most the model's prediction length unless
                ``allow_long_horizon``.
            quantiles: strictly increasing levels in (0, 1).

        Returns:
            ``QuantileForecast`` ``(n, horizon, q)``, median = the model's 0.5 level.
            Rows with no finite value in the read window are NaN.

        Raises:
            ModelError: horizon too long, levels outside the trained range (policy
                ``error``), bad input shapes.
        """
        values = as_contexts(contexts, horizon, spec=self.spec)
        levels = validate_quantile_levels(quantiles)
        if horizon > self.prediction_length and not self.allow_long_horizon:
            raise ModelError(
                f"horizon {horizon} is longer than the model's prediction length "
                f"{self.prediction_length}; forecast fewer steps per call (a shorter infer_every) "
                "or set the model param allow_long_horizon: true to roll out autoregressively",
                spec=self.spec,
            )
        n = values.shape[0]
        if self.context_length is not None and values.shape[1] > self.context_length:
            values = values[:, -self.context_length :]
        finite = np.isfinite(values)
        rows = np.flatnonzero(finite.any(axis=1))
        # Drop padding columns no row uses: less compute for short series.
        first = int(np.argmax(finite.any(axis=0))) if rows.size else values.shape[1]
        values = np.where(finite, values, np.nan)[:, first:]

        # Sample-based Chronos estimates any level from samples: ask for those (plus 0.5).
        grid = self.trained_levels or sorted({*levels.tolist(), 0.5})
        check_levels(grid, levels, tails=self.tail_quantiles, spec=self.spec)  # before any compute
        raw = np.full((n, horizon, len(grid)), np.nan)
        for start in range(0, rows.size, self.batch_size):
            chunk = rows[start : start + self.batch_size]
            raw[chunk] = self._predict(values[chunk], horizon, grid)
        band = map_levels(raw, grid, levels, tails=self.tail_quantiles, spec=self.spec)
        median = map_levels(raw, grid, np.array([0.5]), tails="error", spec=self.spec)[..., 0]
        return check_forecast(
            QuantileForecast(quantiles=band, levels=levels, median=median),
            n_series=n,
            horizon=horizon,
            spec=self.spec,
        )

    def _predict(self, chunk: np.ndarray, horizon: int, levels: list[float]) -> np.ndarray:
        """One forward batch: ``(b, L)`` → ``(b, horizon, len(levels))`` float64."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        kwargs: dict[str, Any] = {"prediction_length": horizon, "quantile_levels": levels}
        if type(self.pipeline).__name__ == "Chronos2Pipeline":
            tensor = tensor[:, None, :]  # (batch, variates=1, time)
            kwargs["batch_size"] = self.batch_size
        try:
            with torch.inference_mode():
                quantiles, _ = self.pipeline.predict_quantiles(tensor, **kwargs)
        except torch.cuda.OutOfMemoryError as error:
            raise ModelError(
                f"out of GPU memory at batch_size {self.batch_size}; lower the model param batch_size",
                spec=self.spec,
            ) from error
        if isinstance(quantiles, list):  # Chronos-2: one (variates, h, q) tensor per series
            quantiles = torch.stack([q[0] for q in quantiles])
        return quantiles.to(device="cpu", dtype=torch.float64).numpy()
