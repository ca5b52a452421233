"""Chronos adapter on tiny random checkpoints, loaded through the real from_pretrained path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openanomaly.errors import ModelError, UnknownModelSpec
from openanomaly.models import load_forecaster
from openanomaly.models.chronos import map_levels
from openanomaly.models.registry import validate_params
from openanomaly.models.tiny import build_tiny_chronos


def contexts(length: int = 100) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(length)
    values = 10 + 3 * np.sin(2 * np.pi * t / 24)[None, :] + rng.normal(0, 0.5, (5, length))
    values[1, :60] = np.nan  # shorter series
    values[2, [40, 41, 70]] = np.nan  # missing samples inside
    values[3] = np.nan  # no data at all
    return values


@pytest.fixture(scope="module", params=["bolt", "chronos2"])
def tiny(request: pytest.FixtureRequest, tiny_chronos_bolt: str, tiny_chronos2: str) -> tuple[str, str]:
    return request.param, {"bolt": tiny_chronos_bolt, "chronos2": tiny_chronos2}[request.param]


def test_forecast_shapes_order_median_and_nan_rows(tiny: tuple[str, str]) -> None:
    kind, path = tiny
    model = load_forecaster(f"chronos:{path}", device="cpu", batch_size=2)
    assert (
        type(model.pipeline).__name__ == {"bolt": "ChronosBoltPipeline", "chronos2": "Chronos2Pipeline"}[kind]
    )
    levels = [0.1, 0.25, 0.5, 0.75, 0.9]
    out = model.forecast(contexts(), 12, levels)
    assert out.quantiles.shape == (5, 12, 5) and out.median.shape == (5, 12)
    finite = [0, 1, 2, 4]
    assert np.isfinite(out.quantiles[finite]).all()
    assert np.all(np.diff(out.quantiles[finite], axis=-1) >= 0)
    np.testing.assert_allclose(out.median, out.level(0.5))
    assert np.isnan(out.quantiles[3]).all() and np.isnan(out.median[3]).all()


def test_batching_does_not_change_results(tiny: tuple[str, str]) -> None:
    _, path = tiny
    data = contexts()
    small = load_forecaster(f"chronos:{path}", device="cpu", batch_size=1).forecast(data, 4, [0.1, 0.5, 0.9])
    large = load_forecaster(f"chronos:{path}", device="cpu", batch_size=64).forecast(data, 4, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(small.quantiles, large.quantiles, rtol=1e-4, atol=1e-4)


def test_levels_outside_trained_range(tiny_chronos_bolt: str) -> None:
    spec = f"chronos:{tiny_chronos_bolt}"
    with pytest.raises(ModelError, match=r"outside.*\[0\.1, 0\.9\].*tail_quantiles"):
        load_forecaster(spec, device="cpu").forecast(contexts(), 4, [0.05, 0.5, 0.95])
    clamp = load_forecaster(spec, device="cpu", tail_quantiles="clamp").forecast(
        contexts(), 4, [0.05, 0.1, 0.9, 0.95]
    )
    np.testing.assert_allclose(clamp.level(0.05), clamp.level(0.1))
    normal = load_forecaster(spec, device="cpu", tail_quantiles="normal").forecast(
        contexts(), 4, [0.05, 0.1, 0.5]
    )
    rows = [0, 1, 2, 4]
    assert np.all(normal.level(0.05)[rows] <= normal.level(0.1)[rows])


def test_chronos2_covers_wide_levels(tiny_chronos2: str) -> None:
    out = load_forecaster(f"chronos:{tiny_chronos2}", device="cpu").forecast(
        contexts(), 4, [0.01, 0.05, 0.95, 0.99]
    )
    assert np.isfinite(out.quantiles[[0, 1, 2, 4]]).all()


def test_long_horizon_needs_opt_in(tiny_chronos_bolt: str) -> None:
    spec = f"chronos:{tiny_chronos_bolt}"
    with pytest.raises(ModelError, match=r"prediction length 64.*allow_long_horizon"):
        load_forecaster(spec, device="cpu").forecast(contexts()[:2], 65, [0.5])
    with pytest.warns(UserWarning, match="prediction length"):
        out = load_forecaster(spec, device="cpu", allow_long_horizon=True).forecast(
            contexts()[:2], 70, [0.1, 0.5, 0.9]
        )
    assert out.quantiles.shape == (2, 70, 3)


def test_map_levels_interpolates_between_trained_levels() -> None:
    values = np.array([[[1.0, 2.0, 4.0]]])  # levels 0.1, 0.5, 0.9
    out = map_levels(values, [0.1, 0.5, 0.9], np.array([0.1, 0.3, 0.7, 0.9]), tails="error", spec="x")
    np.testing.assert_allclose(out[0, 0], [1.0, 1.5, 3.0, 4.0])


def test_tiny_builder_is_deterministic(tmp_path: Path) -> None:
    a = build_tiny_chronos("bolt", tmp_path / "a")
    b = build_tiny_chronos("bolt", tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").stat().st_size < 1_000_000


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("/nonexistent/chronos-bolt-small", "no model directory"),
        ("./missing-model", "no model directory"),
    ],
)
def test_bad_path_is_a_model_error(name: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        load_forecaster(f"chronos:{name}", device="cpu")


def test_not_a_chronos_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(ModelError, match="not a loadable Chronos checkpoint"):
        load_forecaster(f"chronos:{tmp_path}", device="cpu")


def test_hub_id_without_hub_access_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty HF cache and an endpoint nothing listens on: no retries, one clear message.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelError, match=r"no Hugging Face hub access.*chronos:/models/chronos-bolt-small"):
        load_forecaster("chronos:amazon/chronos-bolt-small", device="cpu")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"device": "gpu"}, "device"),
        ({"dtype": "int8"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"tail_quantiles": "extend"}, "tail_quantiles"),
        ({"context": 5}, "unknown params"),
    ],
)
def test_params_validated_without_loading(params: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        validate_params("chronos:amazon/chronos-bolt-small", params)


def test_unknown_spec_lists_prefixes() -> None:
    with pytest.raises(UnknownModelSpec, match=r"chronos:<name>.*statsforecast:<name>.*zscore.*mad"):
        load_forecaster("prophet:default")


def test_import_openanomaly_stays_light() -> None:
    code = (
        "import sys, openanomaly, openanomaly.models.registry;"
        "heavy = [m for m in ('torch', 'chronos', 'statsforecast', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
