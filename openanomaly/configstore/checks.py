"""Checks of a pipeline against its model's facts: what a run would reject, found at load.

pydantic checks each field alone; these need the model's facts from the registry
(:func:`~openanomaly.models.registry.model_info`) together with the pipeline's other
fields, so they run when a configuration is loaded (``openanomaly validate``, the
scheduler, the playground) instead of failing every scheduled window later:

* the band quantiles must be levels the model can forecast (Chronos-Bolt: 0.1…0.9);
* ``schedule.context`` must hold the points the model needs (a statsforecast season);
* ``infer_every / step`` (the forecast horizon) must be one the model forecasts (Bolt: 64);
* the fit schedule must suit the model's fit kind (NHITS must be trained; a zero-shot
  model is never fitted) and ``fit_window`` must hold enough points to fit.

Each problem is ``(field, message)`` with the field relative to the pipeline, so the
config loader can name file, pipeline and field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openanomaly.core.calibration import lookback
from openanomaly.core.times import format_duration
from openanomaly.errors import ConfigError
from openanomaly.models.registry import ADAPTERS, ModelInfo, model_info

if TYPE_CHECKING:
    from openanomaly.core.config import Pipeline

__all__ = ["Problem", "check_fittable", "fit_problems", "pipeline_problems"]

Problem = tuple[str, str]
"""``(field, message)``: a dotted field path inside the pipeline and one line saying what to change."""


def pipeline_problems(pipeline: Pipeline) -> list[Problem]:
    """Every problem of ``pipeline`` that its fields alone do not show (empty: it can run)."""
    info = model_info(pipeline.model.spec, pipeline.model.params)
    return [
        *_band_problems(pipeline, info),
        *_context_problems(pipeline, info),
        *_horizon_problems(pipeline, info),
        *_record_problems(pipeline),
        *fit_problems(pipeline, info),
    ]


MIN_RECORD = 3
"""Fewest residuals a tail can be fitted to (two above the threshold, one at it)."""


def _record_problems(pipeline: Pipeline) -> list[Problem]:
    """The calibration stage needs a residual record inside the context (``calibration.lookback``)."""
    calibration = pipeline.scoring.calibration
    if not calibration.enabled:
        return []
    look = lookback(calibration.policy(), pipeline.context_points, pipeline.step.total_seconds())
    if look.record >= MIN_RECORD:
        return []
    return [
        (
            "schedule.context",
            f"{format_duration(pipeline.schedule.context)} is {pipeline.context_points} points: it "
            f"leaves the calibration stage {look.record} residuals to set the alert threshold from (at least "
            f"{MIN_RECORD}); lengthen schedule.context (a week or more calibrates best)",
        )
    ]


def _band_problems(pipeline: Pipeline, info: ModelInfo) -> list[Problem]:
    if info.levels is None:
        return []
    low, high = info.levels
    outside = [q for q in pipeline.scoring.quantiles if not low - 1e-12 <= q <= high + 1e-12]
    if not outside:
        return []
    return [
        (
            "scoring.quantiles",
            f"model {info.spec!r} forecasts quantile levels {low}..{high} only, not {outside}: "
            f"use levels inside that range (e.g. [{low}, {high}]) or set model.params.tail_quantiles "
            "to clamp or normal",
        )
    ]


def _context_problems(pipeline: Pipeline, info: ModelInfo) -> list[Problem]:
    points = pipeline.context_points
    if points >= info.min_context:
        return []
    season = pipeline.model.params.get("season_length")
    why = f" with season_length {season}" if season is not None else ""
    return [
        (
            "schedule.context",
            f"{format_duration(pipeline.schedule.context)} is {points} points at step "
            f"{format_duration(pipeline.step)}; model {info.spec!r}{why} needs at least "
            f"{info.min_context}: lengthen schedule.context or shorten season_length",
        )
    ]


def _horizon_problems(pipeline: Pipeline, info: ModelInfo) -> list[Problem]:
    horizon = pipeline.chunk_points
    if info.max_horizon is None or horizon <= info.max_horizon:
        return []
    return [
        (
            "schedule.infer_every",
            f"{format_duration(pipeline.schedule.infer_every)} is {horizon} steps of "
            f"{format_duration(pipeline.step)} per forecast; model {info.spec!r} forecasts at most "
            f"{info.max_horizon}: score more often or set model.params.allow_long_horizon: true",
        )
    ]


def check_fittable(pipeline: Pipeline) -> None:
    """Refuse configurations that cannot be fitted, before any job runs.

    Config loading runs the same check (:func:`fit_problems`), so a loaded configuration
    passes; this guards pipelines built in code.

    Raises:
        ConfigError: ``fit_every`` set on a model with nothing to fit, a global model
            without ``fit_every``, or ``fit_window`` missing / too short.
    """
    problems = fit_problems(pipeline)
    if problems:
        field, message = problems[0]
        raise ConfigError(message, pipeline=pipeline.name, field=field)


def fit_problems(pipeline: Pipeline, info: ModelInfo | None = None) -> list[Problem]:
    """Problems with the fit schedule (``schedule.fit_every``/``fit_window``) for the model's fit kind."""
    info = info or model_info(pipeline.model.spec, pipeline.model.params)
    schedule = pipeline.schedule
    if schedule.fit_every is None:
        if info.fit == "global":
            message = f"model {info.spec!r} must be trained: set fit_every and fit_window"
            return [("schedule.fit_every", message)]
        return []
    if info.fit == "zero_shot":
        return [("schedule.fit_every", _never_fitted(info))]
    if schedule.fit_window is None or schedule.fit_window < schedule.context:
        return [("schedule.fit_window", "must be set and at least as long as schedule.context")]
    if info.fit == "per_series":
        from openanomaly.models.fitted import min_fit_points

        if "too_short" in pipeline.model.params:
            return [
                (
                    "model.params.too_short",
                    "applies to fitting on each window's context; a fitted model (schedule.fit_every) "
                    "skips series with too few points in fit_window instead: remove it",
                )
            ]
        points, need = int(schedule.fit_window / pipeline.step), min_fit_points(pipeline.fit_spec)
        if points < need:
            return [
                (
                    "schedule.fit_window",
                    f"{format_duration(schedule.fit_window)} is {points} points; fitting {info.spec!r} "
                    f"needs at least {need} (two seasons, at least 10)",
                )
            ]
    return []


def _never_fitted(info: ModelInfo) -> str:
    fittable = [
        f"{prefix}:{name}"
        for prefix, adapter in ADAPTERS.items()
        for name in adapter.names or ()
        if adapter.fit(name) != "zero_shot"
    ]
    # statsforecast:SeasonalNaive sits among fittable siblings; Chronos, mad... have none.
    adapter = ADAPTERS[info.prefix]
    siblings = any(adapter.fit(name) != "zero_shot" for name in adapter.names or ())
    kind = "has no fitted form" if siblings else "is zero-shot and is never fitted"
    return (
        f"model {info.spec!r} {kind}; fit_every works with {', '.join(fittable)} "
        "(remove schedule.fit_every to forecast from each window's context)"
    )
