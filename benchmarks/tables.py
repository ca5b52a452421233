"""Write the accuracy tables of README.md and docs/accuracy.md from benchmarks/results/accuracy*.json.

Usage::

    uv run python benchmarks/tables.py          # rewrite the tables in place
    uv run python benchmarks/tables.py --check  # exit 1 if a table differs from the JSON

Each table sits between ``<!-- accuracy:NAME -->`` and ``<!-- /accuracy:NAME -->`` in the
Markdown files; everything between the markers is generated, so a figure in the docs is
always the one in the results file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "accuracy.md")
DATASETS = ("nab", "smd", "kpi")


def _metrics(row: dict[str, Any]) -> str:
    return (
        f"{row['nab_standard_at_1']:.1f} | {row['f1']:.3f} | {row['vus_pr']:.3f} | "
        f"{row['false_alerts_per_week']:.2f}"
    )


def held_out_table(results: dict[str, Any]) -> str:
    """``default`` leave-one-dataset-out beside the build before the one alert policy."""
    results = results["accuracy"]
    lines = [
        "| dataset (files) | held out: NAB std @ 1 | F1 @ 1 | VUS-PR | false alerts / series / week "
        "| knob chosen on the other two | build before (NAB std @ 1 / F1 / VUS-PR / FA per week) |",
        "|---|---|---|---|---|---|---|",
    ]
    cv = results["models"]["default"]["cv"]
    before = results.get("baseline", {}).get("models", {}).get("default", {})
    for dataset in DATASETS:
        if dataset not in cv["datasets"]:
            continue
        row = cv["datasets"][dataset]["held_out"]
        old = before.get(dataset)
        was = _metrics(old).replace(" | ", " / ") if old else "-"
        lines.append(
            f"| {dataset} ({row['files']}) | {_metrics(row)} | {cv['groups'][dataset]['chosen']} | {was} |"
        )
    return "\n".join(lines)


def models_table(results: dict[str, Any]) -> str:
    """Every model at the shipped defaults, per dataset (in-sample: nothing is chosen here)."""
    results = results["accuracy"]
    lines = [
        "| model | dataset | NAB std @ 1 | F1 @ 1 | VUS-PR | false alerts / series / week "
        "| build before: NAB std @ 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    before = results.get("baseline", {}).get("models", {})
    for name, model in results["models"].items():
        if "error" in model:
            lines.append(f"| {name} | - | error: {model['error']} | | | | |")
            continue
        for dataset in DATASETS:
            row = model.get("per_dataset", {}).get(dataset)
            if row is None:
                continue
            old = before.get(name, {}).get(dataset)
            was = f"{old['nab_standard_at_1']:.1f}" if old else "-"
            lines.append(f"| {name} | {dataset} | {_metrics(row)} | {was} |")
    return "\n".join(lines)


def rules_table(results: dict[str, Any]) -> str:
    """The stage's built-in rules against the shipped one, and the leave-one-dataset-out choice."""
    rules = results["accuracy_rules"]
    lines = [
        "| rule (`default`, 1 alarm a week) | "
        + " | ".join(f"{d}: NAB std @ 1 (FA / week)" for d in DATASETS)
        + " |",
        "|---|" + "---|" * len(DATASETS),
    ]
    for rule, by_dataset in rules["rules"].items():
        cells = [
            f"{by_dataset[d]['nab_standard_at_1']:.1f} ({by_dataset[d]['false_alerts_per_week']:.2f})"
            for d in DATASETS
        ]
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    chosen = [
        f"{rules['held_out'][d]['chosen']}: {rules['held_out'][d]['held_out']['nab_standard_at_1']:.1f}"
        for d in DATASETS
    ]
    lines.append("| **held out** (rule chosen on the other two: score) | " + " | ".join(chosen) + " |")
    return "\n".join(lines)


TABLES = {"held-out": held_out_table, "models": models_table, "rules": rules_table}


def render(text: str, results: dict[str, Any]) -> str:
    """``text`` with every marked table regenerated."""
    for name, build in TABLES.items():
        pattern = re.compile(rf"(<!-- accuracy:{name} -->\n)(?:.*?\n)?(<!-- /accuracy:{name} -->)", re.DOTALL)
        text = pattern.sub(
            lambda match, build=build: match.group(1) + build(results) + "\n" + match.group(2), text
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is out of date")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the results files")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    results = {
        name: json.loads((folder / f"{name}.json").read_text()) for name in ("accuracy", "accuracy_rules")
    }
    stale = []
    for path in DOCUMENTS:
        text = path.read_text()
        fresh = render(text, results)
        if fresh != text:
            stale.append(path)
            if not args.check:
                path.write_text(fresh)
    if args.check and stale:
        print(f"out of date: {', '.join(str(p.relative_to(ROOT)) for p in stale)}; run benchmarks/tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
