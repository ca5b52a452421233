"""Every metric of one model's scores over a corpus: the NAB profiles (at NAB's tuned
threshold and at the production one), event-wise F1, VUS-PR and false alerts a week,
pooled, per category and per file."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np

from openanomaly.evaluation.corpus import file_step, labelled_rows
from openanomaly.evaluation.events import best_event_f1, event_f1
from openanomaly.evaluation.nab import (
    PRODUCTION_THRESHOLD,
    PROFILES,
    NabFile,
    optimise_threshold,
    probationary_length,
    score_at_threshold,
)
from openanomaly.evaluation.vus import vus_pr

__all__ = ["evaluate", "false_alerts_per_week", "forget_vus", "subset_metrics", "vus_of"]


def evaluate(corpus: list[NabFile], scores: list[np.ndarray]) -> dict[str, Any]:
    """All metrics for one model over ``corpus`` (and per category, and per file).

    Headline NAB keys use NAB's own threshold rule (per profile, the one threshold that
    maximises the score summed over all files); ``*_at_1`` keys give the same scores at
    OpenAnomaly's production threshold (alert when ``anomaly_score > 1``).
    """
    windows = [f.windows for f in corpus]
    starts = [probationary_length(f.values.size) for f in corpus]
    overall: dict[str, Any] = {}
    thresholds: dict[str, float] = {}
    per_category: dict[str, dict[str, Any]] = {}
    categories = sorted({f.category for f in corpus})
    for key, profile in PROFILES.items():
        best = optimise_threshold(scores, windows, profile)
        at_one = score_at_threshold(scores, windows, PRODUCTION_THRESHOLD, profile)
        thresholds[key] = best.threshold
        overall[f"nab_{key}"] = best.normalised
        overall[f"nab_{key}_at_1"] = at_one.normalised
        if key == "standard":
            overall["windows_detected"] = best.windows_detected
            overall["fp_rows"] = best.false_positive_rows
            overall["windows_detected_at_1"] = at_one.windows_detected
            overall["fp_rows_at_1"] = at_one.false_positive_rows
        for category in categories:
            members = [i for i, f in enumerate(corpus) if f.category == category]
            n_windows = sum(corpus[i].windows.shape[0] for i in members)
            for suffix, result in (("", best), ("_at_1", at_one)):
                raw = sum(result.per_file[i] for i in members)
                null = sum(result.null_per_file[i] for i in members)
                perfect = n_windows * profile.tp_weight
                per_category.setdefault(category, {})[f"nab_{key}{suffix}"] = (
                    100 * (raw - null) / (perfect - null)
                )
    events = event_f1(scores, windows, PRODUCTION_THRESHOLD, starts=starts)
    best_t, best_events = best_event_f1(scores, windows, starts=starts)
    overall.update(
        f1=events.f1,
        precision=events.precision,
        recall=events.recall,
        f1_best=best_events.f1,
        f1_best_threshold=best_t,
    )
    vus = [vus_of(f, s) for f, s in zip(corpus, scores, strict=True)]
    overall["vus_pr"] = float(np.nanmean(vus))
    overall["false_alerts_per_week"] = false_alerts_per_week(corpus, scores)
    for category in categories:
        members = [i for i, f in enumerate(corpus) if f.category == category]
        sub_scores = [scores[i] for i in members]
        sub_windows = [windows[i] for i in members]
        sub_starts = [starts[i] for i in members]
        cat_events = event_f1(sub_scores, sub_windows, PRODUCTION_THRESHOLD, starts=sub_starts)
        per_category[category].update(
            f1=cat_events.f1, vus_pr=float(np.nanmean([vus[i] for i in members])), files=len(members)
        )
    overall["thresholds"] = thresholds
    standard = PROFILES["standard"]
    best = optimise_threshold(scores, windows, standard)
    at_one = score_at_threshold(scores, windows, PRODUCTION_THRESHOLD, standard)
    per_file = {
        f.path: {
            "windows": int(f.windows.shape[0]),
            "raw_standard": best.per_file[i],
            "raw_standard_at_1": at_one.per_file[i],
            "null": best.null_per_file[i],
        }
        for i, f in enumerate(corpus)
    }
    return {"overall": overall, "per_category": per_category, "per_file": per_file}


_VUS_DONE: dict[int, tuple[np.ndarray, float]] = {}
"""VUS-PR per score array (by identity; the array is kept, so its id is not reused): grading
and cross-validation ask for the same file's VUS-PR many times, and each costs a PR curve per buffer width."""


def vus_of(item: NabFile, scores: np.ndarray) -> float:
    """VUS-PR of ``scores`` against ``item``'s windows after probation (NaN without a window there)."""
    done = _VUS_DONE.get(id(scores))
    if done is not None and done[0] is scores:
        return done[1]
    first = probationary_length(item.values.size)
    labels = labelled_rows(item)
    value = vus_pr(labels[first:], scores[first:]) if labels[first:].any() else math.nan
    _VUS_DONE[id(scores)] = (scores, value)
    return value


def forget_vus() -> None:
    """Let go of the score arrays :func:`vus_of` keeps (once a model's scores are graded)."""
    _VUS_DONE.clear()


def subset_metrics(corpus: list[NabFile], scores: list[np.ndarray], members: list[int]) -> dict[str, float]:
    """The production-threshold metrics of the files ``members`` (no threshold tuning)."""
    files = [corpus[i] for i in members]
    sub = [scores[i] for i in members]
    windows = [f.windows for f in files]
    starts = [probationary_length(f.values.size) for f in files]
    at_one = score_at_threshold(sub, windows, PRODUCTION_THRESHOLD, PROFILES["standard"])
    return {
        "nab_standard_at_1": at_one.normalised,
        "f1": event_f1(sub, windows, PRODUCTION_THRESHOLD, starts=starts).f1,
        "vus_pr": float(np.nanmean([vus_of(f, s) for f, s in zip(files, sub, strict=True)])),
        "false_alerts_per_week": false_alerts_per_week(files, sub),
        "files": len(members),
    }


def false_alerts_per_week(files: list[NabFile], scores: list[np.ndarray]) -> float:
    """Alert runs (``score > 1``) that start outside every window, per series per week, after probation.

    The unit of the user's budget (``false_alarms_per_week``): a run of consecutive
    alerting rows is one page.
    """
    runs, weeks = 0, 0.0
    for item, score in zip(files, scores, strict=True):
        first = probationary_length(item.values.size)
        labelled = labelled_rows(item)
        alert = np.nan_to_num(score) > PRODUCTION_THRESHOLD
        starts = alert & ~np.concatenate([[False], alert[:-1]])
        runs += int((starts & ~labelled)[first:].sum())
        weeks += (item.values.size - first) * file_step(item) / timedelta(weeks=1)
    return runs / weeks if weeks else math.nan
