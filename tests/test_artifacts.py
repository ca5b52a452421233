"""ArtifactStore: versioned keys, latest lookup, atomic writes; S3 against a real moto server."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from openanomaly.core.config import ArtifactSettings
from openanomaly.errors import ArtifactError
from openanomaly.io.artifacts import (
    GLOBAL_SERIES_KEY,
    FileStore,
    MemoryStore,
    NoOpStore,
    S3Store,
    latest_model,
    list_models,
    load_json,
    model_key,
    open_store,
    parse_model_key,
    save_json,
    save_model,
    series_key,
)


def test_series_key_is_stable_and_order_independent() -> None:
    a = series_key({"__name__": "cpu", "instance": "a", "job": "node"})
    b = series_key({"job": "node", "instance": "a", "__name__": "cpu"})
    assert a == b
    assert len(a) == 16
    assert a != series_key({"__name__": "cpu", "instance": "b", "job": "node"})


def test_model_key_round_trip_and_sorting() -> None:
    key = model_key("cpu", "abc", 1_700_000_000_000)
    assert key == "cpu/abc/1700000000000"
    assert parse_model_key(key).fit_time_ms == 1_700_000_000_000
    # zero padding keeps lexicographic order == time order
    assert model_key("p", "s", 999) < model_key("p", "s", 1000)
    with pytest.raises(ArtifactError, match="pipeline"):
        model_key("a/b", "s", 1)
    with pytest.raises(ArtifactError, match="not a model key"):
        parse_model_key("p/s/12")


def _exercise(store) -> None:
    assert latest_model(store, pipeline="p", series="s1") is None
    for t in (3000, 1000, 2000):
        save_model(store, pipeline="p", series="s1", fit_time_ms=t, data=f"m{t}".encode())
    save_model(store, pipeline="p", series=GLOBAL_SERIES_KEY, fit_time_ms=500, data=b"g")
    save_model(store, pipeline="other", series="s1", fit_time_ms=9000, data=b"x")
    ref = latest_model(store, pipeline="p", series="s1")
    assert ref is not None and ref.fit_time_ms == 3000
    assert store.get(ref.key) == b"m3000"
    before = latest_model(store, pipeline="p", series="s1", at_or_before_ms=2500)
    assert before is not None and before.fit_time_ms == 2000
    assert [r.fit_time_ms for r in list_models(store, pipeline="p", series="s1")] == [1000, 2000, 3000]
    assert {r.series_key for r in list_models(store, pipeline="p")} == {"s1", GLOBAL_SERIES_KEY}
    # overwrite replaces whole value
    store.put(ref.key, b"new")
    assert store.get(ref.key) == b"new"
    # JSON state documents
    assert load_json(store, "_state/p.json") is None
    save_json(store, "_state/p.json", {"last_end_ms": 60_000})
    assert load_json(store, "_state/p.json") == {"last_end_ms": 60_000}
    store.delete("_state/p.json")
    assert load_json(store, "_state/p.json") is None
    with pytest.raises(ArtifactError, match="p/s1/nope"):
        store.get("p/s1/nope")


def test_memory_store() -> None:
    _exercise(MemoryStore())


def test_file_store(tmp_path) -> None:
    _exercise(FileStore(tmp_path, prefix="oa"))
    assert (tmp_path / "oa" / "p" / "s1" / "0000000003000").read_bytes() == b"new"


def test_file_store_writes_are_atomic(tmp_path) -> None:
    """A reader polling during repeated overwrites only ever sees a complete version."""
    store = FileStore(tmp_path)
    big_a, big_b = b"a" * 2_000_000, b"b" * 2_000_000
    store.put("p/s/0000000000001", big_a)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(store.get("p/s/0000000000001")[:1] + bytes([len(store.get("p/s/0000000000001")) % 251]))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(30):
        store.put("p/s/0000000000001", big_b if i % 2 else big_a)
    stop.set()
    reader.join()
    whole = bytes([2_000_000 % 251])
    assert seen <= {b"a" + whole, b"b" + whole}
    assert not [p for p in tmp_path.rglob("*.tmp")], "temp files must not be left behind"
    # temp files are not listed as keys
    assert store.list("p/") == ["p/s/0000000000001"]


def test_noop_store_refuses_to_save() -> None:
    store = NoOpStore()
    assert store.list("p/") == []
    assert latest_model(store, pipeline="p", series="s") is None
    with pytest.raises(ArtifactError, match="kind is 'none'"):
        save_model(store, pipeline="p", series="s", fit_time_ms=1, data=b"x")


@pytest.mark.integration
def test_s3_store_against_moto_server(s3, monkeypatch) -> None:
    bucket = s3.create_bucket(f"oa-{uuid.uuid4().hex[:8]}")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(
        ArtifactSettings(kind="s3", bucket=bucket, prefix="models", endpoint_url=s3.endpoint_url)
    )
    assert isinstance(store, S3Store)
    _exercise(store)
    keys = [item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "models/p/s1/0000000003000" in keys
    assert all(key.startswith("models/") for key in keys)


@pytest.mark.integration
def test_s3_store_paginates_listing(s3, monkeypatch) -> None:
    bucket = s3.create_bucket(f"oa-{uuid.uuid4().hex[:8]}")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(bucket=bucket, endpoint_url=s3.endpoint_url, page_size=10)
    with ThreadPoolExecutor(4) as pool:  # several pages of 10 keys
        list(pool.map(lambda t: store.put(model_key("p", "s", t), b""), range(35)))
    assert len(store.list("p/")) == 35
    assert latest_model(store, pipeline="p", series="s").fit_time_ms == 34


@pytest.mark.integration
def test_s3_store_missing_bucket_names_it(s3, monkeypatch) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(bucket="no-such-bucket", endpoint_url=s3.endpoint_url)
    with pytest.raises(ArtifactError, match="no-such-bucket"):
        store.put("p/s/0000000000001", b"x")
