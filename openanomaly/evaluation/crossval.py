"""Choosing the alert policy's knobs without grading the choice on the data it was made on:
leave one dataset (or category, or machine) out, choose on the rest, score the one left out."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from openanomaly.evaluation.corpus import dataset_of, group_of
from openanomaly.evaluation.grading import evaluate, subset_metrics, vus_of
from openanomaly.evaluation.nab import PRODUCTION_THRESHOLD, PROFILES, NabFile, score_at_threshold

__all__ = ["VARIANTS", "cross_validate"]

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
"""The alert policy's knobs (``scoring.calibration``) that cross-validation chooses among by
NAB standard at ``score > 1``, one value for every file."""


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
            return float(np.nanmean([vus_of(corpus[i], scores[i]) for i in members]))
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
            "in_sample": subset_metrics(corpus, by_variant[in_sample], members),
            "held_out": subset_metrics(corpus, by_variant[chosen], members),
        }
    by_dataset = {}
    for dataset in sorted({dataset_of(item) for item in corpus}):
        members = [i for i in everything if dataset_of(corpus[i]) == dataset]
        by_dataset[dataset] = {
            "in_sample": subset_metrics(corpus, by_variant[in_sample], members),
            "held_out": subset_metrics(corpus, held, members),
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
