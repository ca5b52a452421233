"""The batched model deployment: one model per deployment, many requests per model call.

Serve's ``@serve.batch`` collects the requests that reach a replica within
``batch_wait_timeout_s`` (up to ``max_batch_size``) into one list; ``forecast_batch``
turns that list into as few ``Forecaster.forecast`` calls as possible and splits the
result back. That is where the throughput comes from: a Chronos model forecasts 64
series in one pass in little more time than one.

How a batch is merged (``forecast_batch``):

* requests are grouped by (quantile levels, horizon): a model call has one of each.
  Grouping rather than padding every request to the longest horizon keeps a request
  that is invalid for the model (a horizon beyond what it allows) from failing the
  others, and keeps short requests from paying for long ones. Clients of one
  deployment normally share both, so a batch is one group;
* within a group the contexts are stacked into one 2-D array, left-padded with NaN to
  the longest context (the ``Forecaster`` convention), and the result is split back
  by rows.

The model spec, its params and the batching knobs come from the deployment's
``user_config`` (``ForecasterConfig``), so ``serve deploy`` with a new ``user_config``
swaps the model or retunes batching in place, without restarting replicas.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from openanomaly.errors import ConfigError, ModelError, OpenAnomalyError
from openanomaly.models.base import Forecaster, QuantileForecast, StepAware, check_forecast
from openanomaly.models.registry import load_forecaster, model_info, validate_params
from openanomaly.serve.progress import say

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BatchStats",
    "ForecastItem",
    "ForecastRejected",
    "ForecastReply",
    "ForecasterConfig",
    "ForecasterDeployment",
    "forecast_batch",
    "model_params",
    "stack_left_padded",
]

BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Upper bounds of the batch-size histogram (requests per model call)."""


class ForecasterConfig(BaseModel):
    """The deployment's ``user_config``: which model, and how to batch requests for it.

    Changing ``spec``, ``params`` or ``device`` reloads the model; changing only the
    batching knobs retunes the live batch queue. Keep the deployment's
    ``max_ongoing_requests`` at least ``max_batch_size`` (Serve's default of 5 caps
    every batch at 5).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(description="Model spec, e.g. chronos:amazon/chronos-bolt-small, statsforecast:AutoETS")
    params: dict[str, Any] = Field(default_factory=dict, description="Adapter options")
    max_batch_size: int = Field(default=64, gt=0, description="Requests per model call, at most")
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, description="How long a partial batch waits for more requests"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cuda when the replica was given a GPU (num_gpus > 0)"
    )

    @model_validator(mode="after")
    def _known_model(self) -> ForecasterConfig:
        # Spec and params are checked here, where the config is built (serve run / deploy
        # on the driver), so a typo fails before any replica starts.
        try:
            validate_params(self.spec, self.params)
        except ModelError as error:
            raise ValueError(str(error)) from error
        return self


class ForecastItem(NamedTuple):
    """One request to the deployment: a block of contexts sharing a horizon and levels.

    Attributes:
        contexts: float64 ``(r, L)``, left-padded with NaN; usually ``r == 1``.
        horizon: steps to forecast, > 0.
        quantiles: strictly increasing levels in (0, 1).
        step_s: the series' step in seconds when known (a model's ``for_step``).
    """

    contexts: np.ndarray
    horizon: int
    quantiles: tuple[float, ...]
    step_s: float | None = None


class ForecastReply(NamedTuple):
    """What ``ForecasterDeployment.forecast`` returns: the forecast and the spec that made it.

    The spec travels with every reply because ``user_config`` can swap the model at any
    time; the ingress reports the spec that actually answered.
    """

    forecast: QuantileForecast
    spec: str


class _Failed(NamedTuple):
    """A group's error, handed back in place of a result so other groups still succeed."""

    error: Exception


