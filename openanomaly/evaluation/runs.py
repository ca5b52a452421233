"""The models the accuracy benchmark grades, each configured as a user's pipeline would be."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

__all__ = ["MODELS", "STAGE_CONTEXT", "ModelRun", "resolve_spec"]

DAY = timedelta(days=1)


@dataclass(frozen=True)
class ModelRun:
    """How one benchmark model is configured (the same fields as a pipeline YAML).

    ``params`` may depend on the file's step (e.g. a daily ``season_length``), so it is
    a function of the step.
    """

    spec: str
    infer_every: int = 1  # points per forecast chunk
    context: int = 2016  # points of context
    quantiles: tuple[float, float] = (0.05, 0.95)
    params: Callable[[timedelta], dict[str, Any]] = field(default=lambda step: {})
    note: str = ""
    trained: bool = False
    """A global model the scheduler trains on ``fit_window`` before it scores (NHITS): here
    trained on each file's probationary rows, which NAB does not score, then backtested
    over the whole file with that model (:func:`~openanomaly.evaluation.backtests.trained_on_probation`)."""


def _daily(step: timedelta) -> int:
    return max(2, round(DAY / step))


STAGE_CONTEXT = 8064
"""Points of history every pipeline fetches (28 days at 5 minutes): the calibration stage
needs it ("never seen" needs a history); a model that should see less takes a ``window``."""

MODELS: dict[str, ModelRun] = {
    "default": ModelRun(
        "default",
        context=STAGE_CONTEXT,
        note="production default: the reference forecaster, 28 days of 5-minute context",
    ),
    "zscore": ModelRun(
        "zscore",
        context=STAGE_CONTEXT,
        params=lambda step: {"window": 288},
        note="mean +- k std of the last 288 points",
    ),
    "mad": ModelRun(
        "mad",
        context=STAGE_CONTEXT,
        params=lambda step: {"window": 288},
        note="median +- k MAD of the last 288 points",
    ),
    "seasonal_naive": ModelRun(
        "statsforecast:SeasonalNaive",
        infer_every=12,
        context=STAGE_CONTEXT,
        params=lambda step: {"season_length": _daily(step), "too_short": "nan"},
        note="daily season, 12-point chunks",
    ),
    "autoets": ModelRun(
        "statsforecast:AutoETS",
        infer_every=48,
        context=576,
        params=lambda step: {"too_short": "nan"},
        note="bounded context, 48-point chunks",
    ),
    "mstl": ModelRun(
        "statsforecast:MSTL",
        infer_every=48,
        context=2016,
        params=lambda step: {"season_length": _daily(step), "too_short": "nan"},
        note="daily season, 48-point chunks",
    ),
    "bolt_mini": ModelRun(
        "chronos:openanomaly-bolt-mini",
        infer_every=64,
        context=STAGE_CONTEXT,
        quantiles=(0.1, 0.9),
        params=lambda step: {"device": "cpu"},
        note="the shipped Chronos-Bolt (synthetic pretraining only), its trained 0.1/0.9 band",
    ),
    "nhits": ModelRun(
        "neuralforecast:NHITS",
        infer_every=12,
        context=256,
        trained=True,
        note="trained on each file's probationary rows; 256 points of context (the shortest "
        "NAB file's 282 probationary rows hold one training window of context + horizon)",
    ),
    "chronos_tiny": ModelRun(
        "chronos:<tiny>",
        infer_every=64,
        context=STAGE_CONTEXT,
        params=lambda step: {"device": "cpu", "tail_quantiles": "normal"},
        note="tiny RANDOM Chronos: plumbing only, not a real model",
    ),
}
"""The benchmark's models by name (``--models``); the notes go into the results JSON."""


def resolve_spec(run: ModelRun) -> str:
    """``run.spec``, with ``<tiny>`` replaced by a freshly built tiny random Chronos folder
    (no weights download)."""
    if "<tiny>" not in run.spec:
        return run.spec
    from openanomaly.models.tiny import build_tiny_chronos

    folder = tempfile.mkdtemp(prefix="oa-tiny-chronos-")
    built = build_tiny_chronos("bolt", folder)
    return run.spec.replace("<tiny>", str(built or folder))
