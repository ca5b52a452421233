"""Experimental. neuralforecast NHITS as a fitted, global OpenAnomaly forecaster.

Why a global model: one NHITS is trained on the ``fit_window`` of *all* series of a
pipeline (every ``fit_every``), stored once in the ArtifactStore, and then forecasts
any series from its context alone, so scoring is one batched call per block of series,
like Chronos, and a newly appeared series is scored without a refit.

The model is trained with a multi-quantile loss on exactly the levels the pipeline
scores with (``scoring.quantiles`` plus the median), for horizon = the pipeline's chunk
length (``infer_every / step``) and input size = ``schedule.context`` in points. The
defaults are small (MLP 64 wide, 50 steps) so training on CPU takes seconds; raise
``max_steps`` / ``mlp_units`` through ``model.params`` for better forecasts, and set
``accelerator: gpu`` to train and predict on a GPU (the job then gives the training
task and the scoring actors one GPU each when the cluster has GPUs).

neuralforecast works on long DataFrames, so pandas appears here at the model edge
(one frame per forecast call, built with numpy, no per-series Python loop).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from openanomaly.errors import ModelError
from openanomaly.models.base import (
    QuantileForecast,
    check_forecast,
    reject_unknown_params,
    validate_quantile_levels,
)

__all__ = ["GPU_ACCELERATORS", "NHITSForecaster"]

_DEFAULTS: dict[str, Any] = {
    "max_steps": 50,
    "mlp_units": [[64, 64], [64, 64], [64, 64]],
    "batch_size": 32,
    "scaler_type": "standard",
    "learning_rate": 1e-3,
    "random_seed": 1,
    # CPU unless the pipeline asks (model.params.accelerator: gpu): a small NHITS trains
    # in seconds on CPU, and lightning's "auto" would grab any visible GPU, also in tests.
    "accelerator": "cpu",
}
# accelerator values that make the job request a GPU for NHITS actors (registry fact ``gpu``).
GPU_ACCELERATORS = ("gpu", "cuda", "auto")
_ACCELERATORS = ("cpu", *GPU_ACCELERATORS)
# NHITS constructor options that make sense in YAML (h, input_size and loss are set from
# the pipeline; exogenous lists, optimiser classes and callbacks do not fit a config file),
# plus lightning Trainer options that are passed through.
_PARAMS = (
    "max_steps",
    "mlp_units",
    "batch_size",
    "scaler_type",
    "learning_rate",
    "random_seed",
    "stack_types",
    "n_blocks",
    "n_pool_kernel_size",
    "n_freq_downsample",
    "pooling_mode",
    "interpolation_mode",
    "dropout_prob_theta",
    "activation",
    "num_lr_decays",
    "early_stop_patience_steps",
    "val_check_steps",
    "valid_batch_size",
    "windows_batch_size",
    "inference_windows_batch_size",
    "start_padding_enabled",
    "step_size",
    "drop_last_loader",
    "optimizer_kwargs",
    "lr_scheduler_kwargs",
    "dataloader_kwargs",
    "accelerator",
    "precision",
)


def _long_frame(values: np.ndarray) -> Any:
    """Rows of ``values`` ``(n, t)`` as a long frame; NaN forward-filled, leading NaN dropped."""
    import pandas as pd

    filled = pd.DataFrame(values.T).ffill().to_numpy().T  # (n, t)
    ids, steps = np.nonzero(np.isfinite(filled))
    return pd.DataFrame({"unique_id": ids, "ds": steps, "y": filled[ids, steps]})


class NHITSForecaster:
    """A trained NHITS (neuralforecast) forecasting any batch of contexts.

    Build with :meth:`fit` (training) or :meth:`from_bytes` (a stored artifact).
    """

    def __init__(self, model: Any, *, horizon: int, levels: np.ndarray, spec: str) -> None:
        self._nf = model
        self.horizon = horizon
        self.levels = levels
        self.spec = spec

    @classmethod
    def from_spec(cls, name: str, **params: Any) -> NHITSForecaster:
        """Registry factory: NHITS must be trained first, so this always explains how."""
        raise ModelError(
            "neuralforecast models are trained by the scheduler: set schedule.fit_every and "
            "schedule.fit_window in the pipeline (see docs/cluster.md)",
            spec=f"neuralforecast:{name}",
        )

    @classmethod
    def check_params(cls, name: str, **params: Any) -> None:
        """Validate options at config load, without importing neuralforecast or torch.

        Raises:
            ModelError: an unknown option, a bad ``accelerator`` or ``max_steps``.
        """
        spec = f"neuralforecast:{name}"
        reject_unknown_params(params, _PARAMS, spec=spec)
        accelerator = params.get("accelerator", "cpu")
        if accelerator not in _ACCELERATORS:
            raise ModelError(
                f"accelerator must be one of {', '.join(_ACCELERATORS)}, got {accelerator!r}", spec=spec
            )
        steps = params.get("max_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ModelError(f"max_steps must be a positive integer, got {steps!r}", spec=spec)

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        *,
        horizon: int,
        input_size: int,
        quantiles: Sequence[float],
        spec: str = "neuralforecast:NHITS",
        **params: Any,
    ) -> NHITSForecaster:
        """Train on every row of ``values`` ``(n, t)`` (NaN = missing).

        Raises:
            ModelError: bad params, or no series long enough to train on.
        """
        try:
            from neuralforecast import NeuralForecast
            from neuralforecast.losses.pytorch import MQLoss
            from neuralforecast.models import NHITS
        except ImportError as error:  # pragma: no cover - a core dependency
            raise ModelError("needs neuralforecast: pip install neuralforecast", spec=spec) from error
        levels = validate_quantile_levels(quantiles)
        frame = _long_frame(np.asarray(values, dtype=np.float64))
        long_enough = frame.groupby("unique_id").size() >= input_size + horizon
        frame = frame[frame["unique_id"].isin(long_enough[long_enough].index)]
        if frame.empty:
            raise ModelError(
                f"no series has {input_size + horizon} points (context + horizon) to train on", spec=spec
            )
        options = {**_DEFAULTS, **params}
        for logger in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(logger).setLevel(logging.ERROR)
        try:
            model = NHITS(
                h=horizon,
                input_size=input_size,
                loss=MQLoss(quantiles=levels.tolist()),
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                logger=False,
                devices=1,
                **options,
            )
            nf = NeuralForecast(models=[model], freq=1)
            nf.fit(frame)
        except (TypeError, ValueError) as error:
            raise ModelError(f"training failed: {error}", spec=spec) from error
        return cls(nf, horizon=horizon, levels=levels, spec=spec)

    def to_bytes(self) -> bytes:
        """Serialise for the ArtifactStore (pickle: load only from a trusted store)."""
        state = {"nf": self._nf, "horizon": self.horizon, "levels": self.levels.tolist()}
        return pickle.dumps(state, protocol=5)

    @classmethod
    def from_bytes(cls, blob: bytes, *, spec: str = "neuralforecast:NHITS") -> NHITSForecaster:
        """Load a model stored by :meth:`to_bytes`.

        Raises:
            ModelError: the blob is not readable by this version.
        """
        try:
            state = pickle.loads(blob)
            return cls(state["nf"], horizon=state["horizon"], levels=np.asarray(state["levels"]), spec=spec)
        except Exception as error:
            raise ModelError(f"cannot load stored NHITS model: {error}", spec=spec) from error

    def forecast(self, contexts: np.ndarray, horizon: int, quantiles: Sequence[float]) -> QuantileForecast:
        """Forecast every row of ``contexts`` ``(n, L)`` (NaN left-padded) ``horizon`` steps.

        Raises:
            ModelError: ``horizon`` longer than trained, or levels other than trained.
        """
        levels = validate_quantile_levels(quantiles)
        if horizon > self.horizon:
            raise ModelError(f"trained for horizon {self.horizon}, asked for {horizon}", spec=self.spec)
        if levels.shape != self.levels.shape or not np.allclose(levels, self.levels):
            raise ModelError(
                f"trained for quantiles {self.levels.tolist()}, asked for {levels.tolist()}", spec=self.spec
            )
        contexts = np.asarray(contexts, dtype=np.float64)
        n = contexts.shape[0]
        out = np.full((n, horizon, levels.size), np.nan)
        frame = _long_frame(contexts)
        if not frame.empty:
            for logger in ("pytorch_lightning", "lightning", "lightning.pytorch"):
                logging.getLogger(logger).setLevel(logging.ERROR)
            predicted = self._nf.predict(df=frame)
            predicted = predicted.sort_values(["unique_id", "ds"])
            columns = [c for c in predicted.columns if c not in ("unique_id", "ds")]
            ids = predicted["unique_id"].to_numpy().reshape(-1, self.horizon)[:, 0].astype(np.int64)
            block = predicted[columns].to_numpy(np.float64).reshape(len(ids), self.horizon, len(columns))
            out[ids] = np.sort(block, axis=-1)[:, :horizon, :]
        median = out[:, :, int(np.argmin(np.abs(levels - 0.5)))].copy()
        return check_forecast(
            QuantileForecast(quantiles=out, levels=levels, median=median),
            n_series=n,
            horizon=horizon,
            spec=self.spec,
        )
