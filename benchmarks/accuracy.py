"""Detection quality on a NAB-format folder, through the production backtest.

Usage::

    uv run python benchmarks/accuracy.py --data /work/shared/benchmarks/nab \\
        --labels /work/shared/benchmarks/nab/labels/combined_windows.json \\
        [--models default,zscore,mad,...] [--out benchmarks/results/accuracy.json]

For each model and each labelled file it builds the same ``Pipeline`` a user would
write (model spec + params, ``step``, ``infer_every``, ``context``, band quantiles) and
runs :func:`openanomaly.core.detect.score_range`: rolling, chunk by chunk, each chunk forecast
only from the points before it, scored by :mod:`openanomaly.core.scoring`. The resulting
``anomaly_score`` series is then scored with the NAB method (three profiles), pooled
event-wise F1 and VUS-PR (:mod:`openanomaly.evaluation`).

NAB files are laid on a regular grid (row ``i`` at ``t0 + i * step``, ``step`` = the
file's median sampling interval): the detector sees the rows in order, as NAB's own
detectors do. Some NAB files have duplicate or out-of-order timestamps, which a
Prometheus grid cannot hold.

Headline numbers use NAB's own threshold rule (per profile, the one threshold that
maximises the score summed over all files); ``*_at_1`` keys give the same scores at
OpenAnomaly's production threshold (alert when ``anomaly_score > 1``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import re
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from _results import RESULTS, write_result

from openanomaly.configstore.checks import check_fittable
from openanomaly.core.config import CalibrationConfig, ModelConfig, Pipeline, Schedule, ScoringConfig
from openanomaly.core.detect import score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.evaluation import (
    PRODUCTION_THRESHOLD,
    PROFILES,
    NabFile,
    best_event_f1,
    event_f1,
    load_nab_corpus,
    optimise_threshold,
    probationary_length,
    score_at_threshold,
    vus_pr,
)
from openanomaly.models.base import Forecaster
from openanomaly.models.fitted import fit_global, load_global
from openanomaly.models.registry import load_forecaster

DEFAULT_OUT = RESULTS / "accuracy.json"
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
    over the whole file with that model (:func:`_trained_on_probation`)."""


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


def _tiny_chronos_dir() -> str:
    """Build the tiny random Chronos model (no weights download) and return its folder."""
    from openanomaly.models.tiny import build_tiny_chronos

    folder = tempfile.mkdtemp(prefix="oa-tiny-chronos-")
    built = build_tiny_chronos("bolt", folder)
    return str(built or folder)


VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "0.25 alarms/week": {"false_alarms_per_week": 0.25},
    "0.5 alarms/week": {"false_alarms_per_week": 0.5},
    "2 alarms/week": {"false_alarms_per_week": 2.0},
    "4 alarms/week": {"false_alarms_per_week": 4.0},
    "no cooldown": {"cooldown": "0s"},
    "cooldown 1h": {"cooldown": "1h"},
    "cooldown 24h": {"cooldown": "24h"},
}
"""The alert policy's knobs (``scoring.calibration``) that ``--cv`` chooses among by NAB
standard at ``score > 1``, one value for every file."""


def _pipeline(
    name: str, run: ModelRun, step: timedelta, spec: str, calibration: dict[str, Any] | None = None
) -> Pipeline:
    return Pipeline(
        name=f"nab-{name}",
        query="nab",
        step=step,
        model=ModelConfig(spec=spec, params=run.params(step)),
        schedule=Schedule(infer_every=step * run.infer_every, context=step * run.context),
        scoring=ScoringConfig(quantiles=run.quantiles, calibration=CalibrationConfig(**(calibration or {}))),
    )


def group_of(item: NabFile) -> str:
    """The cross-validation group: the machine for SMD files (``machine-1-2_dim01``), else the category."""
    machine = re.search(r"(machine-\d+-\d+)_dim", item.path)
    return machine.group(1) if machine else item.category


def dataset_of(item: NabFile) -> str:
    """The data folder a file came from when several are scored together (``nab:…``), else ``""``."""
    return item.path.split(":", 1)[0] if ":" in item.path else ""


def _file_step(item: NabFile) -> timedelta:
    diffs = np.diff(item.timestamps)
    seconds = float(np.median(diffs[diffs > 0])) / 1000 if diffs.size else 300.0
    return timedelta(seconds=max(1.0, round(seconds)))


