"""Detection-quality metrics: the NAB score, event-wise F1 and VUS-PR.

Pure numpy, no I/O except ``load_nab_corpus``. ``benchmarks/accuracy.py`` runs the
production backtest over a NAB-format folder and scores it with these.
"""

from openanomaly.evaluation.events import EventCounts, best_event_f1, event_counts, event_f1
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
from openanomaly.evaluation.vus import vus_pr

__all__ = [
    "PRODUCTION_THRESHOLD",
    "PROFILES",
    "EventCounts",
    "NabFile",
    "NabProfile",
    "ThresholdResult",
    "best_event_f1",
    "event_counts",
    "event_f1",
    "file_score",
    "load_nab_corpus",
    "normalised_score",
    "optimise_threshold",
    "probationary_length",
    "scaled_sigmoid",
    "score_at_threshold",
    "sweep_weights",
    "vus_pr",
]
