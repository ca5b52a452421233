"""The registry's adapter facts: one record per adapter, asked instead of guessing from spec prefixes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openanomaly.errors import ModelError, UnknownModelSpec
from openanomaly.models.registry import ADAPTERS, Adapter, model_info, validate_params

ROOT = Path(__file__).resolve().parent.parent


def _specs() -> list[str]:
    """One spec per adapter (Chronos takes any directory or hub id)."""
    return [
        prefix if adapter.names == () else f"{prefix}:{(adapter.names or ('amazon/chronos-bolt-small',))[0]}"
        for prefix, adapter in ADAPTERS.items()
    ]


def test_every_entry_is_a_frozen_record_with_a_param_check() -> None:
    for prefix, adapter in ADAPTERS.items():
        assert isinstance(adapter, Adapter), prefix
        assert adapter.check_params, f"{prefix}: check_params is required"
        with pytest.raises(AttributeError):
            adapter.check_params = "x"  # type: ignore[misc]


@pytest.mark.parametrize("spec", _specs())
def test_every_adapter_rejects_a_misspelt_param(spec: str) -> None:
    with pytest.raises(ModelError, match=r"unknown params \['windw'\]; known: ") as info:
        validate_params(spec, {"windw": 3})
    assert info.value.spec == spec


@pytest.mark.parametrize("spec", _specs())
def test_every_adapter_accepts_no_params(spec: str) -> None:
    params = {"season_length": 24} if spec.endswith(("MSTL", "SeasonalNaive")) else {}
    validate_params(spec, params)


@pytest.mark.parametrize(
    ("spec", "params", "fit", "gpu"),
    [
        ("default", {}, "zero_shot", False),
        ("mad", {}, "zero_shot", False),
        ("zscore", {}, "zero_shot", False),
        ("chronos:amazon/chronos-bolt-small", {}, "zero_shot", True),
        ("chronos:amazon/chronos-bolt-small", {"device": "cpu"}, "zero_shot", False),
        ("statsforecast:AutoETS", {}, "per_series", False),
        ("statsforecast:MSTL", {"season_length": [24, 168]}, "per_series", False),
        ("statsforecast:SeasonalNaive", {"season_length": 24}, "zero_shot", False),
        ("neuralforecast:NHITS", {}, "global", False),
        ("neuralforecast:NHITS", {"accelerator": "gpu"}, "global", True),
    ],
)
def test_fit_kind_and_gpu_use(spec: str, params: dict, fit: str, gpu: bool) -> None:
    info = model_info(spec, params)
    assert (info.fit, info.gpu) == (fit, gpu)
    assert info.device_param == spec.startswith("chronos:")


@pytest.mark.parametrize(
    ("spec", "params", "levels"),
    [
        ("chronos:amazon/chronos-bolt-small", {}, (0.1, 0.9)),
        ("chronos:autogluon/chronos-bolt-base", {}, (0.1, 0.9)),
        ("chronos:amazon/chronos-2", {}, (0.01, 0.99)),
        ("chronos:amazon/chronos-bolt-small", {"tail_quantiles": "clamp"}, None),
        ("chronos:amazon/chronos-t5-small", {}, None),  # sample-based: any level
        ("chronos:/nowhere/model", {}, None),  # not here: the load checks
        ("statsforecast:AutoETS", {}, None),
        ("default", {}, None),
    ],
)
def test_producible_levels(spec: str, params: dict, levels: tuple | None) -> None:
    assert model_info(spec, params).levels == levels


def test_levels_of_a_local_checkpoint_come_from_its_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "chronos_pipeline_class": "ChronosBoltPipeline",
                "chronos_config": {"quantiles": [0.2, 0.5, 0.8]},
            }
        )
    )
    assert model_info(f"chronos:{tmp_path}").levels == (0.2, 0.8)


def test_levels_of_the_tiny_checkpoints(tiny_chronos_bolt: str, tiny_chronos2: str) -> None:
    assert model_info(f"chronos:{tiny_chronos_bolt}").levels == (0.1, 0.9)
    assert model_info(f"chronos:{tiny_chronos2}").levels == (0.01, 0.99)


def test_max_horizon(tiny_chronos_bolt: str, tiny_chronos2: str) -> None:
    assert model_info("chronos:amazon/chronos-bolt-small").max_horizon == 64
    assert model_info("chronos:amazon/chronos-bolt-small", {"allow_long_horizon": True}).max_horizon is None
    assert model_info(f"chronos:{tiny_chronos_bolt}").max_horizon == 64
    assert model_info(f"chronos:{tiny_chronos2}").max_horizon == 64  # 4 output patches of 16
    assert model_info("statsforecast:AutoETS").max_horizon is None


def test_min_context_follows_the_season() -> None:
    assert model_info("statsforecast:SeasonalNaive", {"season_length": 24}).min_context == 25
    assert model_info("statsforecast:MSTL", {"season_length": [24, 168]}).min_context == 337
    assert model_info("default").min_context == 1


def test_unknown_spec() -> None:
    with pytest.raises(UnknownModelSpec, match="known: chronos:<name>"):
        model_info("prophet")


def test_no_module_guesses_adapter_facts_from_the_spec() -> None:
    """Fit kind, GPU use and params come from model_info, not from parsing the spec."""
    guess = re.compile(r'spec\.(split|partition|startswith)\(|prefix == "')
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "openanomaly").rglob("*.py"))
        if path.name != "registry.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if guess.search(line)
    ]
    assert offenders == []
