"""Pretraining: the synthetic data, a short training run, and the shipped checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openanomaly.models.chronos import SHIPPED_MODELS
from openanomaly.models.registry import model_info
from openanomaly.pretrain.synth import make_batch
from openanomaly.pretrain.train import TrainConfig, train

SHIPPED = "chronos:openanomaly-bolt-mini"
# A config small enough that 20 steps take seconds on one CPU thread.
TINY = TrainConfig(
    size="tiny",
    context_length=64,
    prediction_length=16,
    steps=20,
    batch_size=16,
    warmup_steps=2,
    learning_rate=3e-3,
)


def test_generator_is_deterministic_for_a_seed() -> None:
    first = make_batch(seed=3, index=7, size=64, length=576)
    assert first.shape == (64, 576) and first.dtype == np.float32
    np.testing.assert_array_equal(first, make_batch(seed=3, index=7, size=64, length=576))
    assert not np.array_equal(first, make_batch(seed=4, index=7, size=64, length=576), equal_nan=True)
    assert not np.array_equal(first, make_batch(seed=3, index=8, size=64, length=576), equal_nan=True)
    # Missing points and integer-valued (count) series are part of the mix.
    assert np.isnan(first).any()
    assert np.isfinite(first).any(axis=1).all()
    assert any(np.array_equal(row[np.isfinite(row)], np.round(row[np.isfinite(row)])) for row in first)


def held_out_losses(run: Path) -> list[float]:
    with (run / "loss.csv").open() as handle:
        return [float(row["held_out_loss"]) for row in csv.DictReader(handle)]


def test_twenty_steps_lower_the_loss(tmp_path: Path) -> None:
    final = train(TINY, tmp_path, log_every=1, progress=False)
    losses = held_out_losses(tmp_path)
    assert len(losses) == 20
    assert losses[-1] < 0.8 * losses[0]
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors"}


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    whole = train(TINY, tmp_path / "whole", progress=False)
    train(TINY, tmp_path / "split", progress=False, max_minutes=0)  # stops after one step
    assert len(held_out_losses(tmp_path / "split")) == 1
    resumed = train(TINY, tmp_path / "split", progress=False)
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    train(TINY, tmp_path, progress=False, max_minutes=0)
    with pytest.raises(ValueError, match="other settings"):
        train(TINY.model_copy(update={"seed": 1}), tmp_path, progress=False)


def test_a_finished_run_trains_longer_when_given_more_steps(tmp_path: Path) -> None:
    train(TINY.model_copy(update={"steps": 10}), tmp_path, log_every=5, progress=False)
    with pytest.raises(ValueError, match="already trained 10 steps"):
        train(TINY.model_copy(update={"steps": 5}), tmp_path, progress=False)
    train(TINY, tmp_path, log_every=5, progress=False)
    with (tmp_path / "loss.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [5, 10, 15, 20]


def test_shipped_checkpoint_is_small_and_described_without_loading() -> None:
    directory = SHIPPED_MODELS["openanomaly-bolt-mini"]
    assert (directory / "config.json").is_file()
    assert (directory / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    info = model_info(SHIPPED, {"device": "cpu"})
    assert info.levels == (0.1, 0.9)
    assert info.max_horizon == 64


FORECAST_OFFLINE = """
import json, numpy as np
from openanomaly.models import load_forecaster
t = np.arange(600)
rng = np.random.default_rng(0)
daily = 100 + 20 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 1, 600)
contexts = np.stack([daily[:536], np.r_[np.full(236, np.nan), daily[236:536]]])
model = load_forecaster("chronos:openanomaly-bolt-mini", device="cpu")
forecast = model.forecast(contexts, 64, [0.1, 0.5, 0.9])
future = daily[536:]
inside = (future >= forecast.level(0.1)[0]) & (future <= forecast.level(0.9)[0])
print(json.dumps({
    "shape": list(forecast.quantiles.shape),
    "finite": bool(np.isfinite(forecast.quantiles).all()),
    "ordered": bool((np.diff(forecast.quantiles, axis=-1) >= 0).all()),
    "median_range": [float(forecast.median.min()), float(forecast.median.max())],
    "coverage": float(inside.mean()),
}))
"""


def test_shipped_checkpoint_loads_offline_and_forecasts() -> None:
    """In a fresh interpreter with HF_HUB_OFFLINE=1, as on an air-gapped host."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FORECAST_OFFLINE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2, 64, 3]
    assert result["finite"] and result["ordered"]
    # Forecasts on the series' scale, and its 0.1-0.9 band holds most of the future. (The
    # shipped model forecasts about the level: it does not follow the cycle yet, see
    # docs/models.md, so no tighter bound is claimed here.)
    low, high = result["median_range"]
    assert 80 < low <= high < 120
    assert result["coverage"] >= 0.6