class BatchStats:
    """Counts of model calls by batch size, kept by each replica.

    A plain object rather than a Prometheus metric because it must cross a process
    boundary: the ingress reads ``snapshot()`` through the deployment handle and
    exports it on ``/metrics``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bucket_counts = [0] * len(BATCH_SIZE_BUCKETS)
        self.batches = 0
        self.requests = 0
        self.series = 0
        self.seconds = 0.0
        self.errors = 0

    def observe(self, *, requests: int, series: int, seconds: float, failed: bool = False) -> None:
        with self._lock:
            for index, bound in enumerate(BATCH_SIZE_BUCKETS):
                if requests <= bound:
                    self.bucket_counts[index] += 1
                    break
            self.batches += 1
            self.requests += requests
            self.series += series
            self.seconds += seconds
            self.errors += int(failed)

    def snapshot(self) -> dict[str, Any]:
        """Non-cumulative bucket counts plus totals (``requests / batches`` = mean batch size)."""
        with self._lock:
            return {
                "buckets": list(BATCH_SIZE_BUCKETS),
                "bucket_counts": list(self.bucket_counts),
                "batches": self.batches,
                "requests": self.requests,
                "series": self.series,
                "seconds": self.seconds,
                "errors": self.errors,
            }


def stack_left_padded(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Stack ``(r_i, L_i)`` blocks into one ``(sum r_i, max L_i)`` array, left-padded with NaN."""
    width = max(block.shape[1] for block in blocks)
    out = np.full((sum(block.shape[0] for block in blocks), width), np.nan)
    row = 0
    for block in blocks:
        out[row : row + block.shape[0], width - block.shape[1] :] = block
        row += block.shape[0]
    return out


