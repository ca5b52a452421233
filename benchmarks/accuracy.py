"""Detection quality on a NAB-format folder, through the production backtest.

Usage::

    uv run python benchmarks/accuracy.py --data $DATA/nab \\
        --labels $DATA/nab/labels/combined_windows.json \\
        [--models default,zscore,mad,...] [--out benchmarks/results/accuracy.json]

The command around :mod:`openanomaly.evaluation`: for each model and each labelled file
:func:`~openanomaly.evaluation.run_model` builds the same ``Pipeline`` a user would write
(model spec + params, ``step``, ``infer_every``, ``context``, band quantiles), runs
:func:`openanomaly.core.detect.score_range` over the file and scores the resulting
``anomaly_score`` series with the NAB method (three profiles), pooled event-wise F1 and
VUS-PR. This file parses the arguments, prints the tables and writes the JSON.

Headline numbers use NAB's own threshold rule (per profile, the one threshold that
maximises the score summed over all files); ``*_at_1`` keys give the same scores at
OpenAnomaly's production threshold (alert when ``anomaly_score > 1``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _results import RESULTS, write_result

from openanomaly.evaluation import MODELS, load_corpus, print_progress, run_model

DEFAULT_OUT = RESULTS / "accuracy.json"


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
    corpus = load_corpus(args.data, args.labels)
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
            results[name] = run_model(name, corpus, cv=args.cv, jobs=args.jobs, progress=print_progress)
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
