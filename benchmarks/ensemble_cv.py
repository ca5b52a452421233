"""Does combining `default` with a second calibrated model help, held out?

Both models are backtested through the production path and the calibration stage (as
``benchmarks/accuracy.py`` runs them); their final ``anomaly_score`` series are then
combined point by point by a few rules (the larger, the smaller, the mean, the larger
with the second model's score shrunk so it must be rarer to page). Each rule is a
cross-validation variant of ``accuracy.cross_validate``: leave-one-group-out over NAB's
categories and SMD's machines, a rule counted by its least gain over ``default`` alone
among the datasets. Prints per rule the in-sample NAB standard at score > 1 per dataset,
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

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]
RULES: dict[str, Rule] = {
    "max": np.fmax,
    "min": np.fmin,
    "mean": lambda a, b: (a + b) / 2,
    "max, second / 1.25": lambda a, b: np.fmax(a, b / 1.25),
    "max, second / 1.5": lambda a, b: np.fmax(a, b / 1.5),
    "max, second / 2": lambda a, b: np.fmax(a, b / 2),
}


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
            in_sample[variant][dataset] = accuracy._subset_metrics(corpus, scores, members)
    cv = accuracy.cross_validate(corpus, by_variant, {v: {} for v in by_variant}, "nab_standard_at_1")
    print(f"default + {args.second}: NAB standard at score > 1 (F1, VUS-PR), in-sample per dataset")
    for variant, per_dataset in in_sample.items():
        cells = [
            f"{d or 'all'} {m['nab_standard_at_1']:6.1f} ({m['f1']:.3f}, {m['vus_pr']:.3f})"
            for d, m in per_dataset.items()
        ]
        print(f"  {variant:<20} " + " | ".join(cells))
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
