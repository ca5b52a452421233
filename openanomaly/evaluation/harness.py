"""One model graded over a corpus, as ``benchmarks/accuracy.py`` records it: its scores
through the production backtest, every metric, and optionally the cross-validated
choice of the alert policy's knobs."""

from __future__ import annotations

import time
from typing import Any

from openanomaly.evaluation.backtests import Progress, score_corpus
from openanomaly.evaluation.corpus import dataset_of
from openanomaly.evaluation.crossval import VARIANTS, cross_validate
from openanomaly.evaluation.grading import evaluate, forget_vus
from openanomaly.evaluation.nab import NabFile
from openanomaly.evaluation.runs import MODELS, resolve_spec

__all__ = ["run_model"]


def run_model(
    name: str, corpus: list[NabFile], *, cv: bool = False, jobs: int = 1, progress: Progress | None = None
) -> dict[str, Any]:
    """The record of ``MODELS[name]`` over ``corpus``: metrics overall, per category, per
    file and (with several datasets) per dataset, its runtime and configuration; with
    ``cv``, every :data:`~openanomaly.evaluation.crossval.VARIANTS` scored too and
    cross-validated."""
    run = MODELS[name]
    spec = resolve_spec(run)
    started = time.perf_counter()
    scores = score_corpus(name, spec, corpus, jobs=jobs, progress=progress)
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
                by_variant[variant] = score_corpus(name, spec, corpus, knobs, jobs, progress)
        result["cv"] = cross_validate(corpus, by_variant, VARIANTS)
    forget_vus()  # this model's score arrays are graded; let them go
    return result
