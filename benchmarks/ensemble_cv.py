"""Do rules on `default`'s final score help, held out: combining it with a second
calibrated model, or thinning its runs of alerting rows?

Both models are backtested through the production path and the calibration stage (as
``benchmarks/accuracy.py`` runs them); their final ``anomaly_score`` series are then
combined point by point by a few rules (the larger, the smaller, the mean, the larger
with the second model's score shrunk so it must be rarer to page), or `default`'s alone
is thinned (only the first row of a run of alerting rows alerts; no alert within n rows
of the last). Each rule is a cross-validation variant of ``accuracy.cross_validate``:
leave-one-group-out over NAB's categories and SMD's machines, a rule counted by its
least gain over ``default`` alone among the datasets. Prints per rule the in-sample NAB
standard at score > 1 per dataset and the alerting rows inside and outside the windows,
then the held-out result; writes ``benchmarks/results/ensemble_cv.json``.

    uv run python benchmarks/ensemble_cv.py --data ../shared/benchmarks/nab \\
        --labels ../shared/benchmarks/nab/labels/combined_windows.json \\
        --data ../shared/benchmarks/smd --labels ../shared/benchmarks/smd/labels/combined_windows.json \\
        [--second seasonal_naive] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _results import RESULTS, write_result

sys.path.insert(0, str(Path(__file__).parent))
import accuracy  # the harness beside this script

from openanomaly.evaluation.events import EventCounts, event_counts

BELOW = 0.999
"""What a thinned alerting row's score becomes: just under the threshold, so it still ranks."""


def _first_of_runs(score: np.ndarray) -> np.ndarray:
    """Only the first row of each run of rows over 1 keeps its score over 1."""
    alert = np.nan_to_num(score) > 1
    repeat = alert & np.concatenate([[False], alert[:-1]])
    return np.where(repeat, np.minimum(score, BELOW), score)


def _refractory(score: np.ndarray, rows: int) -> np.ndarray:
    """No row over 1 within ``rows`` rows after the last row that stayed over 1."""
    out = np.array(score, dtype=np.float64)
    last = -rows - 1
    for i in np.flatnonzero(np.nan_to_num(out) > 1):
        if i - last <= rows:
            out[i] = BELOW
        else:
            last = i
    return out


Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]
RULES: dict[str, Rule] = {
    "first row of each alert run": lambda a, _: _first_of_runs(a),
    **{f"no alert within {n} rows": (lambda a, _, n=n: _refractory(a, n)) for n in (12, 48, 144, 288)},
    "max": np.fmax,
    "min": np.fmin,
    "mean": lambda a, b: (a + b) / 2,
    "max, second / 1.25": lambda a, b: np.fmax(a, b / 1.25),
    "max, second / 1.5": lambda a, b: np.fmax(a, b / 1.5),
    "max, second / 2": lambda a, b: np.fmax(a, b / 2),
}


def _alerting_rows(corpus: list, scores: list[np.ndarray], members: list[int]) -> dict[str, int]:
    """Rows over 1 after the probationary period, inside and outside the labelled windows."""
    total = EventCounts(0, 0, 0, 0)
    for i in members:
        start = accuracy.probationary_length(len(corpus[i].values))
        total = total + event_counts(scores[i], corpus[i].windows, 1.0, start=start)
    return {"rows_in_windows": total.true_rows, "rows_outside": total.alert_rows - total.true_rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, action="append")
    parser.add_argument("--labels", required=True, action="append")
    parser.add_argument("--second", default="seasonal_naive", help=f"one of {', '.join(accuracy.MODELS)}")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "ensemble_cv.json")
    args = parser.parse_args(argv)
    corpus = accuracy._load(args.data, args.labels)
    first = accuracy._score_corpus("default", accuracy.MODELS["default"].spec, corpus, jobs=args.jobs)
    second = accuracy._score_corpus(args.second, accuracy.MODELS[args.second].spec, corpus, jobs=args.jobs)
    by_variant = {"defaults": first}
    for label, rule in RULES.items():
        by_variant[label] = [rule(a, b) for a, b in zip(first, second, strict=True)]
    datasets = sorted({accuracy.dataset_of(item) for item in corpus})
    in_sample = {}
    for variant, scores in by_variant.items():
        in_sample[variant] = {}
        for dataset in datasets:
            members = [i for i, item in enumerate(corpus) if accuracy.dataset_of(item) == dataset]
            in_sample[variant][dataset] = {
                **accuracy._subset_metrics(corpus, scores, members),
                **_alerting_rows(corpus, scores, members),
            }
    cv = accuracy.cross_validate(corpus, by_variant, {v: {} for v in by_variant}, "nab_standard_at_1")
    print(
        f"default + {args.second}: NAB standard at score > 1 (event F1 at 1, VUS-PR, alerting "
        "rows inside / outside the windows), in-sample per dataset"
    )
    for variant, per_dataset in in_sample.items():
        cells = [
            f"{d or 'all'} {m['nab_standard_at_1']:6.1f} ({m['f1']:.3f}, {m['vus_pr']:.3f}, "
            f"{m['rows_in_windows']}/{m['rows_outside']})"
            for d, m in per_dataset.items()
        ]
        print(f"  {variant:<28} " + " | ".join(cells))
    print(f"cross-validated: in-sample choice {cv['chosen_in_sample']!r}")
    for dataset, result in cv["datasets"].items():
        print(
            f"  {dataset or 'all'}: in-sample {result['in_sample']['nab_standard_at_1']:.1f}, "
            f"held-out {result['held_out']['nab_standard_at_1']:.1f}"
        )
    chosen = {group: result["chosen"] for group, result in cv["groups"].items()}
    print(f"  per held-out group: {chosen}")
    record = {
        "benchmark": "ensemble_cv",
        "first": "default",
        "second": args.second,
        "rules": list(RULES),
        "in_sample": in_sample,
        "chosen_in_sample": cv["chosen_in_sample"],
        "chosen_per_group": chosen,
        "datasets": cv["datasets"],
    }
    write_result(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
