"""Detection quality: the metrics (the NAB score, event-wise F1, VUS-PR) and the harness
that grades a model on labelled NAB-format folders through the production backtest.

The metrics (:mod:`.nab`, :mod:`.events`, :mod:`.vus`) are pure numpy. The harness reads
a corpus (:mod:`.corpus`), scores each file as a user's pipeline would be scored
(:mod:`.runs`, :mod:`.backtests`), grades the scores (:mod:`.grading`) and chooses the
alert policy's knobs by leave-one-out (:mod:`.crossval`); :func:`run_model`
(:mod:`.harness`) is the whole of it for one model. ``benchmarks/accuracy.py`` is the
command around it.
"""

from openanomaly.evaluation.backtests import (
    Progress,
    benchmark_pipeline,
    print_progress,
    score_corpus,
    score_file,
)
from openanomaly.evaluation.corpus import dataset_of, file_step, group_of, labelled_rows, load_corpus
from openanomaly.evaluation.crossval import VARIANTS, cross_validate
from openanomaly.evaluation.events import EventCounts, best_event_f1, event_counts, event_f1
from openanomaly.evaluation.grading import evaluate, false_alerts_per_week, subset_metrics, vus_of
from openanomaly.evaluation.harness import run_model
from openanomaly.evaluation.nab import (
    PRODUCTION_THRESHOLD,
    PROFILES,
    NabFile,
    NabProfile,
    ThresholdResult,
    file_score,
    load_nab_corpus,
    normalised_score,
    optimise_threshold,
    probationary_length,
    scaled_sigmoid,
    score_at_threshold,
    sweep_weights,
)
from openanomaly.evaluation.runs import MODELS, STAGE_CONTEXT, ModelRun
from openanomaly.evaluation.vus import vus_pr

__all__ = [
    "MODELS",
    "PRODUCTION_THRESHOLD",
    "PROFILES",
    "STAGE_CONTEXT",
    "VARIANTS",
    "EventCounts",
    "ModelRun",
    "NabFile",
    "NabProfile",
    "Progress",
    "ThresholdResult",
    "benchmark_pipeline",
    "best_event_f1",
    "cross_validate",
    "dataset_of",
    "evaluate",
    "event_counts",
    "event_f1",
    "false_alerts_per_week",
    "file_score",
    "file_step",
    "group_of",
    "labelled_rows",
    "load_corpus",
    "load_nab_corpus",
    "normalised_score",
    "optimise_threshold",
    "print_progress",
    "probationary_length",
    "run_model",
    "scaled_sigmoid",
    "score_at_threshold",
    "score_corpus",
    "score_file",
    "subset_metrics",
    "sweep_weights",
    "vus_of",
    "vus_pr",
]