def forecast_batch(
    model: Forecaster, items: Sequence[ForecastItem], *, spec: str
) -> list[QuantileForecast | _Failed]:
    """Forecast a batch of requests with one model call per distinct (levels, horizon, step).

    Args:
        model: the loaded forecaster.
        items: the requests, in batch order.
        spec: the model spec, named in errors.

    Returns:
        One entry per item, same order: its ``QuantileForecast`` (``(r, horizon, q)``),
        or ``_Failed`` carrying the error of its group's model call.
    """
    groups: dict[tuple[tuple[float, ...], int, float | None], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((tuple(item.quantiles), int(item.horizon), item.step_s), []).append(index)
    results: list[QuantileForecast | _Failed] = [_Failed(ModelError("not forecast", spec=spec))] * len(items)
    for (levels, horizon, step_s), members in groups.items():
        contexts = stack_left_padded([items[i].contexts for i in members])
        at_step = model.for_step(step_s) if step_s is not None and isinstance(model, StepAware) else model
        try:
            try:
                raw = at_step.forecast(contexts, horizon, list(levels))
            except Exception as error:
                message = f"could not forecast these series: {_first_line(error)}"
                raise ForecastRejected(message, spec=spec) from error
            out = check_forecast(raw, n_series=contexts.shape[0], horizon=horizon, spec=spec)
        except ModelError as error:
            failure = _Failed(error)
            for i in members:
                results[i] = failure
            continue
        row = 0
        for i in members:
            rows = items[i].contexts.shape[0]
            results[i] = QuantileForecast(
                quantiles=out.quantiles[row : row + rows],
                levels=out.levels,
                median=out.median[row : row + rows],
            )
            row += rows
    return results


class ForecastRejected(ModelError):
    """The model could not forecast a request's series (AutoETS finds no model to fit
    9 points, Chronos refuses a horizon): the request's data, not the server, is at
    fault, so the API answers 422. A forecast that breaks the contract stays a
    ``ModelError`` (500). ``ModelError``'s own signature, so it pickles across Ray."""


def _first_line(error: Exception) -> str:
    """``Type: first line`` of an exception, cut to 300 characters: model libraries' texts
    run to pages, and OpenAnomaly's own start with the model already named."""
    line = (str(error).strip().splitlines() or [""])[0][:300]
    return line if isinstance(error, OpenAnomalyError) else f"{type(error).__name__}: {line}"


def model_params(spec: str, params: dict[str, Any], *, device: str) -> dict[str, Any]:
    """The adapter params with the replica's device filled in (adapters with a ``device`` param).

    The Chronos adapter's ``dtype: auto`` then picks bfloat16 on CUDA (half the memory,
    more throughput, forecasts indistinguishable at metric scale) and float32
    on CPU; ``params`` can still set ``device``/``dtype`` explicitly.
    """
    out = dict(params)
    if model_info(spec, params).device_param:
        out.setdefault("device", device)
    return out


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.get_gpu_ids() else "cpu"


@serve.deployment(
    name="Forecaster",
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 1},
    # A model that cannot load will not load on retry; fail the deployment quickly
    # with the ModelError instead of a long series of identical tracebacks.
    max_constructor_retry_count=1,
)
class ForecasterDeployment:
    """Experimental. Holds one model and forecasts batches of requests through it.

    Call ``forecast(ForecastItem)`` through a ``DeploymentHandle``; the ingress does.
    ``info()`` reports the model and ``stats()`` the batch-size counts of this replica.
    """

    def __init__(self) -> None:
        self._model: Forecaster | None = None
        self._config: ForecasterConfig | None = None
        self._device = "cpu"
        self._stats = BatchStats()
        context = serve.get_replica_context()
        self._deployment = context.deployment
        self._replica = context.replica_id.unique_id

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new ``user_config``: reload the model if it changed, retune batching.

        Raises:
            ConfigError: ``user_config`` is not a valid ``ForecasterConfig``.
            ModelError: the model cannot be loaded; the message says what to fix.
        """
        try:
            config = ForecasterConfig.model_validate(user_config)
        except ValidationError as error:
            raise ConfigError(str(error), source=f"user_config of deployment {self._deployment!r}") from error
        old = self._config
        if old is None or (old.spec, old.params, old.device) != (config.spec, config.params, config.device):
            device = _resolve_device(config.device)
            say(f"{self._deployment}: loading model {config.spec} on {device}…")
            start = time.perf_counter()
            try:
                params = model_params(config.spec, config.params, device=device)
                model = load_forecaster(config.spec, **params)
            except Exception as error:
                say(f"{self._deployment}: model {config.spec} failed to load: {_first_line(error)}")
                raise ModelError(
                    f"deployment {self._deployment!r} could not load the model: {error}. "
                    "Fix user_config.spec/params in serve_config.yaml (a chronos:<hub name> spec "
                    "needs Hugging Face hub access; without it use a local model directory, "
                    "e.g. chronos:/models/chronos-bolt-small)",
                    spec=config.spec,
                ) from error
            self._model, self._device = model, device
            say(f"{self._deployment}: model {config.spec} ready in {time.perf_counter() - start:.1f} s")
        self._batched.set_max_batch_size(config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._config = config

    async def forecast(self, item: ForecastItem) -> ForecastReply:
        """Forecast one request; it is batched with whatever else arrives meanwhile.

        Raises:
            ModelError: no model configured, or the model failed on this batch.
        """
        if self._model is None or self._config is None:
            raise ModelError(f"deployment {self._deployment!r} has no model: set user_config.spec")
        result = await self._batched(item)
        if isinstance(result, _Failed):
            raise result.error
        return result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def _batched(self, items: list[ForecastItem]) -> list[ForecastReply | _Failed]:
        model, config = self._model, self._config
        if model is None or config is None:
            return [_Failed(ModelError("no model configured"))] * len(items)
        start = time.perf_counter()
        # On the event loop, not in a thread, on purpose: Ray Serve's batch loop forms
        # the next batch as soon as this one starts (``batch_wait_timeout_s`` after its
        # first request), so with the model in a thread a busy replica runs many small
        # batches back to back. Blocking here makes requests queue up while the model
        # runs, and they all join the next batch: far larger batches, as the mean batch
        # size that benchmarks/serve_throughput.py records shows
        # (benchmarks/results/serve_throughput*.json).
        results = forecast_batch(model, items, spec=config.spec)
        self._stats.observe(
            requests=len(items),
            series=sum(item.contexts.shape[0] for item in items),
            seconds=time.perf_counter() - start,
            failed=any(isinstance(r, _Failed) for r in results),
        )
        return [r if isinstance(r, _Failed) else ForecastReply(r, config.spec) for r in results]

    def info(self) -> dict[str, Any]:
        """The loaded model and batching settings of this replica."""
        config = self._config
        return {
            "deployment": self._deployment,
            "replica": self._replica,
            "spec": config.spec if config else None,
            "device": self._device,
            "max_batch_size": config.max_batch_size if config else None,
            "batch_wait_timeout_s": config.batch_wait_timeout_s if config else None,
        }

    def stats(self) -> dict[str, Any]:
        """``info()`` plus this replica's batch-size counts (see ``BatchStats.snapshot``)."""
        return {**self.info(), **self._stats.snapshot()}


class HandleForecaster:
    """A synchronous ``Forecaster`` that forwards to a forecaster deployment.

    Lets the pure ``detect`` loop run unchanged in a worker thread of the ingress while
    its single ``forecast`` call still goes through the deployment's batching. Must not
    be called on the event loop thread (``DeploymentResponse.result`` blocks).
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        *,
        timeout_s: float | None = None,
        step_s: float | None = None,
    ) -> None:
        self._handle = handle
        self._timeout_s = timeout_s
        self._step_s = step_s

    def for_step(self, step_s: float) -> HandleForecaster:
        """The same deployment, told the series' step (the model's ``for_step`` runs there)."""
        return HandleForecaster(self._handle, timeout_s=self._timeout_s, step_s=step_s)

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        item = ForecastItem(
            np.asarray(contexts, dtype=np.float64), int(horizon), tuple(quantiles), self._step_s
        )
        return self._handle.forecast.remote(item).result(timeout_s=self._timeout_s).forecast
