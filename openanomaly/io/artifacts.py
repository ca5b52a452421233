"""Where fitted models (and the scheduler's progress) live, so any worker can load them.

A fitted model is a blob of bytes stored under a versioned key::

    <prefix>/<pipeline>/<series-key>/<fit-time-ms, 13 digits zero-padded>

The fit time is zero-padded so that the lexicographic order S3 lists keys in is also
time order: "latest" is the last key of a listing, with no object metadata reads.
``series-key`` is :func:`series_key` of the label set (a short stable hash), or
``GLOBAL_SERIES_KEY`` for a model fitted across all series (neuralforecast NHITS).

Writes are atomic: a reader sees the whole old object or the whole new one, never half
a model. An S3 ``PUT`` is atomic by itself; :class:`FileStore` writes a temporary file
in the same directory and ``os.replace``-s it into place (an atomic rename on POSIX).

Three stores:

* :class:`S3Store` (boto3): cluster mode; S3, MinIO or any S3-compatible endpoint.
  Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` environment variables, shared config files, instance roles).
* :class:`FileStore`: one machine, or a shared filesystem mounted on every node.
* :class:`NoOpStore`: nothing is kept; fitted models cannot be used (saving raises),
  for zero-shot pipelines only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from openanomaly.core.config import ArtifactSettings
from openanomaly.errors import ArtifactError, ArtifactNotFound

__all__ = [
    "GLOBAL_SERIES_KEY",
    "ArtifactRef",
    "ArtifactStore",
    "FileStore",
    "MemoryStore",
    "NoOpStore",
    "S3Store",
    "latest_model",
    "list_models",
    "load_json",
    "model_key",
    "open_store",
    "parse_model_key",
    "save_json",
    "save_model",
    "series_key",
]

GLOBAL_SERIES_KEY = "_global"
_TIME_DIGITS = 13  # milliseconds since the epoch fit in 13 digits until the year 2286


class ArtifactRef(NamedTuple):
    """One stored model version: its key (relative to the store prefix) and what it is."""

    key: str
    pipeline: str
    series_key: str
    fit_time_ms: int


@runtime_checkable
class ArtifactStore(Protocol):
    """Bytes under string keys, with prefix listing. Keys are relative to the store prefix."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (replace any old value).

        Raises:
            ArtifactError: the write failed.
        """
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises:
            ArtifactError: the key does not exist or the read failed.
        """
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when it does not exist)."""
        ...


def series_key(labels: Mapping[str, str]) -> str:
    """A short stable id for a label set: 16 hex chars of the SHA-1 of the sorted labels.

    Stable across processes and Python versions (unlike ``hash``), so the worker that
    scores a series finds the model another worker fitted.
    """
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]


def _check_part(value: str, what: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ArtifactError(f"{what} {value!r} must be non-empty and contain no '/'")
    return value


def model_key(pipeline: str, series: str, fit_time_ms: int) -> str:
    """``<pipeline>/<series>/<fit time, 13 digits>`` (relative to the store prefix)."""
    if fit_time_ms < 0 or fit_time_ms >= 10**_TIME_DIGITS:
        raise ArtifactError(f"fit time {fit_time_ms} ms is out of range")
    pipeline, series = _check_part(pipeline, "pipeline"), _check_part(series, "series key")
    return f"{pipeline}/{series}/{fit_time_ms:0{_TIME_DIGITS}d}"


def parse_model_key(key: str) -> ArtifactRef:
    """The inverse of :func:`model_key`.

    Raises:
        ArtifactError: the key does not have the model-key shape.
    """
    parts = key.split("/")
    if len(parts) != 3 or not parts[2].isdigit() or len(parts[2]) != _TIME_DIGITS:
        raise ArtifactError("not a model key (<pipeline>/<series>/<13-digit fit time>)", key=key)
    return ArtifactRef(key, parts[0], parts[1], int(parts[2]))


def save_model(
    store: ArtifactStore, *, pipeline: str, series: str, fit_time_ms: int, data: bytes
) -> ArtifactRef:
    """Store one fitted model version and return its reference."""
    key = model_key(pipeline, series, fit_time_ms)
    store.put(key, data)
    return ArtifactRef(key, pipeline, series, fit_time_ms)


def list_models(store: ArtifactStore, *, pipeline: str, series: str | None = None) -> list[ArtifactRef]:
    """Every stored version for a pipeline (or one of its series), oldest first."""
    prefix = f"{_check_part(pipeline, 'pipeline')}/"
    if series is not None:
        prefix += f"{_check_part(series, 'series key')}/"
    refs = []
    for key in store.list(prefix):
        try:
            refs.append(parse_model_key(key))
        except ArtifactError:
            continue  # other objects under the pipeline prefix are not models
    return sorted(refs, key=lambda ref: (ref.series_key, ref.fit_time_ms))


def latest_model(
    store: ArtifactStore, *, pipeline: str, series: str, at_or_before_ms: int | None = None
) -> ArtifactRef | None:
    """The newest version fitted at or before ``at_or_before_ms`` (default: newest), or None.

    Pass the start of the window being scored as ``at_or_before_ms`` so a backfill never
    uses a model fitted on data from after the points it scores.
    """
    refs = list_models(store, pipeline=pipeline, series=series)
    if at_or_before_ms is not None:
        refs = [ref for ref in refs if ref.fit_time_ms <= at_or_before_ms]
    return refs[-1] if refs else None


def save_json(store: ArtifactStore, key: str, value: Any) -> None:
    """Store a JSON document (small state records such as the scheduler's progress)."""
    store.put(key, json.dumps(value, sort_keys=True).encode())


def load_json(store: ArtifactStore, key: str) -> Any | None:
    """The JSON document under ``key``, or None when there is none."""
    if key not in store.list(key):
        return None
    try:
        return json.loads(store.get(key))
    except json.JSONDecodeError as error:
        raise ArtifactError(f"not valid JSON: {error}", key=key) from error


class NoOpStore:
    """Keeps nothing. Saving raises, so a fitted pipeline without a store fails loudly."""

    def put(self, key: str, data: bytes) -> None:
        raise ArtifactError("artifacts.kind is 'none'; configure 'file' or 's3' to store models", key=key)

    def get(self, key: str) -> bytes:
        raise ArtifactError("artifacts.kind is 'none'; nothing is stored", key=key)

    def list(self, prefix: str) -> list[str]:
        return []

    def delete(self, key: str) -> None:
        return None


class MemoryStore:
    """A dict in one process: for tests and single-process runs. Lost on restart."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._data[key] = bytes(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            if key not in self._data:
                raise ArtifactNotFound("no such artifact", key=key)
            return self._data[key]

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(key for key in self._data if key.startswith(prefix))

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)


def replace_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over ``path``.

    Beside it, so ``os.replace`` is a rename within one filesystem: a reader sees the old
    file or the new one, never half of one. ``mode``: the new file's permission bits (a
    temporary file starts as 0600).

    Raises:
        OSError: the write failed; nothing was replaced.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class FileStore:
    """Artifacts as files under ``root/<prefix>/``; atomic via temp file + ``os.replace``."""

    def __init__(self, root: str | os.PathLike[str], *, prefix: str = "") -> None:
        self.root = Path(root) / prefix if prefix else Path(root)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ArtifactError("keys must be relative paths without '..'", key=key)
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(path, data)
        except OSError as error:
            raise ArtifactError(f"write to {path} failed: {error}", key=key) from error

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as error:
            raise ArtifactNotFound(f"no such artifact ({path})", key=key) from error
        except OSError as error:
            raise ArtifactError(f"read of {path} failed: {error}", key=key) from error

    def list(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        # Walk only the directory the prefix points into, not the whole tree.
        directory = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not directory.is_dir():
            return []
        keys = []
        for path in directory.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """Artifacts in an S3 bucket (AWS, MinIO, any S3-compatible endpoint) via boto3.

    Credentials are not part of the settings: boto3 reads them from the standard AWS
    chain (environment variables, ``~/.aws``, instance/pod roles), so they stay out of
    pipeline YAML. On Ray, pass them to workers through the runtime env.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
        page_size: int = 1000,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError as error:  # pragma: no cover - boto3 is a core dependency
            raise ArtifactError("S3 artifacts need boto3: pip install boto3") from error
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.page_size = page_size
        self._client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}),
        )

    @property
    def client(self) -> Any:
        """The boto3 client, for stores that need requests this class does not wrap (conditional writes)."""
        return self._client

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)
        except (BotoCoreError, ClientError) as error:
            raise ArtifactError(f"write to {self._where()} failed: {error}", key=key) from error

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            return response["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ArtifactNotFound(f"not in {self._where()}", key=key) from error
            raise ArtifactError(f"read from {self._where()} failed: {error}", key=key) from error
        except BotoCoreError as error:
            raise ArtifactError(f"read from {self._where()} failed: {error}", key=key) from error

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=self._full(prefix),
                PaginationConfig={"PageSize": self.page_size},
            ):
                keys.extend(item["Key"][strip:] for item in page.get("Contents", ()))
        except (BotoCoreError, ClientError) as error:
            raise ArtifactError(f"listing {self._where()} failed: {error}", key=prefix) from error
        return sorted(keys)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except (BotoCoreError, ClientError) as error:
            raise ArtifactError(f"delete in {self._where()} failed: {error}", key=key) from error


def open_store(settings: ArtifactSettings) -> ArtifactStore:
    """The store the settings describe (``kind``: none | file | s3)."""
    if settings.kind == "s3":
        if not settings.bucket:
            raise ArtifactError("artifacts.kind 's3' needs artifacts.bucket")
        return S3Store(
            bucket=settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
        )
    if settings.kind == "file":
        if not settings.path:
            raise ArtifactError("artifacts.kind 'file' needs artifacts.path")
        return FileStore(settings.path, prefix=settings.prefix)
    return NoOpStore()
