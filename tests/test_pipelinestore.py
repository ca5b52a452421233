"""The writable pipeline stores: one contract suite over the YAML file and S3 (moto server).

Real files, real processes racing on one file, a real S3 endpoint; nothing is mocked.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import yaml

from openanomaly.configstore import YamlConfigStore
from openanomaly.errors import ConfigError, PipelineNotFound, PreconditionFailed
from openanomaly.pipelinestore import PipelineStore, YamlPipelineStore, definition_etag

FILE = """\
settings:
  tsdb:
    url: ${VM_URL:-http://127.0.0.1:8428}
    bearer_token: ${VM_TOKEN}
pipelines:
  - name: mem
    query: ${MEM_QUERY}
    model: mad
"""


def pipeline(name: str, query: str = "up", **extra: object) -> dict[str, object]:
    return {"name": name, "query": query, "model": "mad", **extra}


def yaml_file(directory: Path) -> Path:
    path = directory / "pipelines.yaml"
    path.write_text(FILE)
    return path


@pytest.fixture(params=["yaml"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PipelineStore:
    """A store that holds one pipeline, ``mem``, as the YAML file above would."""
    return YamlPipelineStore(yaml_file(tmp_path))


# -- the contract, both adapters -------------------------------------------------------------


def test_create_list_get_replace_delete_versions(store: PipelineStore) -> None:
    created, was_created = store.put("cpu", pipeline("cpu"), if_none_match=True, author="admin")
    assert was_created and created.name == "cpu" and created.etag == definition_etag(pipeline("cpu"))
    assert [p.name for p in store.list()] == ["cpu", "mem"]
    assert store.get("cpu") == created

    replaced, was_created = store.put(
        "cpu", pipeline("cpu", "rate(x[5m])"), if_match=created.etag, author="admin"
    )
    assert not was_created and replaced.etag != created.etag
    assert store.get("cpu").definition["query"] == "rate(x[5m])"

    with pytest.raises(PreconditionFailed, match=rf"'cpu'.*{created.etag}.*{replaced.etag}") as stale:
        store.put("cpu", pipeline("cpu", "lost"), if_match=created.etag, author="bob")
    assert (stale.value.expected, stale.value.current) == (created.etag, replaced.etag)
    with pytest.raises(PreconditionFailed, match="already exists"):
        store.put("cpu", pipeline("cpu", "lost"), if_none_match=True, author="bob")
    with pytest.raises(PreconditionFailed, match="does not exist"):
        store.put("disk", pipeline("disk"), if_match=created.etag, author="bob")
    with pytest.raises(PreconditionFailed):
        store.delete("cpu", if_match=created.etag, author="bob")
    assert store.get("cpu") == replaced
    assert [p.name for p in store.list()] == ["cpu", "mem"]

    assert store.delete("cpu", if_match=replaced.etag, author="admin") == replaced
    with pytest.raises(PipelineNotFound, match="'cpu': not found in"):
        store.get("cpu")
    with pytest.raises(PipelineNotFound):
        store.delete("cpu", author="admin")
    history = store.versions("cpu")
    assert history[0].definition is None and history[0].etag is None  # deleted
    assert history[1].definition == replaced.definition and history[1].etag == replaced.etag
    with pytest.raises(PipelineNotFound):
        store.versions("never")

    assert store.delete("mem", author="admin").name == "mem"  # no etag: unconditional
    assert store.list() == []


def test_put_refuses_a_definition_named_otherwise(store: PipelineStore) -> None:
    with pytest.raises(ValueError, match="'cpu': definition's name is 'other'"):
        store.put("cpu", pipeline("other"), author="admin")
    assert [p.name for p in store.list()] == ["mem"]


def test_put_keeps_the_definition_as_written(store: PipelineStore) -> None:
    definition = pipeline("cpu", "${CPU_QUERY}", schedule={"infer_every": "5m", "context": "2h"})
    store.put("cpu", definition, author="admin")
    definition["query"] = "edited by the caller afterwards"
    assert store.get("cpu").definition == pipeline(
        "cpu", "${CPU_QUERY}", schedule={"infer_every": "5m", "context": "2h"}
    )
    assert store.get("mem").definition == pipeline("mem", "${MEM_QUERY}")


# -- the YAML file -----------------------------------------------------------------------------


def test_yaml_rewrite_keeps_var_text_and_writes_a_backup(tmp_path: Path) -> None:
    path = yaml_file(tmp_path)
    store = YamlPipelineStore(path)
    store.put("cpu", pipeline("cpu", "${CPU_QUERY:-up}"), author="admin")

    tree = yaml.safe_load(path.read_text())
    assert tree["settings"]["tsdb"] == {
        "url": "${VM_URL:-http://127.0.0.1:8428}",
        "bearer_token": "${VM_TOKEN}",
    }
    assert tree["pipelines"] == [pipeline("mem", "${MEM_QUERY}"), pipeline("cpu", "${CPU_QUERY:-up}")]
    assert store.backup_path.read_text() == FILE
    config = YamlConfigStore(path, env={"VM_TOKEN": "t", "MEM_QUERY": "process_resident_memory_bytes"}).load()
    assert [p.query for p in config.pipelines] == ["process_resident_memory_bytes", "up"]
    assert config.settings.tsdb.bearer_token.get_secret_value() == "t"

    versions = store.versions("mem")
    assert [v.version for v in versions] == ["current"]  # the backup holds it unchanged
    store.put("mem", pipeline("mem", "other"), author="admin")
    assert [(v.version, v.definition["query"]) for v in store.versions("mem")] == [
        ("current", "other"),
        ("backup", "${MEM_QUERY}"),
    ]


def test_yaml_missing_file_lists_nothing_and_refuses_a_put(tmp_path: Path) -> None:
    store = YamlPipelineStore(tmp_path / "absent.yaml")
    assert store.list() == []
    with pytest.raises(ConfigError, match=r"absent\.yaml: file not found"):
        store.put("cpu", pipeline("cpu"), author="admin")
    assert not (tmp_path / "absent.yaml").exists()


def _race(path: str, tag: str, rounds: int) -> None:
    """One process's edits: its own pipelines, and compare-and-set increments of a shared one."""
    store = YamlPipelineStore(path)
    for i in range(rounds):
        store.put(f"{tag}-{i}", pipeline(f"{tag}-{i}"), author=tag)
        while True:
            shared = store.get("shared")
            count = int(shared.definition["query"].split()[-1]) + 1
            try:
                store.put("shared", pipeline("shared", f"count {count}"), if_match=shared.etag, author=tag)
                break
            except PreconditionFailed:
                continue


def test_yaml_two_processes_racing_never_lose_an_update(tmp_path: Path) -> None:
    path = yaml_file(tmp_path)
    store = YamlPipelineStore(path)
    store.put("shared", pipeline("shared", "count 0"), author="test")
    rounds = 15
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_race, args=(str(path), tag, rounds)) for tag in ("a", "b")]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        assert "mem" in {p.name for p in store.list()}  # a reader never sees a torn file
    assert [worker.exitcode for worker in workers] == [0, 0]

    names = {p.name for p in store.list()}
    assert names == {"mem", "shared"} | {f"{tag}-{i}" for tag in "ab" for i in range(rounds)}
    assert store.get("shared").definition["query"] == f"count {2 * rounds}"
    assert yaml.safe_load(store.backup_path.read_text())["settings"]["tsdb"]["bearer_token"] == "${VM_TOKEN}"
