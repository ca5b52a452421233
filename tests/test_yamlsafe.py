"""The one YAML parser's limits: refused before a Python object is built, with the limit named."""

from __future__ import annotations

import time

import pytest

from openanomaly.configstore.yamlsafe import DEFINITION_LIMITS, FILE_LIMITS, load_json, load_yaml
from openanomaly.errors import ConfigError


def alias_bomb(levels: int, *, fold: int = 9) -> str:
    """``levels`` anchors, each a list of ``fold`` aliases of the one before: fold**levels values."""
    lines = ["a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fold)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, "name: bomb", "query: up", f"labels: *a{levels}"])


@pytest.mark.parametrize("levels", [7, 9])
def test_an_alias_bomb_is_refused_before_it_is_built(levels: int) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="values once its aliases are expanded"):
        load_yaml(alias_bomb(levels), limits=DEFINITION_LIMITS)
    with pytest.raises(ConfigError, match="values once its aliases are expanded"):
        load_yaml(alias_bomb(levels) + "\n" * 10, limits=FILE_LIMITS)
    assert time.perf_counter() - start < 0.5


def test_anchors_within_the_limits_still_work() -> None:
    value = load_yaml("base: &b {step: 1m}\ncpu:\n  <<: *b\n  query: up\n", limits=DEFINITION_LIMITS)
    assert value["cpu"] == {"step": "1m", "query": "up"}


def test_too_many_aliases_are_refused() -> None:
    text = "a: &a x\nb: [" + ", ".join(["*a"] * (DEFINITION_LIMITS.max_aliases + 1)) + "]"
    with pytest.raises(ConfigError, match=f"more than {DEFINITION_LIMITS.max_aliases} aliases"):
        load_yaml(text, limits=DEFINITION_LIMITS)


@pytest.mark.parametrize("depth", [40, 20_000])
def test_deep_nesting_is_refused_in_yaml_and_json(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    for load in (load_yaml, load_json):
        with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
            load(f'{{"query": {nested}}}', limits=DEFINITION_LIMITS)


def test_a_large_definition_is_refused_by_size_saying_a_pipeline_is_small() -> None:
    text = "query: " + "x" * DEFINITION_LIMITS.max_bytes
    for load in (load_yaml, load_json):
        with pytest.raises(ConfigError, match=r"at most 65536 bytes.*a pipeline is small"):
            load(text, limits=DEFINITION_LIMITS)


@pytest.mark.parametrize(
    "value", ["!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2024-01-01", "2024-01-01", "!custom x"]
)
def test_only_json_kinds_of_values(value: str) -> None:
    with pytest.raises(ConfigError, match=r"may not use the tag .* \(only strings"):
        load_yaml(f"name: x\nquery: {value}\n", limits=DEFINITION_LIMITS)


def test_duplicate_keys_and_malformed_yaml_keep_their_messages() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match="malformed YAML: line 2"):
        load_yaml("a: [1\n")
    with pytest.raises(ConfigError, match="malformed JSON"):
        load_json("{")
