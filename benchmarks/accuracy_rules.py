"""The alert policy's built-in rules, each against the shipped stage, leave-one-dataset-out.

Usage::

    uv run python benchmarks/accuracy_rules.py \\
        --data $DATA/nab --labels $DATA/nab/labels/combined_windows.json \\
        --data $DATA/smd --labels $DATA/smd/labels/combined_windows.json \\
        --data $DATA/kpi --labels $DATA/kpi/labels/combined_windows.json --jobs 2

A *rule* is a part of the stage that is not a user knob (the tail estimator, the
sustained test, the range cap, the record's share of the context). Each alternative is
the shipped stage with that one part swapped (patched in this process, so the production
code keeps one implementation), scored on every dataset with ``default`` at the default
knobs. For each dataset the alternative is chosen on the other two by the harness's rule
(least gain over the shipped stage, then the summed gain) and scored on it: a rule ships
only where that held-out gain is positive on all three. Writes
``benchmarks/results/accuracy_rules.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from _results import RESULTS, write_result

import openanomaly.core.calibration as stage
from openanomaly.evaluation import (
    MODELS,
    dataset_of,
    load_corpus,
    print_progress,
    score_corpus,
    subset_metrics,
)


def _gpd_tail(records: np.ndarray, count: np.ndarray, rate: float, min_count: int) -> np.ndarray:
    """SPOT's generalised Pareto tail (shape by the method of moments, clipped to +-0.5)."""
    return _fitted_tail(records, count, rate, min_count, "gpd")


def _median_excess_tail(records: np.ndarray, count: np.ndarray, rate: float, min_count: int) -> np.ndarray:
    """The exponential tail with its scale from the median excess (robust to one past incident)."""
    return _fitted_tail(records, count, rate, min_count, "median")


def _declustered_tail(records: np.ndarray, count: np.ndarray, rate: float, min_count: int) -> np.ndarray:
    """The exponential tail with the budget counted in clusters: runs of consecutive excesses
    over ``u`` page once, so the level is solved for the clusters' rate (runs estimator of
    the extremal index; Coles 2001, ch. 5)."""
    return _fitted_tail(records, count, rate, min_count, "declustered")


def _ties_as_excesses(records: np.ndarray, count: np.ndarray, rate: float, min_count: int) -> np.ndarray:
    """The exponential tail over all the top values, a tie at ``u`` counted as an excess of 0
    (the estimator before the shipped one)."""
    return _fitted_tail(records, count, rate, min_count, "ties")


