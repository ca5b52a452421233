"""The accuracy harness and the ``default`` detector through detect's backtest, on a short NAB slice."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

NAB = Path("/work/shared/benchmarks/nab")
ROOT = Path(__file__).resolve().parents[1]


def _harness():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its sibling helpers, as when run as a script
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not NAB.is_dir(), reason="shared NAB data not present")
def test_harness_runs_default_through_backtest_on_a_nab_slice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "realKnownCause").mkdir(parents=True)
    source = (NAB / "realKnownCause" / "ec2_request_latency_system_failure.csv").read_text().splitlines()
    (data / "realKnownCause" / "ec2.csv").write_text("\n".join(source[:1501]) + "\n")
    # One window around the first latency spikes of the slice (rows 1100-1200).
    rows = [line.split(",")[0] for line in source[1:1501]]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"realKnownCause/ec2.csv": [[rows[1100], rows[1200]]]}))
    out = tmp_path / "accuracy.json"
    harness = _harness()
    harness.MODELS["default"] = harness.ModelRun("default", context=300)
    assert harness.main(["--data", str(data), "--labels", str(labels), "--out", str(out)]) == 0
    result = json.loads(out.read_text())["models"]["default"]
    overall = result["overall"]
    for key in ("nab_standard", "nab_reward_low_fp", "nab_reward_low_fn", "f1", "vus_pr"):
        assert np.isfinite(overall[key])
    assert set(result["per_category"]) == {"realKnownCause"}
    assert -1000 < overall["nab_standard"] <= 100
    assert result["per_file"]["realKnownCause/ec2.csv"]["windows"] == 1
    # Deterministic: the same command gives the same numbers.
    again = tmp_path / "again.json"
    assert harness.main(["--data", str(data), "--labels", str(labels), "--out", str(again)]) == 0
    rerun = json.loads(again.read_text())["models"]["default"]
    assert rerun["overall"] == overall


@pytest.mark.skipif(not NAB.is_dir(), reason="shared NAB data not present")
def test_harness_merge_refuses_results_from_other_data_before_running(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.json"
    out.write_text(json.dumps({"data": str(tmp_path / "elsewhere"), "labels": "x.json", "models": {}}))
    harness = _harness()
    harness.run_model = None  # reaching the run would fail loudly: the check must come first
    labels = NAB / "labels" / "combined_windows.json"
    with pytest.raises(SystemExit) as stopped:
        harness.main(["--data", str(NAB), "--labels", str(labels), "--out", str(out), "--merge"])
    assert stopped.value.code == 2


@pytest.mark.skipif(not NAB.is_dir(), reason="shared NAB data not present")
def test_harness_cross_validates_over_groups(tmp_path: Path) -> None:
    data = tmp_path / "data"
    labels: dict[str, list[list[str]]] = {}
    for category, name in (("realKnownCause", "ec2_request_latency_system_failure"), ("other", "copy")):
        (data / category).mkdir(parents=True)
        source = (NAB / "realKnownCause" / "ec2_request_latency_system_failure.csv").read_text().splitlines()
        (data / category / f"{name}.csv").write_text("\n".join(source[:1201]) + "\n")
        rows = [line.split(",")[0] for line in source[1:1201]]
        labels[f"{category}/{name}.csv"] = [[rows[1100], rows[1150]]]
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps(labels))
    out = tmp_path / "cv.json"
    harness = _harness()
    harness.MODELS["default"] = harness.ModelRun("default", context=300)
    argv = ["--data", str(data), "--labels", str(labels_file), "--out", str(out), "--cv", "--jobs", "2"]
    assert harness.main(argv) == 0
    cv = json.loads(out.read_text())["models"]["default"]["cv"]
    assert cv["metric"] == "nab_standard_at_1" and set(cv["variants"]) == set(harness.VARIANTS)
    assert set(cv["groups"]) == {"realKnownCause", "other"}  # one dataset: its categories
    for group in cv["groups"].values():
        assert group["chosen"] in harness.VARIANTS
        expected = {"nab_standard_at_1", "vus_pr", "f1", "false_alerts_per_week"}
        assert set(group["in_sample"]) == set(group["held_out"]) >= expected
    assert np.isfinite(cv["held_out"]["nab_standard_at_1"])
    smd = harness.NabFile("smd_machine1/machine-1-2_dim01.csv", np.zeros(1), np.zeros(1), np.zeros((0, 2)))
    assert harness.group_of(smd) == "machine-1-2"


@pytest.mark.skipif(not NAB.is_dir(), reason="shared NAB data not present")
def test_harness_cross_validates_over_several_datasets(tmp_path: Path) -> None:
    # Two data folders scored together: each file's dataset is its folder, and the CV
    # leaves one dataset out at a time.
    source = (NAB / "realKnownCause" / "ec2_request_latency_system_failure.csv").read_text().splitlines()
    rows = [line.split(",")[0] for line in source[1:1201]]
    argv = ["--models", "default", "--out", str(tmp_path / "cv.json"), "--cv", "--jobs", "2"]
    for dataset in ("first", "second"):
        (tmp_path / dataset / "kind").mkdir(parents=True)
        (tmp_path / dataset / "kind" / "a.csv").write_text("\n".join(source[:1201]) + "\n")
        labels = tmp_path / f"{dataset}.json"
        labels.write_text(json.dumps({"kind/a.csv": [[rows[1100], rows[1150]]]}))
        argv += ["--data", str(tmp_path / dataset), "--labels", str(labels)]
    harness = _harness()
    harness.MODELS["default"] = harness.ModelRun("default", context=300)
    assert harness.main(argv) == 0
    result = json.loads((tmp_path / "cv.json").read_text())
    assert len(result["data"]) == 2 and result["files"] == 2
    assert set(result["models"]["default"]["per_dataset"]) == {"first", "second"}
    cv = result["models"]["default"]["cv"]
    assert set(cv["datasets"]) == {"first", "second"}
    assert set(cv["groups"]) == {"first", "second"}


def test_cross_validation_moves_a_default_only_when_no_dataset_pays_and_one_gains() -> None:
    from openanomaly.evaluation.nab import NabFile

    harness = _harness()
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
    assert harness.cross_validate(corpus, trade_only, variants)["chosen_in_sample"] == "defaults"
    assert harness.cross_validate(corpus, by_variant, variants)["chosen_in_sample"] == "both"
    # a gains, b does not move (a knob that only reaches a's kind of data): the least gain
    # ties the defaults' at 0, the summed gain decides
    one_side = {"defaults": by_variant["defaults"], "a only": [alerts(420), alerts()]}
    assert harness.cross_validate(corpus, one_side, variants)["chosen_in_sample"] == "a only"


def test_forecasters_are_cached_per_model_not_per_params() -> None:
    # mad and zscore take the same params: one cache (one worker process) must keep both.
    from openanomaly.evaluation.nab import NabFile

    harness = _harness()
    n = 600
    values = np.sin(np.arange(n) / 10.0) + np.random.default_rng(0).normal(0, 0.1, n)
    item = NabFile("kind/x.csv", np.arange(n) * 300_000, values, np.array([[500, 520]]))
    cache: dict = {}
    for name in ("mad", "zscore"):
        run = harness.MODELS[name]
        harness.score_file(item, name, run, run.spec, cache)
    assert len(cache) == 2


def test_harness_trains_nhits_on_the_probationary_rows_only() -> None:
    # A global model is trained before it scores, as the scheduler trains it on
    # fit_window: here on the rows NAB does not score, never on the scored ones.
    from openanomaly.evaluation import probationary_length
    from openanomaly.evaluation.nab import NabFile

    harness = _harness()
    n = 2000
    t = np.arange(n)
    values = 10 + np.sin(2 * np.pi * t / 48) + np.random.default_rng(2).normal(0, 0.1, n)
    values[1500] += 8
    item = NabFile("kind/x.csv", t * 300_000, values, np.array([[1490, 1510]]))
    trained_on: list[int] = []
    fit = harness.fit_global

    def spy(pipeline, rows, *, horizon):
        trained_on.append(rows.shape[1])
        return fit(pipeline, rows, horizon=horizon)

    harness.fit_global = spy
    run = harness.MODELS["nhits"]
    scores = harness.score_file(item, "nhits", run, run.spec, {})
    assert trained_on == [probationary_length(n)]
    assert scores[1500] > 1
    assert np.mean(scores[probationary_length(n) :] > 1) < 0.01


def test_the_accuracy_tables_in_the_docs_are_the_results() -> None:
    # README.md and docs/accuracy.md carry tables written from benchmarks/results by
    # benchmarks/tables.py: a figure edited by hand, or results not re-rendered, fails here.
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.main(["--check"]) == 0
