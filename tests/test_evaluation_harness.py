"""The accuracy harness (``openanomaly.evaluation``) and its command, ``benchmarks/accuracy.py``.

Most tests run on the labelled example in the repository (``examples/data/``: NAB's EC2
request latency file and its windows). The one that needs the development corpus (the
folder holding ``nab/``, ``smd/`` and ``kpi/``) reads it from ``OPENANOMALY_BENCHMARKS`` and
skips, naming the variable, when it is unset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openanomaly.evaluation import (
    MODELS,
    VARIANTS,
    ModelRun,
    NabFile,
    backtests,
    cross_validate,
    dataset_of,
    group_of,
    load_corpus,
    probationary_length,
    run_model,
    score_file,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "data"
EXAMPLE_FILE = "ec2_request_latency_system_failure.csv"
CORPUS_VARIABLE = "OPENANOMALY_BENCHMARKS"


def _example() -> list[NabFile]:
    return load_corpus([str(EXAMPLE)], [str(EXAMPLE / "labels.json")])


def _command(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _slices(tmp_path: Path, folders: list[tuple[str, str]], rows: int = 1200) -> list[tuple[str, str]]:
    """The example's first ``rows`` rows as ``<dataset>/<category>/x.csv``, one window at rows
    1100-1150; returns the ``(data folder, labels)`` pairs, one per dataset."""
    source = (EXAMPLE / EXAMPLE_FILE).read_text().splitlines()
    stamps = [line.split(",")[0] for line in source[1 : rows + 1]]
    pairs: dict[str, dict[str, list[list[str]]]] = {}
    for dataset, category in folders:
        (tmp_path / dataset / category).mkdir(parents=True)
        (tmp_path / dataset / category / "x.csv").write_text("\n".join(source[: rows + 1]) + "\n")
        pairs.setdefault(dataset, {})[f"{category}/x.csv"] = [[stamps[1100], stamps[1150]]]
    out = []
    for dataset, table in pairs.items():
        labels = tmp_path / f"{dataset}.json"
        labels.write_text(json.dumps(table))
        out.append((str(tmp_path / dataset), str(labels)))
    return out


def test_default_grades_the_example_and_the_command_records_the_same(tmp_path: Path) -> None:
    # The production default, as shipped, through detect's backtest on the bundled file.
    corpus = _example()
    assert [item.path for item in corpus] == [EXAMPLE_FILE] and corpus[0].windows.shape == (3, 2)
    result = run_model("default", corpus)
    overall = result["overall"]
    for key in (
        "nab_standard",
        "nab_reward_low_fp",
        "nab_reward_low_fn",
        "nab_standard_at_1",
        "f1",
        "vus_pr",
    ):
        assert np.isfinite(overall[key]), key
    assert -1000 < overall["nab_standard"] <= 100
    assert overall["windows_detected_at_1"] >= 1
    assert result["per_file"][EXAMPLE_FILE]["windows"] == 3
    # The command is the same run in another process: the same numbers (deterministic).
    out = tmp_path / "accuracy.json"
    done = _command(
        "accuracy.py", "--data", str(EXAMPLE), "--labels", str(EXAMPLE / "labels.json"), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert f"  default         {EXAMPLE_FILE}" in done.stderr  # one progress line per file
    recorded = json.loads(out.read_text())
    assert recorded["files"] == 1 and recorded["rows"] == corpus[0].values.size
    assert recorded["models"]["default"]["overall"] == overall
    assert recorded["models"]["default"]["per_file"] == result["per_file"]


def test_command_merge_refuses_results_from_other_data_before_running(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.json"
    out.write_text(json.dumps({"data": str(tmp_path / "elsewhere"), "labels": "x.json", "models": {}}))
    labels = EXAMPLE / "labels.json"
    done = _command(
        "accuracy.py", "--data", str(EXAMPLE), "--labels", str(labels), "--out", str(out), "--merge"
    )
    assert done.returncode == 2, done.stderr
    assert "--merge" in done.stderr and "made from other data/labels" in done.stderr
    assert "rows" not in done.stderr  # refused before the corpus was scored


def test_harness_cross_validates_over_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(data, labels)] = _slices(tmp_path, [("data", "realKnownCause"), ("data", "other")])
    monkeypatch.setitem(MODELS, "default", ModelRun("default", context=300))
    cv = run_model("default", load_corpus([data], [labels]), cv=True, jobs=2)["cv"]
    assert cv["metric"] == "nab_standard_at_1" and set(cv["variants"]) == set(VARIANTS)
    assert set(cv["groups"]) == {"realKnownCause", "other"}  # one dataset: its categories
    for group in cv["groups"].values():
        assert group["chosen"] in VARIANTS
        expected = {"nab_standard_at_1", "vus_pr", "f1", "false_alerts_per_week"}
        assert set(group["in_sample"]) == set(group["held_out"]) >= expected
    assert np.isfinite(cv["held_out"]["nab_standard_at_1"])
    smd = NabFile("smd_machine1/machine-1-2_dim01.csv", np.zeros(1), np.zeros(1), np.zeros((0, 2)))
    assert group_of(smd) == "machine-1-2"


def test_harness_cross_validates_over_several_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two data folders scored together: each file's dataset is its folder, and the CV
    # leaves one dataset out at a time.
    pairs = _slices(tmp_path, [("first", "kind"), ("second", "kind")])
    corpus = load_corpus([data for data, _ in pairs], [labels for _, labels in pairs])
    assert [dataset_of(item) for item in corpus] == ["first", "second"]
    monkeypatch.setitem(MODELS, "default", ModelRun("default", context=300))
    result = run_model("default", corpus, cv=True, jobs=2)
    assert set(result["per_dataset"]) == {"first", "second"}
    assert set(result["cv"]["datasets"]) == {"first", "second"}
    assert set(result["cv"]["groups"]) == {"first", "second"}


def test_cross_validation_moves_a_default_only_when_no_dataset_pays_and_one_gains() -> None:
    n = 1000

    def alerts(*at: int) -> np.ndarray:
        scores = np.zeros(n)
        scores[list(at)] = 2.0
        return scores

    corpus = [
        NabFile("a:kind/x.csv", np.arange(n) * 300_000, np.zeros(n), np.array([[400, 450]])),
        NabFile("b:kind/y.csv", np.arange(n) * 300_000, np.zeros(n), np.array([[300, 350], [600, 650]])),
    ]
    by_variant = {
        "defaults": [alerts(420, 200), alerts()],
        # b gains both windows, a pays with false positives: the worse dataset (b) would pick it
        "trade": [alerts(420, 200, 700, 850), alerts(320, 620)],
        # every dataset gains
        "both": [alerts(420), alerts(320)],
    }
    variants = {name: {} for name in ("defaults", "trade", "both", "a only")}
    trade_only = {k: by_variant[k] for k in ("defaults", "trade")}
    assert cross_validate(corpus, trade_only, variants)["chosen_in_sample"] == "defaults"
    assert cross_validate(corpus, by_variant, variants)["chosen_in_sample"] == "both"
    # a gains, b does not move (a knob that only reaches a's kind of data): the least gain
    # ties the defaults' at 0, the summed gain decides
    one_side = {"defaults": by_variant["defaults"], "a only": [alerts(420), alerts()]}
    assert cross_validate(corpus, one_side, variants)["chosen_in_sample"] == "a only"


def test_forecasters_are_cached_per_model_not_per_params() -> None:
    # mad and zscore take the same params: one cache (one worker process) must keep both.
    n = 600
    values = np.sin(np.arange(n) / 10.0) + np.random.default_rng(0).normal(0, 0.1, n)
    item = NabFile("kind/x.csv", np.arange(n) * 300_000, values, np.array([[500, 520]]))
    cache: dict = {}
    for name in ("mad", "zscore"):
        run = MODELS[name]
        score_file(item, name, run, run.spec, cache)
    assert len(cache) == 2


def test_harness_trains_nhits_on_the_probationary_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # A global model is trained before it scores, as the scheduler trains it on
    # fit_window: here on the rows NAB does not score, never on the scored ones.
    n = 2000
    t = np.arange(n)
    values = 10 + np.sin(2 * np.pi * t / 48) + np.random.default_rng(2).normal(0, 0.1, n)
    values[1500] += 8
    item = NabFile("kind/x.csv", t * 300_000, values, np.array([[1490, 1510]]))
    trained_on: list[int] = []
    fit = backtests.fit_global

    def spy(pipeline, rows, *, horizon):
        trained_on.append(rows.shape[1])
        return fit(pipeline, rows, horizon=horizon)

    monkeypatch.setattr(backtests, "fit_global", spy)
    run = MODELS["nhits"]
    scores = score_file(item, "nhits", run, run.spec, {})
    assert trained_on == [probationary_length(n)]
    assert scores[1500] > 1
    assert np.mean(scores[probationary_length(n) :] > 1) < 0.01


def test_the_recorded_nab_scores_are_this_builds() -> None:
    # benchmarks/results/accuracy.json holds the figures the docs' tables show; re-scoring
    # some of its NAB files with `default` must give the recorded per-file scores, or the
    # results (and tables) are of another build.
    folder = os.environ.get(CORPUS_VARIABLE)
    if not folder:
        pytest.skip(f"{CORPUS_VARIABLE} is unset: set it to the development corpus (the folder with nab/)")
    nab = Path(folder) / "nab"
    corpus = load_corpus([str(nab)], [str(nab / "labels" / "combined_windows.json")])
    picked = [f for f in corpus if f.category == "artificialWithAnomaly"]
    assert picked, f"no artificialWithAnomaly file under {nab}"
    recorded = json.loads((ROOT / "benchmarks" / "results" / "accuracy.json").read_text())
    per_file = recorded["models"]["default"]["per_file"]
    run = MODELS["default"]
    graded = run_model("default", picked)["per_file"]
    assert run.spec == recorded["models"]["default"]["config"]["spec"]
    for item in picked:
        expected = per_file[f"nab:{item.path}"]["raw_standard_at_1"]
        assert graded[item.path]["raw_standard_at_1"] == pytest.approx(expected, rel=1e-9, abs=1e-12), (
            item.path
        )


def test_the_accuracy_tables_in_the_docs_are_the_results() -> None:
    # README.md and docs/accuracy.md carry tables written from benchmarks/results by
    # benchmarks/tables.py: a figure edited by hand, or results not re-rendered, fails here.
    done = _command("tables.py", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
