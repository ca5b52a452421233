"""The writable pipeline stores: one contract suite over the YAML file and S3 (moto server).

Real files, real processes racing on one file, a real S3 endpoint; nothing is mocked.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from openanomaly.configstore.files import ConfigStore, ConfigValidationError, YamlConfigStore
from openanomaly.configstore.pipelines import PipelineStore, YamlPipelineStore, definition_etag
from openanomaly.configstore.s3 import S3ConfigStore, S3PipelineStore
from openanomaly.configstore.stores import open_stores
from openanomaly.core.config import ArtifactSettings
from openanomaly.errors import (
    ArtifactError,
    ConfigError,
    InvalidPipelineName,
    PipelineNotFound,
    PreconditionFailed,
)
from tests.fixtures.s3 import S3Endpoint

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


@pytest.fixture
def bucket(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> ArtifactSettings:
    """A fresh bucket on the moto server, and the AWS credentials boto3 reads from the environment."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    name = s3.create_bucket(f"pipelines-{uuid.uuid4().hex[:12]}")
    return ArtifactSettings(kind="s3", bucket=name, endpoint_url=s3.endpoint_url, region=s3.region)


@pytest.fixture(params=["yaml", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PipelineStore:
    """A store that holds one pipeline, ``mem``, as the YAML file above would."""
    if request.param == "yaml":
        return YamlPipelineStore(yaml_file(tmp_path))
    s3_store = S3PipelineStore(request.getfixturevalue("bucket"))
    s3_store.put("mem", pipeline("mem", "${MEM_QUERY}"), author="test")
    return s3_store


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


@pytest.mark.parametrize("name", ["..", ".", "...", "a/b", "", "a" * 201, "%2e%2e"])
def test_both_stores_refuse_the_same_names(store: PipelineStore, name: str) -> None:
    """Issue 25: ``PUT /v1/pipelines/%2e%2e`` made a pipeline ``..`` in the file and a 500 in S3."""
    before = store.list()
    with pytest.raises(InvalidPipelineName) as refused:
        store.put(name, pipeline(name), author="admin")
    assert refused.value.field == "name"
    for call in (store.get, store.versions, lambda n: store.delete(n, author="admin")):
        with pytest.raises(InvalidPipelineName):
            call(name)
    assert store.list() == before
    assert store.put("a.b-c_1", pipeline("a.b-c_1"), author="admin")[1]  # dots inside a name are fine


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
    rounds = 10
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


# -- S3 ------------------------------------------------------------------------------------------


def _concurrently(*calls) -> list[object]:
    """Run the calls in threads released together; each result, or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_s3_two_editors_with_the_same_etag_exactly_one_wins(bucket: ArtifactSettings) -> None:
    first, second = S3PipelineStore(bucket), S3PipelineStore(bucket)
    stored, _ = first.put("cpu", pipeline("cpu", "v0"), author="admin")
    for round_ in range(1, 6):
        etag = stored.etag
        results = _concurrently(
            lambda n=round_, etag=etag: first.put(
                "cpu", pipeline("cpu", f"a{n}"), if_match=etag, author="alice"
            ),
            lambda n=round_, etag=etag: second.put(
                "cpu", pipeline("cpu", f"b{n}"), if_match=etag, author="bob"
            ),
        )
        wins = [result for result in results if isinstance(result, tuple)]
        assert len(wins) == 1, results
        assert any(isinstance(result, PreconditionFailed) for result in results)
        stored = wins[0][0]
        assert first.get("cpu") == second.get("cpu") == stored
    assert len(first.versions("cpu")) == 6  # the create and one win per round


def test_s3_unconditional_edits_at_once_are_all_kept_as_versions(bucket: ArtifactSettings) -> None:
    first, second = S3PipelineStore(bucket), S3PipelineStore(bucket)

    def edits(store: S3PipelineStore, tag: str) -> int:
        for i in range(4):
            store.put("cpu", pipeline("cpu", f"{tag}{i}"), author=tag)
        return 4

    assert _concurrently(lambda: edits(first, "a"), lambda: edits(second, "b")) == [4, 4]
    history = first.versions("cpu")
    assert len(history) == 8
    assert history[0].definition == first.get("cpu").definition  # the newest version is the live one
    assert sorted(v.definition["query"] for v in history) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    assert [v.version for v in history] == sorted((v.version for v in history), reverse=True)


def test_s3_keeps_every_version_and_a_tombstone(s3: S3Endpoint, bucket: ArtifactSettings) -> None:
    store = S3PipelineStore(bucket)
    store.put("cpu", pipeline("cpu", "one"), author="alice")
    store.put("cpu", pipeline("cpu", "two"), author="bob")
    store.delete("cpu", author="carol")
    store.put("cpu", pipeline("cpu", "three"), author="dave")

    history = store.versions("cpu")
    assert [(v.version, v.action, v.author) for v in history] == [
        ("000004", "create", "dave"),
        ("000003", "delete", "carol"),
        ("000002", "update", "bob"),
        ("000001", "create", "alice"),
    ]
    assert [v.definition["query"] if v.definition else None for v in history] == ["three", None, "two", "one"]
    assert history[1].etag is None and history[0].etag == store.get("cpu").etag
    assert all(v.time_ms and v.time_ms > 1_700_000_000_000 for v in history)

    keys = [item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket.bucket)["Contents"]]
    assert sorted(keys) == [
        "openanomaly/pipelines/current/cpu.yaml",
        *(f"openanomaly/pipelines/versions/cpu/00000{n}.yaml" for n in range(1, 5)),
    ]
    assert yaml.safe_load(
        s3.client()
        .get_object(Bucket=bucket.bucket, Key="openanomaly/pipelines/current/cpu.yaml")["Body"]
        .read()
    ) == pipeline("cpu", "three")


def test_s3_a_bucket_that_does_not_exist_is_named(bucket: ArtifactSettings) -> None:
    missing = bucket.model_copy(update={"bucket": "no-such-bucket-here"})
    store = S3PipelineStore(missing)
    with pytest.raises(
        ArtifactError, match=r"bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1"
    ):
        store.list()
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket-here' does not exist"):
        store.get("cpu")  # an outage, not "not found"
    with pytest.raises(ArtifactError, match="bucket 'no-such-bucket-here' does not exist"):
        store.put("cpu", pipeline("cpu"), author="admin")


S3_FILE = """\
settings:
  tsdb:
    url: http://127.0.0.1:8428
    bearer_token: ${VM_TOKEN}
  artifacts: {kind: s3, bucket: BUCKET, endpoint_url: ENDPOINT, region: us-east-1}
  config_store: {kind: s3}
pipelines:
  - name: mem
    query: process_resident_memory_bytes
    model: mad
"""


def s3_file(directory: Path, bucket: ArtifactSettings, pipelines: str = "") -> Path:
    path = directory / "pipelines.yaml"
    text = S3_FILE.replace("BUCKET", str(bucket.bucket)).replace("ENDPOINT", str(bucket.endpoint_url))
    path.write_text(text + pipelines)
    return path


def test_open_stores_picks_the_store_the_settings_name(tmp_path: Path, bucket: ArtifactSettings) -> None:
    config_store, pipelines = open_stores(yaml_file(tmp_path))
    assert isinstance(config_store, YamlConfigStore) and isinstance(pipelines, YamlPipelineStore)

    config_store, pipelines = open_stores(s3_file(tmp_path, bucket), env={"VM_TOKEN": "t"})
    assert isinstance(config_store, S3ConfigStore) and isinstance(pipelines, S3PipelineStore)
    assert isinstance(config_store, ConfigStore) and isinstance(pipelines, PipelineStore)
    assert pipelines.settings_source() == f"s3://{bucket.bucket}/openanomaly/pipelines/"

    no_bucket = tmp_path / "no-bucket.yaml"
    no_bucket.write_text("settings:\n  tsdb: {url: http://127.0.0.1:8428}\n  config_store: {kind: s3}\n")
    with pytest.raises(ConfigError, match=r"config_store\.kind 's3' keeps pipelines in the artifacts bucket"):
        open_stores(no_bucket)


def test_s3_seeds_the_file_pipelines_once(tmp_path: Path, bucket: ArtifactSettings) -> None:
    path = s3_file(tmp_path, bucket)
    _, store = open_stores(path, env={"VM_TOKEN": "t"})
    assert [p.name for p in store.list()] == ["mem"]
    assert [(v.action, v.author) for v in store.versions("mem")] == [("create", f"seed:{path}")]

    store.put("mem", pipeline("mem", "edited"), author="admin")
    store.put("cpu", pipeline("cpu"), author="admin")
    store.delete("cpu", author="admin")
    path.write_text(path.read_text() + "  - name: cpu\n    query: up\n    model: mad\n")
    path.write_text(path.read_text() + "  - name: disk\n    query: disk\n    model: mad\n")
    _, store = open_stores(path, env={"VM_TOKEN": "t"})  # a restart
    assert {p.name: p.definition["query"] for p in store.list()} == {"mem": "edited", "disk": "disk"}


def test_s3_config_store_sees_an_edit_within_a_poll(tmp_path: Path, bucket: ArtifactSettings) -> None:
    config_store, _ = open_stores(s3_file(tmp_path, bucket), env={"VM_TOKEN": "t"})
    config = config_store.load()
    assert [p.name for p in config.pipelines] == ["mem"]
    assert config.settings.tsdb.bearer_token.get_secret_value() == "t"
    assert not config_store.changed()

    other_process = S3PipelineStore(bucket)
    other_process.put("cpu", pipeline("cpu", "rate(cpu[5m])", step="30s"), author="admin")
    assert config_store.changed()
    config = config_store.load()
    assert [(p.name, p.query) for p in config.pipelines] == [
        ("cpu", "rate(cpu[5m])"),
        ("mem", "process_resident_memory_bytes"),
    ]
    assert not config_store.changed()

    other_process.put("cpu", pipeline("cpu", "up", step="-1m"), author="admin")  # the store only stores
    assert config_store.changed()
    with pytest.raises(ConfigValidationError, match=r"pipeline 'cpu': field 'pipelines\[0\].step'"):
        config_store.load()
    assert config_store.changed()  # the bad edit was not taken


def test_s3_config_store_reports_a_missing_bucket_as_a_config_error(
    tmp_path: Path, bucket: ArtifactSettings
) -> None:
    missing = bucket.model_copy(update={"bucket": "no-such-bucket-here"})
    config_store, _ = open_stores(s3_file(tmp_path, missing), env={"VM_TOKEN": "t"})  # starts, logs
    assert config_store.changed()
    with pytest.raises(
        ConfigError, match=r"cannot read the pipelines: .*bucket 'no-such-bucket-here' does not exist"
    ):
        config_store.load()


def test_s3_unreachable_is_an_outage_not_not_found(bucket: ArtifactSettings) -> None:
    closed = bucket.model_copy(update={"endpoint_url": f"http://127.0.0.1:{_closed_port()}"})
    store = S3PipelineStore(closed)
    with pytest.raises(ArtifactError, match=r"reading from s3://.* failed: Could not connect"):
        store.get("cpu")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_scheduler_runs_a_pipeline_created_in_s3_at_its_next_tick(
    tmp_path: Path, bucket: ArtifactSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openanomaly.io.artifacts import MemoryStore
    from openanomaly.runtime.scheduler import Scheduler

    monkeypatch.setenv("VM_TOKEN", "t")
    windows: list[str] = []

    def run_window(settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        windows.append(pipeline.name)
        return None

    scheduler = Scheduler(str(s3_file(tmp_path, bucket)), store=MemoryStore(), run_window=run_window)
    assert [p.name for p in scheduler.config.pipelines] == ["mem"]
    S3PipelineStore(bucket).put("cpu", pipeline("cpu", schedule={"infer_every": "1m"}), author="admin")
    try:
        scheduler.tick(wait=True)
        assert [p.name for p in scheduler.config.pipelines] == ["cpu", "mem"]
        assert sorted(windows) == ["cpu", "mem"]
    finally:
        scheduler.stop(wait=True)


def test_s3_an_invalid_file_seeds_nothing_and_says_why(tmp_path: Path, bucket: ArtifactSettings) -> None:
    path = s3_file(tmp_path, bucket, "  - name: cpu\n    query: up\n    model: mad\n    step: 0s\n")
    config_store, store = open_stores(path, env={"VM_TOKEN": "t"})  # starts, logs
    assert store.list() == []
    with pytest.raises(ConfigValidationError, match=rf"{path}: pipeline 'cpu': field 'pipelines\[1\]\.step'"):
        config_store.load()

    path.write_text(path.read_text().replace("step: 0s", "step: 1m"))
    assert config_store.changed()
    assert [p.name for p in config_store.load().pipelines] == ["cpu", "mem"]
    assert not config_store.changed()
    path.write_text(path.read_text().replace("${VM_TOKEN}", "${OTHER_TOKEN:-x}"))  # settings edited
    assert config_store.changed()
    assert config_store.load().settings.tsdb.bearer_token.get_secret_value() == "x"


def test_a_store_switch_while_running_is_refused_until_a_restart(
    tmp_path: Path, bucket: ArtifactSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: yaml -> s3 on a running service left the scheduler on the file, silently."""
    from openanomaly.configstore.admin import PipelineAdmin

    monkeypatch.setenv("VM_TOKEN", "t")
    path = s3_file(tmp_path, bucket)
    path.write_text(path.read_text().replace("config_store: {kind: s3}", "config_store: {kind: yaml}"))
    config_store, _ = open_stores(path)
    admin = PipelineAdmin(path)
    assert [p.name for p in config_store.load().pipelines] == ["mem"]

    path.write_text(path.read_text().replace("config_store: {kind: yaml}", "config_store: {kind: s3}"))
    assert config_store.changed()
    for refused in (config_store.load, lambda: admin.put("cpu", pipeline("cpu"), who="admin")):
        with pytest.raises(ConfigError, match="changed from 'yaml' to 's3' while running: restart") as error:
            refused()
        assert error.value.field == "settings.config_store.kind"
    assert "cpu" not in path.read_text()

    restarted, store = open_stores(path)  # what a restart does: the S3 store, seeded from the file
    assert isinstance(store, S3PipelineStore) and [p.name for p in restarted.load().pipelines] == ["mem"]
    path.write_text(path.read_text().replace("config_store: {kind: s3}", "config_store: {kind: yaml}"))
    with pytest.raises(ConfigError, match="changed from 's3' to 'yaml'"):
        restarted.load()