def _fitted_tail(
    records: np.ndarray, count: np.ndarray, rate: float, min_count: int, kind: str
) -> np.ndarray:
    """The shipped ``_tail``'s contract (``records`` with ``-inf`` where there is no sample) and
    its excesses: the values strictly above ``u`` among the top (a tie at ``u`` is none),
    except for ``kind="ties"``."""
    h = records.shape[-1]
    top = max(2, math.ceil(stage.TAIL_FRACTION * h))
    if h <= top:
        return np.full(records.shape[:-1], np.nan)
    filled = records
    part = np.partition(filled, h - top - 1, axis=-1)
    u = part[..., h - top - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = part[..., h - top :] - u[..., None]
        excess = np.where(tail > 0, tail, np.nan)  # NaN: not an excess
        peaks = np.count_nonzero(tail > 0, axis=-1)
        if kind == "declustered":  # runs of excesses: each starts where the one before it did not exceed
            over = filled > u[..., None]
            peaks = over[..., 0] + (over[..., 1:] & ~over[..., :-1]).sum(axis=-1)
        elif kind == "ties":
            excess, peaks = tail, top
        ratio = peaks / (np.maximum(count, 1) * rate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row with no excess: NaN, then u
            mean = np.nanmean(excess, axis=-1)
            if kind in ("declustered", "ties"):
                q = u + mean * np.log(ratio)
            elif kind == "median":
                q = u + np.nanmedian(excess, axis=-1) / math.log(2) * np.log(ratio)
            else:
                var = np.nanvar(excess, axis=-1)
                spread = mean**2 / np.where(var > 0, var, np.inf)
                shape = np.clip(0.5 * (1 - spread), -0.5, 0.5)
                scale = 0.5 * mean * (1 + spread)
                small = np.abs(shape) < 1e-6
                grow = np.where(small, np.log(ratio), (ratio ** np.where(small, 1, shape) - 1) / shape)
                q = u + np.where(small, mean, scale) * grow
        q = np.where(peaks > 0, q, u)
    return np.where((count >= min_count) & np.isfinite(q), np.maximum(q, 0.0), np.nan)


def _no_range_cap(x: np.ndarray, at: np.ndarray, context: int, look: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = (x.shape[0], at.size)
    return np.full(shape, -np.inf), np.full(shape, np.inf)


RULES: dict[str, dict[str, Any]] = {
    "shipped": {},
    "GPD tail (SPOT)": {"_tail": _gpd_tail},
    "median-excess tail": {"_tail": _median_excess_tail},
    "declustered tail": {"_tail": _declustered_tail},
    "ties at the floor as excesses": {"_tail": _ties_as_excesses},
    "no sustained test": {"SUSTAINED": 1},
    "no range cap": {"_range_cap": _no_range_cap},
    "record 3/4 of the context": {"RECORD_SHARE": 0.75},
    "tail above the 95th percentile": {"TAIL_FRACTION": 0.05},
}
"""Each alternative: names in ``openanomaly.core.calibration`` and what replaces them."""


@contextmanager
def patched(changes: dict[str, Any]) -> Iterator[None]:
    saved = {name: getattr(stage, name) for name in changes}
    for name, value in changes.items():
        setattr(stage, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(stage, name, value)


def leave_one_dataset_out(per_rule: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """For each dataset, the rule chosen on the others and its held-out score (harness criterion)."""
    datasets = sorted(next(iter(per_rule.values())))
    metric = "nab_standard_at_1"

    def value(rule: str, members: list[str]) -> tuple[float, float]:
        gains = [per_rule[rule][d][metric] - per_rule["shipped"][d][metric] for d in members]
        return min(gains), sum(gains)

    out = {}
    for held in datasets:
        others = [d for d in datasets if d != held]
        best, best_value = "shipped", (0.0, 0.0)
        for rule in per_rule:
            least, total = value(rule, others)
            if least > best_value[0] + 1e-9 or (
                abs(least - best_value[0]) <= 1e-9 and total > best_value[1] + 1e-9
            ):
                best, best_value = rule, (least, total)
        out[held] = {"chosen": best, "held_out": per_rule[best][held]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, action="append")
    parser.add_argument("--labels", required=True, action="append")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "accuracy_rules.json"))
    args = parser.parse_args(argv)
    corpus = load_corpus(args.data, args.labels)
    datasets = sorted({dataset_of(item) for item in corpus})
    per_rule: dict[str, dict[str, dict[str, float]]] = {}
    for rule, changes in RULES.items():
        with patched(changes):  # forked workers see the patched stage
            scores = score_corpus("default", MODELS["default"].spec, corpus, None, args.jobs, print_progress)
        per_rule[rule] = {
            d: subset_metrics(corpus, scores, [i for i, f in enumerate(corpus) if dataset_of(f) == d])
            for d in datasets
        }
        cells = [(d, per_rule[rule][d]) for d in datasets]
        row = "  ".join(
            f"{d} {m['nab_standard_at_1']:6.1f} ({m['false_alerts_per_week']:.2f}/wk)" for d, m in cells
        )
        print(f"{rule:<32} {row}", flush=True)
    held = leave_one_dataset_out(per_rule)
    for dataset, fold in held.items():
        print(
            f"held out {dataset}: chosen {fold['chosen']!r}, "
            f"NAB std @ 1 {fold['held_out']['nab_standard_at_1']:.1f}"
        )
    write_result(
        args.out, {"benchmark": "accuracy_rules", "rules": per_rule, "held_out": held}, sort_keys=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