def score_file(
    item: NabFile,
    name: str,
    run: ModelRun,
    spec: str,
    cache: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> np.ndarray:
    """Backtest one file with the production path; returns ``anomaly_score`` ``(n,)``."""
    step = _file_step(item)
    pipeline = _pipeline(name, run, step, spec, calibration)
    if run.trained:
        forecaster = _trained_on_probation(item, pipeline, horizon=run.infer_every)
    else:
        key = json.dumps([spec, pipeline.model.params], sort_keys=True)  # mad and zscore share params
        if key not in cache:
            cache[key] = load_forecaster(spec, **pipeline.model.params)
        forecaster = cache[key]
    step_ms = pipeline.step_ms
    t0 = 1_000_000_000_000
    grid = t0 + step_ms * np.arange(item.values.size, dtype=np.int64)
    series = SeriesMatrix(({"file": item.path},), grid, item.values[None, :].astype(np.float64))
    detection = score_range(series, pipeline, forecaster, start_ms=int(grid[0]), end_ms=int(grid[-1]))
    scores = np.full(item.values.size, np.nan)
    scores[1:] = detection.anomaly_score[0]
    return scores


def _trained_on_probation(item: NabFile, pipeline: Pipeline, *, horizon: int) -> Forecaster:
    """Train the pipeline's global model on ``item``'s probationary rows, as the scheduler would.

    The pipeline gets the fit schedule a user would write (``fit_window``: those rows),
    checked as config loading checks it; the model is the one the scheduler stores.
    """
    rows = probationary_length(item.values.size)
    window = pipeline.step * rows
    schedule = pipeline.schedule.model_copy(update={"fit_every": window, "fit_window": window})
    pipeline = pipeline.model_copy(update={"schedule": schedule})
    check_fittable(pipeline)
    fit = pipeline.fit_spec
    return load_global(fit, fit_global(fit, item.values[None, :rows], horizon=horizon))


def evaluate(corpus: list[NabFile], scores: list[np.ndarray]) -> dict[str, Any]:
    """All metrics for one model over ``corpus`` (and per category)."""
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
    vus = [_vus(f, s) for f, s in zip(corpus, scores, strict=True)]
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


def _score_one(job: tuple[NabFile, str, str, dict[str, Any] | None]) -> tuple[np.ndarray, float]:
    item, name, spec, calibration = job
    t = time.perf_counter()
    scores = score_file(item, name, MODELS[name], spec, _WORKER_CACHE, calibration)
    return scores, time.perf_counter() - t


_WORKER_CACHE: dict[str, Any] = {}
"""Forecasters loaded in this process (one per spec and parameter set), kept across files."""


def _score_corpus(
    name: str,
    spec: str,
    corpus: list[NabFile],
    calibration: dict[str, Any] | None = None,
    jobs: int = 1,
) -> list[np.ndarray]:
    """Backtest every file of ``MODELS[name]``, ``jobs`` files at a time (the results do not depend on it).

    Worker processes are forked, so they see ``MODELS`` as it is (the runs' params are
    functions, which do not pickle).
    """
    work = [(item, name, spec, calibration) for item in corpus]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_score_one, work))
    else:
        done = [_score_one(job) for job in work]
    for item, (_, seconds) in zip(corpus, done, strict=True):
        print(f"  {name:<15} {item.path:<60} {seconds:7.1f}s", file=sys.stderr)
    return [scores for scores, _ in done]


_VUS_DONE: dict[int, tuple[np.ndarray, float]] = {}
"""VUS-PR per score array (by identity; the array is kept, so its id is not reused): grading
and cross-validation ask for the same file's VUS-PR many times, and each costs 201 PR curves."""


def _vus(item: NabFile, scores: np.ndarray) -> float:
    done = _VUS_DONE.get(id(scores))
    if done is not None and done[0] is scores:
        return done[1]
    first = probationary_length(item.values.size)
    labels = np.zeros(item.values.size, dtype=bool)
    for a, b in item.windows:
        labels[a : b + 1] = True
    value = vus_pr(labels[first:], scores[first:]) if labels[first:].any() else math.nan
    _VUS_DONE[id(scores)] = (scores, value)
    return value


