import os
import textwrap

import pytest

from openanomaly.configstore.files import (
    ConfigStore,
    ConfigValidationError,
    YamlConfigStore,
    expand_env,
    load_config,
)
from openanomaly.errors import ConfigError

GOOD = """\
settings:
  tsdb:
    url: http://localhost:8428/
    bearer_token: ${TOKEN}
pipelines:
  - name: cpu
    query: rate(cpu_seconds_total[5m])
    step: 1m
    model: {spec: mad, alias: robust}
    schedule: {infer_every: 5m, context: 2h}
    scoring: {quantiles: [0.01, 0.99], direction: above, min_deviation: 0.5}
    output: {extra_labels: {team: sre}}
  - name: mem
    query: process_resident_memory_bytes
    model: statsforecast:AutoETS
"""


def write(tmp_path, text, name="pipelines.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_loads_a_valid_file_and_expands_env(tmp_path):
    store = YamlConfigStore(write(tmp_path, GOOD), env={"TOKEN": "s3cret"})
    assert isinstance(store, ConfigStore)
    config = store.load()
    assert config.settings.tsdb.url == "http://localhost:8428"
    assert config.settings.tsdb.bearer_token.get_secret_value() == "s3cret"
    cpu = config.pipeline("cpu")
    assert cpu.model.label == "robust"
    assert cpu.scoring.direction == "above"
    assert cpu.context_points == 120
    assert config.pipeline("mem").model.spec == "statsforecast:AutoETS"


def test_env_expansion_forms():
    env = {"A": "x"}
    assert expand_env("${A}-${B:-dflt}-$${A}", env=env) == "x-dflt-${A}"
    assert expand_env('label_replace(up, "a", "$1", "b", "(.*)")', env={}) == (
        'label_replace(up, "a", "$1", "b", "(.*)")'
    )


def test_unset_env_var_names_variable_and_field(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"'TOKEN' is not set") as info:
        YamlConfigStore(path, env={}).load()
    assert info.value.source == str(path)
    assert info.value.field == "settings.tsdb.bearer_token"


def test_every_problem_names_file_pipeline_and_field(tmp_path):
    path = write(
        tmp_path,
        """\
        settings: {tsdb: {url: "http://vm:8428"}}
        pipelines:
          - {name: cpu, query: up, model: zscore, schedule: {context: 5x}}
          - {name: mem, query: up, model: "nope:x"}
          - {query: up, model: mad, modle: 3}
          - {name: cpu, query: up, model: mad}
          - {name: disk, model: mad}
        """,
    )
    with pytest.raises(ConfigValidationError) as info:
        YamlConfigStore(path).load()
    found = {(e.pipeline, e.field) for e in info.value.errors}
    assert found == {
        ("cpu", "pipelines[3].name"),
        ("cpu", "pipelines[0].schedule.context"),
        ("mem", "pipelines[1].model.spec"),
        (None, "pipelines[2].name"),
        (None, "pipelines[2].modle"),
        ("disk", "pipelines[4].query"),
    }
    text = str(info.value)
    assert text.count(str(path)) == 6
    assert "invalid duration '5x'" in text
    assert "unknown model" in text
    assert "duplicate pipeline name 'cpu' (first used by pipelines[0])" in text
    assert "pipelines[4].query': Field required" in text


def test_duplicate_names_alone(tmp_path):
    path = write(
        tmp_path,
        """\
        settings: {tsdb: {url: "http://vm:8428"}}
        pipelines: [{name: a, query: up, model: mad}, {name: a, query: up, model: zscore}]
        """,
    )
    with pytest.raises(ConfigError, match=r"pipeline 'a': field 'pipelines\[1\].name': duplicate"):
        YamlConfigStore(path).load()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("settings: {tsdb: {url: x}\npipelines: []\n", r"malformed YAML: line 2, column 1"),
        (
            "settings:\n  tsdb: {url: 'http://a'}\n  tsdb: {url: 'http://b'}\n",
            r"duplicate key 'tsdb' \(line 3",
        ),
        ("", "the file is empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("pipelines: []\n", "field 'settings': Field required"),
        ("settings: {tsdb: {url: 'ftp://x'}}\n", r"field 'settings.tsdb.url': .*http\(s\) URL"),
    ],
)
def test_file_level_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        YamlConfigStore(path).load()
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        YamlConfigStore(tmp_path / "nope.yaml").load()


def test_changed_detects_edits_not_touches(tmp_path):
    path = write(tmp_path, GOOD)
    store = YamlConfigStore(path, env={"TOKEN": "t"})
    assert store.changed()  # never loaded
    store.load()
    assert not store.changed()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert not store.changed()  # touched only
    path.write_text(GOOD.replace("step: 1m", "step: 5m"))
    assert store.changed()
    assert store.load().pipeline("cpu").step_ms == 300_000
    assert not store.changed()
    path.unlink()
    assert store.changed()


def test_failed_load_keeps_changed_true(tmp_path):
    path = write(tmp_path, GOOD)
    store = YamlConfigStore(path, env={"TOKEN": "t"})
    store.load()
    path.write_text("pipelines: [")
    assert store.changed()
    with pytest.raises(ConfigError):
        store.load()
    assert store.changed()


def test_load_config_from_string():
    config = load_config("settings: {tsdb: {url: 'http://a:1'}}\n", env={})
    assert config.pipelines == []