def _subset_metrics(corpus: list[NabFile], scores: list[np.ndarray], members: list[int]) -> dict[str, float]:
    """The production-threshold metrics of the files ``members`` (no threshold tuning)."""
    files = [corpus[i] for i in members]
    sub = [scores[i] for i in members]
    windows = [f.windows for f in files]
    starts = [probationary_length(f.values.size) for f in files]
    at_one = score_at_threshold(sub, windows, PRODUCTION_THRESHOLD, PROFILES["standard"])
    return {
        "nab_standard_at_1": at_one.normalised,
        "f1": event_f1(sub, windows, PRODUCTION_THRESHOLD, starts=starts).f1,
        "vus_pr": float(np.nanmean([_vus(f, s) for f, s in zip(files, sub, strict=True)])),
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
        labelled = np.zeros(item.values.size, dtype=bool)
        for a, b in item.windows:
            labelled[a : b + 1] = True
        alert = np.nan_to_num(score) > PRODUCTION_THRESHOLD
        starts = alert & ~np.concatenate([[False], alert[:-1]])
        runs += int((starts & ~labelled)[first:].sum())
        weeks += (item.values.size - first) * _file_step(item) / timedelta(weeks=1)
    return runs / weeks if weeks else math.nan


def cross_validate(
    corpus: list[NabFile],
    by_variant: dict[str, list[np.ndarray]],
    variants: dict[str, dict[str, Any]] | None = None,
    metric: str = "nab_standard_at_1",
) -> dict[str, Any]:
    """Leave-one-dataset-out choice among ``variants`` by ``metric`` (``nab_standard_at_1`` or ``vus_pr``).

    For each dataset (``nab``, ``smd``, ``kpi``: the ``--data`` folders) the variant is
    chosen on the *other* datasets and scored on this one (held out), beside the variant
    chosen on all of them (in-sample). ``held_out`` is the whole corpus scored that way:
    every file by a variant chosen without its dataset. With one dataset the groups are
    its categories (NAB) or machines (SMD) instead.
    """
    variants = VARIANTS if variants is None else variants
    several = len({dataset_of(item) for item in corpus}) > 1
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(corpus):
        groups.setdefault(dataset_of(item) if several else group_of(item), []).append(i)

    def one_set(variant: str, members: list[int]) -> float:
        scores = by_variant[variant]
        if metric == "vus_pr":
            return float(np.nanmean([_vus(corpus[i], scores[i]) for i in members]))
        windows = [corpus[i].windows for i in members]
        return score_at_threshold(
            [scores[i] for i in members], windows, PRODUCTION_THRESHOLD, PROFILES["standard"]
        ).normalised

    def value(variant: str, members: list[int]) -> tuple[float, float]:
        # Several datasets: the least gain over the defaults among them, so a default only
        # moves when no kind of data pays for another. Raw scores are not compared across
        # datasets: SMD's NAB-style scores run lower, so "the worse dataset" always meant
        # SMD and NAB's losses never counted. Equal least gains are told apart by the
        # summed gain: a knob that loses nowhere and gains somewhere (one that only
        # reaches 5-minute data, say) beats the defaults. With one dataset this is plain
        # maximisation.
        by_set: dict[str, list[int]] = {}
        for i in members:
            by_set.setdefault(dataset_of(corpus[i]), []).append(i)
        gains = [one_set(variant, part) - baseline(tuple(part)) for part in by_set.values()]
        return min(gains), sum(gains)

    @functools.cache
    def baseline(members: tuple[int, ...]) -> float:  # the defaults' score, once per member set
        return one_set("defaults", list(members))

    def choose(members: list[int]) -> str:
        best, best_score = "defaults", (-math.inf, -math.inf)
        for variant in by_variant:  # ties keep the earlier (defaults first)
            score = value(variant, members)
            least, total = score[0] - best_score[0], score[1] - best_score[1]
            if least > 1e-9 or (least >= -1e-9 and total > 1e-9):
                best, best_score = variant, score
        return best

    everything = list(range(len(corpus)))
    in_sample = choose(everything)
    held: list[np.ndarray] = [np.empty(0)] * len(corpus)
    per_group = {}
    for group, members in sorted(groups.items()):
        chosen = choose([i for i in everything if i not in members])
        for i in members:
            held[i] = by_variant[chosen][i]
        per_group[group] = {
            "chosen": chosen,
            "in_sample": _subset_metrics(corpus, by_variant[in_sample], members),
            "held_out": _subset_metrics(corpus, by_variant[chosen], members),
        }
    by_dataset = {}
    for dataset in sorted({dataset_of(item) for item in corpus}):
        members = [i for i in everything if dataset_of(corpus[i]) == dataset]
        by_dataset[dataset] = {
            "in_sample": _subset_metrics(corpus, by_variant[in_sample], members),
            "held_out": _subset_metrics(corpus, held, members),
        }
    return {
        "metric": metric,
        "variants": {v: variants[v] for v in by_variant},
        "chosen_in_sample": in_sample,
        "groups": per_group,
        "datasets": by_dataset,
        "in_sample": evaluate(corpus, by_variant[in_sample])["overall"],
        "held_out": evaluate(corpus, held)["overall"],
    }


def run_model(name: str, corpus: list[NabFile], *, cv: bool = False, jobs: int = 1) -> dict[str, Any]:
    run = MODELS[name]
    spec = run.spec.replace("<tiny>", _tiny_chronos_dir()) if "<tiny>" in run.spec else run.spec
    started = time.perf_counter()
    scores = _score_corpus(name, spec, corpus, jobs=jobs)
    runtime = time.perf_counter() - started
    result = evaluate(corpus, scores)
    datasets = sorted({dataset_of(item) for item in corpus})
    if len(datasets) > 1:  # each dataset graded alone too: pooled NAB scores mix two scales
        result["per_dataset"] = {}
        for dataset in datasets:
            members = [i for i, item in enumerate(corpus) if dataset_of(item) == dataset]
            subset = evaluate([corpus[i] for i in members], [scores[i] for i in members])
            result["per_dataset"][dataset] = subset["overall"]
    result["runtime_s"] = runtime
    result["config"] = {
        "spec": run.spec,
        "infer_every_points": run.infer_every,
        "context_points": run.context,
        "quantiles": list(run.quantiles),
        "note": run.note,
        "files": [item.path for item in corpus],
    }
    if cv:
        by_variant = {"defaults": scores}
        for variant, knobs in VARIANTS.items():
            if knobs:
                by_variant[variant] = _score_corpus(name, spec, corpus, knobs, jobs)
        result["cv"] = cross_validate(corpus, by_variant, VARIANTS)
    _VUS_DONE.clear()  # this model's score arrays are graded; let them go
    return result


def _table(results: dict[str, Any]) -> str:
    head = (
        f"{'model':<15} {'NAB std':>8} {'lowFP':>7} {'lowFN':>7} {'std@1':>7} "
        f"{'F1@1':>6} {'F1best':>6} {'VUS-PR':>6} {'time':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<15} ERROR: {r['error']}")
            continue
        o = r["overall"]
        lines.append(
            f"{name:<15} {o['nab_standard']:8.1f} {o['nab_reward_low_fp']:7.1f} "
            f"{o['nab_reward_low_fn']:7.1f} "
            f"{o['nab_standard_at_1']:7.1f} {o['f1']:6.3f} {o['f1_best']:6.3f} {o['vus_pr']:6.3f} "
            f"{r['runtime_s']:6.0f}s"
        )
        for category, c in r["per_category"].items():
            lines.append(
                f"  {category:<13} {c['nab_standard']:8.1f} {c['nab_reward_low_fp']:7.1f} "
                f"{c['nab_reward_low_fn']:7.1f} {c['nab_standard_at_1']:7.1f} {c['f1']:6.3f} "
                f"{'':>6} {c['vus_pr']:6.3f}"
            )
    return "\n".join(lines)


def _cv_table(name: str, cv: dict[str, Any]) -> str:
    head = (
        f"{name} cross-validation (in-sample choice: {cv['chosen_in_sample']})\n"
        f"{'held out':<22} {'its choice':<18} {'std@1 in':>8} {'std@1 out':>9} "
        f"{'F1 in':>6} {'F1 out':>6} {'VUS in':>6} {'VUS out':>7} {'FA/wk out':>9}"
    )
    lines = [head, "-" * len(head.splitlines()[-1])]
    for group, g in cv["groups"].items():
        i, o = g["in_sample"], g["held_out"]
        lines.append(
            f"{group:<22} {g['chosen']:<18} {i['nab_standard_at_1']:8.1f} {o['nab_standard_at_1']:9.1f} "
            f"{i['f1']:6.3f} {o['f1']:6.3f} {i['vus_pr']:6.3f} {o['vus_pr']:7.3f} "
            f"{o['false_alerts_per_week']:9.2f}"
        )
    if len(cv["datasets"]) == 1:
        i, o = cv["in_sample"], cv["held_out"]
        lines.append(
            f"{'all (pooled)':<22} {'':<18} {i['nab_standard_at_1']:8.1f} {o['nab_standard_at_1']:9.1f} "
            f"{i['f1']:6.3f} {o['f1']:6.3f} {i['vus_pr']:6.3f} {o['vus_pr']:7.3f}"
        )
    return "\n".join(lines)


def _load(folders: list[str], labels: list[str]) -> list[NabFile]:
    """One corpus; with several folders each file's path is prefixed ``<folder name>:`` (``dataset_of``)."""
    if len(folders) == 1:
        return load_nab_corpus(folders[0], labels[0])
    corpus = []
    for folder, table in zip(folders, labels, strict=True):
        name = Path(folder).resolve().name
        corpus += [replace(item, path=f"{name}:{item.path}") for item in load_nab_corpus(folder, table)]
    return corpus


def previous_baseline(out: Path) -> dict[str, Any] | None:
    """The ``baseline`` entry of an existing results file, which a re-run keeps."""
    if not out.is_file():
        return None
    return json.loads(out.read_text()).get("baseline")


def _resolved(paths: str | list[str]) -> list[str]:
    return [str(Path(p).resolve()) for p in ([paths] if isinstance(paths, str) else paths)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="NAB-format data folder; repeat (with --labels) to score several together, e.g. for --cv",
    )
    parser.add_argument(
        "--labels",
        required=True,
        action="append",
        help="NAB combined_windows.json (keys relative to its --data)",
    )
    parser.add_argument("--models", default="default", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    parser.add_argument(
        "--files",
        default="",
        help="comma list of label-key prefixes: run on that subset only (recorded in each model's config)",
    )
    parser.add_argument(
        "--cv",
        action="store_true",
        help="also run every alert and ranking variant; report leave-one-group-out scores",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="files backtested at once, in processes (default 1)"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models already in --out (same data and labels), replace only these",
    )
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    if len(args.data) != len(args.labels):
        parser.error("give one --labels per --data")
    corpus = _load(args.data, args.labels)
    if args.files:
        prefixes = tuple(p.strip() for p in args.files.split(",") if p.strip())
        corpus = [item for item in corpus if item.path.startswith(prefixes)]
        if not corpus:
            parser.error(f"--files {args.files!r} matches no labelled file")
    out = Path(args.out)
    source = {key: _resolved(getattr(args, key)) for key in ("data", "labels")}
    previous: dict[str, Any] = {}
    if args.merge and out.is_file():  # checked before the (long) run, not after
        previous = json.loads(out.read_text())
        if {key: _resolved(previous.get(key, "")) for key in source} != source:
            parser.error(f"--merge: {out} was made from other data/labels; use another --out")
    print(f"{len(corpus)} files, {sum(f.values.size for f in corpus)} rows", file=sys.stderr)
    results: dict[str, Any] = {}
    failed = False
    for name in names:
        try:
            results[name] = run_model(name, corpus, cv=args.cv, jobs=args.jobs)
        except Exception as error:  # a missing optional model must not hide the others' results
            failed = True
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"model {name} failed: {results[name]['error']}", file=sys.stderr)
    results = {**previous.get("models", {}), **results}
    print(_table(results))
    cv_tables = [
        _cv_table(f"{name} (by {r['cv']['metric']})", r["cv"])
        for name, r in results.items()
        if "cv" in r and name in names
    ]
    if cv_tables:
        print("\n\n".join(cv_tables))
    payload = {
        # The build before the one alert policy, measured once with the same scorer: every
        # later row is compared with it (kept across runs; see docs/accuracy.md).
        **({"baseline": previous_baseline(out)} if previous_baseline(out) else {}),
        "data": source["data"][0] if len(args.data) == 1 else source["data"],
        "labels": source["labels"][0] if len(args.data) == 1 else source["labels"],
        "files": len(corpus),
        "rows": int(sum(f.values.size for f in corpus)),
        "models": results,
    }
    write_result(out, payload, sort_keys=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
