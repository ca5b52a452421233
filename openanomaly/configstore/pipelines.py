"""Where pipelines are stored and edited: the writable port behind the pipelines API.

``PipelineStore`` keeps pipeline definitions *as written* (``${VAR}`` not expanded) and
only stores: the caller validates (``openanomaly.configstore.files.config_from_tree``) before a
``put``. Every stored pipeline has an ``etag`` (16 hex chars of the SHA-256 of its
canonical JSON), equal iff the definitions are equal, so an editor can say "replace it
only if it is still what I read" (``if_match``) and lose with
:class:`~openanomaly.errors.PreconditionFailed` instead of overwriting someone else.

Two adapters, chosen by ``settings.config_store.kind`` (:func:`open_stores`):

* :class:`YamlPipelineStore` (``yaml``, the default): the pipelines file itself,
  rewritten whole under a lock, the previous text kept as ``<file>.bak``.
* ``S3PipelineStore`` (``s3``): one object per pipeline in the artifacts bucket, written
  with S3 conditional requests, every version kept.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import yaml

from openanomaly.configstore.files import (
    ConfigStore,
    FileVersion,
    YamlConfigStore,
    check_store_kind,
    config_from_tree,
    expand_env,
    parse_config,
    read_text,
)
from openanomaly.configstore.yamlsafe import DEFINITION_LIMITS
from openanomaly.core.config import PIPELINE_NAME, PIPELINE_NAME_MAX, ArtifactSettings, Config
from openanomaly.errors import (
    ArtifactError,
    ConfigError,
    InvalidPipelineName,
    PipelineNotFound,
    PreconditionFailed,
)
from openanomaly.io.artifacts import S3Store, open_store, replace_atomically

__all__ = [
    "PipelineStore",
    "PipelineVersion",
    "S3ConfigStore",
    "S3PipelineStore",
    "StoredPipeline",
    "YamlPipelineStore",
    "checked_name",
    "definition_etag",
    "open_stores",
    "store_kind",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredPipeline:
    """One pipeline as stored: its mapping as written (``${VAR}`` kept, ``name`` included)."""

    name: str
    definition: dict[str, Any]
    etag: str


@dataclass(frozen=True)
class PipelineVersion:
    """One entry of a pipeline's history, newest first in :meth:`PipelineStore.versions`.

    ``version`` is ``"000001"``, ``"000002"``… in S3 (increasing, gaps possible), and
    ``"current"`` / ``"backup"`` for a YAML file, which keeps only the previous text.
    ``action``, ``author`` and ``time_ms`` are None where the store does not know them;
    ``etag`` and ``definition`` are None for a delete.
    """

    version: str
    action: Literal["create", "update", "delete"] | None
    author: str | None
    time_ms: int | None
    etag: str | None
    definition: dict[str, Any] | None


@runtime_checkable
class PipelineStore(Protocol):
    """Pipeline definitions that can be listed, read, replaced and deleted, conditionally."""

    def list(self) -> list[StoredPipeline]:
        """Every stored pipeline, sorted by name."""
        ...

    def get(self, name: str) -> StoredPipeline:
        """Raises: PipelineNotFound."""
        ...

    def put(
        self,
        name: str,
        definition: dict[str, Any],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        author: str,
    ) -> tuple[StoredPipeline, bool]:
        """Create or replace ``name``; returns what is stored and whether it was created.

        Raises:
            PreconditionFailed: ``if_match`` is not the current etag (or there is none),
                or ``if_none_match`` and the pipeline exists.
            ValueError: ``definition["name"]`` is not ``name``.
        """
        ...

    def delete(self, name: str, *, if_match: str | None = None, author: str) -> StoredPipeline:
        """Remove ``name`` and return what was deleted.

        Raises:
            PipelineNotFound: there is no such pipeline.
            PreconditionFailed: ``if_match`` is not its current etag.
        """
        ...

    def versions(self, name: str) -> list[PipelineVersion]:
        """The pipeline's history, newest first.

        Raises:
            PipelineNotFound: it never existed (as far as the store remembers).
        """
        ...

    def settings_source(self) -> str:
        """Where the store keeps pipelines (a path or URL), for messages."""
        ...


def definition_etag(definition: dict[str, Any]) -> str:
    """16 hex chars of the SHA-256 of ``definition`` as canonical JSON (sorted keys, no spaces).

    Content-based, so two stores (or a store and a client) agree on it without storing it.
    """
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _stored(definition: dict[str, Any]) -> StoredPipeline:
    return StoredPipeline(str(definition["name"]), definition, definition_etag(definition))


def checked_name(name: str, *, source: str) -> str:
    """``name`` if a pipeline can have it (:data:`~openanomaly.core.config.PIPELINE_NAME`), for every store.

    Each store calls it before a name becomes a lookup, a list entry or an S3 key, so
    ``..`` (or ``%2e%2e`` decoded) is refused alike everywhere instead of being stored
    in one store and failing in the other.

    Raises:
        InvalidPipelineName: any other name.
    """
    if not isinstance(name, str) or len(name) > PIPELINE_NAME_MAX or not re.fullmatch(PIPELINE_NAME, name):
        raise InvalidPipelineName(str(name), source=source)
    return name


def _check_put(name: str, definition: dict[str, Any]) -> dict[str, Any]:
    """A private copy of ``definition`` (later edits by the caller do not leak in)."""
    if definition.get("name") != name:
        raise ValueError(f"pipeline {name!r}: definition's name is {definition.get('name')!r}, not {name!r}")
    return copy.deepcopy(definition)


def _check_precondition(
    name: str, current: StoredPipeline | None, *, if_match: str | None, if_none_match: bool
) -> None:
    current_etag = current.etag if current is not None else None
    if if_none_match and current is not None:
        raise PreconditionFailed(name, expected=None, current=current_etag)
    if if_match is not None and if_match != current_etag:
        raise PreconditionFailed(name, expected=if_match, current=current_etag)


class YamlPipelineStore:
    """The pipelines of one YAML file (the file the scheduler reads), edited in place.

    An edit takes an exclusive ``flock`` on ``<file>.lock`` (so the Serve ingress and a
    CLI on the same machine take turns), reads the file *without* expanding ``${VAR}``
    (settings and the other pipelines keep their text), changes that one pipeline, and
    writes a temporary file in the same directory that replaces the file atomically
    (``os.replace``): a reader sees the old file or the new one, never half of one. The
    previous text is kept as ``<file>.bak``. Comments and formatting are not kept: the
    file is written back from the parsed YAML.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"YamlPipelineStore({str(self.path)!r})"

    def settings_source(self) -> str:
        return str(self.path)

    # -- reading ------------------------------------------------------------------------

    def _read(self, path: Path) -> tuple[bytes, dict[str, Any]] | None:
        """The file's bytes and parsed tree, or None when it does not exist."""
        if not path.exists():
            return None
        data, text = read_text(path)
        return data, parse_config(text, source=str(path))

    def _pipelines(self, tree: dict[str, Any], source: Path) -> list[Any]:
        pipelines = tree.get("pipelines")
        if pipelines is None:
            return []
        if not isinstance(pipelines, list):
            raise ConfigError(
                f"expected a list, got {type(pipelines).__name__}", source=str(source), field="pipelines"
            )
        return pipelines

    def _find(self, tree: dict[str, Any], source: Path, name: str) -> tuple[int, StoredPipeline] | None:
        for index, item in enumerate(self._pipelines(tree, source)):
            if isinstance(item, dict) and item.get("name") == name:
                return index, _stored(item)
        return None

    def list(self) -> list[StoredPipeline]:
        """Every pipeline with a string name, sorted (an absent file has none)."""
        read = self._read(self.path)
        if read is None:
            return []
        items = self._pipelines(read[1], self.path)
        stored = [
            _stored(item) for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)
        ]
        return sorted(stored, key=lambda pipeline: pipeline.name)

    def get(self, name: str) -> StoredPipeline:
        checked_name(name, source=str(self.path))
        read = self._read(self.path)
        found = self._find(read[1], self.path, name) if read is not None else None
        if found is None:
            raise PipelineNotFound(name, source=str(self.path))
        return found[1]

    def versions(self, name: str) -> list[PipelineVersion]:
        """``current`` (the file now) and ``backup`` (``.bak``) when the backup's differs.

        A pipeline deleted by the last edit shows as a ``current`` without definition.
        """
        checked_name(name, source=str(self.path))
        entries = []
        for label, path in (("current", self.path), ("backup", self.backup_path)):
            read = self._read(path)
            found = self._find(read[1], path, name) if read is not None else None
            definition = found[1].definition if found else None
            if entries and entries[0].definition == definition:
                continue  # the backup holds this pipeline as it is now
            entries.append(
                PipelineVersion(
                    version=label,
                    action=None,
                    author=None,
                    time_ms=_mtime_ms(path) if read is not None else None,
                    etag=found[1].etag if found else None,
                    definition=definition,
                )
            )
        if all(entry.definition is None for entry in entries):
            raise PipelineNotFound(name, source=str(self.path))
        return entries

    # -- writing ------------------------------------------------------------------------

    def put(
        self,
        name: str,
        definition: dict[str, Any],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        author: str,
    ) -> tuple[StoredPipeline, bool]:
        """Replace the pipeline in place, or append it; ``author`` is not recorded in a file."""
        definition = _check_put(checked_name(name, source=str(self.path)), definition)
        with self._edit() as (tree, write):
            found = self._find(tree, self.path, name)
            _check_precondition(
                name, found[1] if found else None, if_match=if_match, if_none_match=if_none_match
            )
            pipelines = self._pipelines(tree, self.path)
            if found:
                pipelines[found[0]] = definition
            else:
                pipelines.append(definition)
            tree["pipelines"] = pipelines
            write(tree)
        return _stored(definition), found is None

    def delete(self, name: str, *, if_match: str | None = None, author: str) -> StoredPipeline:
        checked_name(name, source=str(self.path))
        with self._edit() as (tree, write):
            found = self._find(tree, self.path, name)
            if found is None:
                raise PipelineNotFound(name, source=str(self.path))
            _check_precondition(name, found[1], if_match=if_match, if_none_match=False)
            del self._pipelines(tree, self.path)[found[0]]
            write(tree)
        return found[1]

    @contextlib.contextmanager
    def _edit(self) -> Iterator[tuple[dict[str, Any], Callable[[dict[str, Any]], None]]]:
        """Under the lock: the file's tree, and a function that writes the edited tree back."""
        try:
            lock = open(self._lock_path, "a")  # noqa: SIM115 - held for the whole edit
        except OSError as error:
            raise ConfigError(
                f"cannot write the pipelines file ({error.strerror}); where it is read-only, as a "
                "Kubernetes ConfigMap is, keep the pipelines in S3: settings.config_store.kind: s3",
                source=str(self._lock_path),
            ) from None
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            read = self._read(self.path)
            if read is None:
                raise ConfigError("file not found", source=str(self.path))
            previous, tree = read

            def write(edited: dict[str, Any]) -> None:
                text = yaml.safe_dump(edited, sort_keys=False, allow_unicode=True, default_flow_style=False)
                _replace_atomically(self.backup_path, previous, like=self.path)
                _replace_atomically(self.path, text.encode(), like=self.path)

            yield tree, write


def _mtime_ms(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns // 1_000_000
    except OSError:
        return None


def _replace_atomically(path: Path, data: bytes, *, like: Path) -> None:
    """:func:`~openanomaly.io.artifacts.replace_atomically` with ``like``'s permission bits."""
    try:
        replace_atomically(path, data, mode=stat.S_IMODE(like.stat().st_mode))
    except OSError as error:
        raise ConfigError(f"cannot write: {error.strerror}", source=str(path)) from None


# -- S3 ------------------------------------------------------------------------------------------

_VERSION_DIGITS = 6
_ATTEMPTS = 8  # compare-and-set rounds before an unconditional edit gives up under contention


@dataclass(frozen=True)
class _Object:
    """One S3 object of the store: what it holds and the S3 ETag to make the next write conditional."""

    body: bytes
    s3_etag: str
    version: int
    action: Literal["create", "update", "delete"] | None
    author: str | None
    time_ms: int | None


class S3PipelineStore:
    """Pipelines as objects in the artifacts bucket, edited with S3 conditional writes.

    Layout under ``<artifacts.prefix>/pipelines/``::

        current/<name>.yaml             the live definition (YAML), one object per pipeline
        versions/<name>/000001.yaml     every version ever committed; a delete is an empty
        versions/<name>/000002.yaml     object with action 'delete' (a tombstone)

    Each object carries metadata ``version``, ``action``, ``author`` and ``time`` (ms).

    An edit reads ``current/<name>.yaml``, checks the caller's precondition, then

    1. claims the next version number by writing ``versions/<name>/<n>.yaml`` with
       ``If-None-Match: *`` (two editors cannot get the same number), and
    2. commits by writing ``current/<name>.yaml`` with ``If-Match`` on the S3 ETag it read
       (``If-None-Match: *`` to create; ``DeleteObject`` with ``If-Match`` to delete).

    S3 itself refuses the second of two writes based on the same read, so a lost race
    never overwrites: the loser withdraws its claim and re-reads, and an ``if_match``
    caller then gets :class:`~openanomaly.errors.PreconditionFailed`. Bucket versioning is
    not needed. Failures of S3 itself (unreachable, no such bucket, denied) are
    :class:`~openanomaly.errors.ArtifactError`, never "not found".
    """

    def __init__(self, settings: ArtifactSettings) -> None:
        store = open_store(settings)
        if not isinstance(store, S3Store):
            raise ConfigError(f"the S3 pipeline store needs artifacts.kind 's3', not {settings.kind!r}")
        self._client = store.client
        self.bucket = store.bucket
        self.endpoint_url = store.endpoint_url
        self.base = f"{store.prefix}/pipelines" if store.prefix else "pipelines"

    def __repr__(self) -> str:
        return f"S3PipelineStore({self.settings_source()!r})"

    def settings_source(self) -> str:
        return f"s3://{self.bucket}/{self.base}/"

    def _current_key(self, name: str) -> str:
        return f"{self.base}/current/{checked_name(name, source=self.settings_source())}.yaml"

    def _version_key(self, name: str, number: int) -> str:
        name = checked_name(name, source=self.settings_source())
        return f"{self.base}/versions/{name}/{number:0{_VERSION_DIGITS}d}.yaml"

    # -- S3 requests ---------------------------------------------------------------------------

    def _failure(self, error: Exception, doing: str, key: str) -> ArtifactError:
        """The error for a failed request: S3 itself failed, so never "not found"."""
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        if code == "NoSuchBucket":
            return ArtifactError(
                f"bucket {self.bucket!r} does not exist{where}: create it (pipelines live under "
                f"{self.settings_source()})",
                key=key,
            )
        return ArtifactError(f"{doing} s3://{self.bucket}{where} failed: {error}", key=key)

    def _read(self, key: str) -> _Object | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._failure(error, "reading from", key) from error
        except BotoCoreError as error:
            raise self._failure(error, "reading from", key) from error
        meta = response.get("Metadata", {})
        return _Object(
            body=body,
            s3_etag=response["ETag"],
            version=int(meta.get("version", "0")),
            action=meta.get("action"),
            author=urllib.parse.unquote(meta["author"]) if "author" in meta else None,
            time_ms=int(meta["time"]) if "time" in meta else None,
        )

    def _write(self, key: str, body: bytes, metadata: dict[str, str], **condition: str) -> bool:
        """Put ``body`` if ``condition`` (``IfMatch`` / ``IfNoneMatch``) holds; False when it does not."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata, **condition)
        except ClientError as error:
            if _lost_race(error):
                return False
            raise self._failure(error, "writing to", key) from error
        except BotoCoreError as error:
            raise self._failure(error, "writing to", key) from error
        return True

    def _remove(self, key: str, **condition: str) -> bool:
        """Delete ``key`` if ``condition`` holds; False when it does not."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self.bucket, Key=key, **condition)
        except ClientError as error:
            if _lost_race(error):
                return False
            raise self._failure(error, "deleting in", key) from error
        except BotoCoreError as error:
            raise self._failure(error, "deleting in", key) from error
        return True

    def _list(self, prefix: str) -> list[tuple[str, str]]:
        """``(key, S3 ETag)`` of every object under ``prefix``, sorted by key."""
        from botocore.exceptions import BotoCoreError, ClientError

        found = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found += [(item["Key"], item["ETag"]) for item in page.get("Contents", ())]
        except (BotoCoreError, ClientError) as error:
            raise self._failure(error, "listing", prefix) from error
        return sorted(found)

    def _version_numbers(self, name: str) -> list[int]:
        prefix = f"{self.base}/versions/{name}/"
        stems = (key[len(prefix) :].removesuffix(".yaml") for key, _ in self._list(prefix))
        return sorted(int(stem) for stem in stems if stem.isdigit())

    def _definition(self, obj: _Object, key: str) -> dict[str, Any]:
        return parse_config(obj.body, source=f"s3://{self.bucket}/{key}", limits=DEFINITION_LIMITS)

    # -- the port ------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A digest of every live pipeline's key and S3 ETag: one LIST, cheap enough to poll each tick."""
        listing = self._list(f"{self.base}/current/")
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    def _current(self, name: str) -> tuple[_Object, StoredPipeline] | None:
        key = self._current_key(name)
        obj = self._read(key)
        return (obj, _stored(self._definition(obj, key))) if obj is not None else None

    def list(self) -> list[StoredPipeline]:
        prefix = f"{self.base}/current/"
        names = [key[len(prefix) :].removesuffix(".yaml") for key, _ in self._list(prefix)]
        current = (self._current(name) for name in names)
        return sorted((found[1] for found in current if found is not None), key=lambda p: p.name)

    def get(self, name: str) -> StoredPipeline:
        found = self._current(name)
        if found is None:
            raise PipelineNotFound(name, source=self.settings_source())
        return found[1]

    def put(
        self,
        name: str,
        definition: dict[str, Any],
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        author: str,
    ) -> tuple[StoredPipeline, bool]:
        definition = _check_put(checked_name(name, source=self.settings_source()), definition)
        body = yaml.safe_dump(definition, sort_keys=False, allow_unicode=True).encode()
        before = self._commit(name, body, if_match=if_match, if_none_match=if_none_match, author=author)
        return _stored(definition), before is None

    def delete(self, name: str, *, if_match: str | None = None, author: str) -> StoredPipeline:
        before = self._commit(name, None, if_match=if_match, if_none_match=False, author=author)
        assert before is not None  # _commit raised PipelineNotFound otherwise
        return before

    def _commit(
        self, name: str, body: bytes | None, *, if_match: str | None, if_none_match: bool, author: str
    ) -> StoredPipeline | None:
        """Claim a version, then move ``current`` to it (``body`` None: delete); returns what was there."""
        key = self._current_key(name)
        for _ in range(_ATTEMPTS):
            found = self._current(name)
            if body is None and found is None:
                raise PipelineNotFound(name, source=self.settings_source())
            _check_precondition(
                name, found[1] if found else None, if_match=if_match, if_none_match=if_none_match
            )
            numbers = self._version_numbers(name)
            number = (numbers[-1] if numbers else 0) + 1
            action = "delete" if body is None else "update" if found else "create"
            metadata = {
                "version": str(number),
                "action": action,
                "author": urllib.parse.quote(author),
                "time": str(int(time.time() * 1000)),
            }
            claim = self._version_key(name, number)
            if not self._write(claim, body or b"", metadata, IfNoneMatch="*"):
                continue  # another editor took this number: read again
            if body is None:
                committed = self._remove(key, IfMatch=found[0].s3_etag)
            elif found:
                committed = self._write(key, body, metadata, IfMatch=found[0].s3_etag)
            else:
                committed = self._write(key, body, metadata, IfNoneMatch="*")
            if committed:
                return found[1] if found else None
            self._remove(claim)  # the claim is ours and never became current
        raise ArtifactError(
            f"pipeline {name!r}: still being edited by others after {_ATTEMPTS} attempts; try again", key=key
        )

    def versions(self, name: str) -> list[PipelineVersion]:
        """Every committed version, newest first (a claim that never became current is left out)."""
        found = self._current(name)
        entries = []
        for number in reversed(self._version_numbers(name)):
            key = self._version_key(name, number)
            obj = self._read(key)
            if obj is None:
                continue  # a claim withdrawn since the listing
            if not entries and found is not None and number > found[0].version:
                continue  # claimed by an edit that has not committed (or never will)
            if not entries and found is None and obj.action != "delete":
                continue  # the same, for a pipeline deleted now
            definition = self._definition(obj, key) if obj.action != "delete" else None
            entries.append(
                PipelineVersion(
                    version=f"{number:0{_VERSION_DIGITS}d}",
                    action=obj.action,
                    author=obj.author,
                    time_ms=obj.time_ms,
                    etag=definition_etag(definition) if definition is not None else None,
                    definition=definition,
                )
            )
        if not entries:
            raise PipelineNotFound(name, source=self.settings_source())
        return entries

    def seed(self, definitions: list[dict[str, Any]], *, author: str) -> list[str]:
        """Create each pipeline that has never existed here (no version at all); returns those created.

        A pipeline deleted over the API has a tombstone, so a restart does not bring it back.
        """
        created = []
        for definition in definitions:
            name = str(definition.get("name"))
            if self._version_numbers(name) or self._current(name) is not None:
                continue
            try:
                self.put(name, definition, if_none_match=True, author=author)
            except PreconditionFailed:
                continue  # another process seeded it first
            created.append(name)
        return created


def _lost_race(error: Exception) -> bool:
    """True when S3 refused a conditional request because the object changed (or vanished)."""
    code = getattr(error, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")


# -- the scheduler's view, and choosing the stores ------------------------------------------------


class S3ConfigStore:
    """A :class:`~openanomaly.configstore.files.ConfigStore`: settings from the YAML file, pipelines from S3.

    ``load()`` validates the assembled tree with exactly the rules and messages of a
    file (:func:`~openanomaly.configstore.files.config_from_tree`). ``changed()`` costs one
    stat of the file and one LIST of ``current/`` (:meth:`S3PipelineStore.fingerprint`),
    so the scheduler sees an edit made through any process within one tick.

    The file's own ``pipelines:`` are a seed (:meth:`seed`): each is created in S3 only
    if that name has no version at all. A file that does not validate seeds nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        pipelines: S3PipelineStore,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.pipelines = pipelines
        self._env = env
        self._file = FileVersion(self.path)
        self._fingerprint: str | None = None
        self._seeded = False

    def __repr__(self) -> str:
        return f"S3ConfigStore({str(self.path)!r}, {self.pipelines!r})"

    def _source(self) -> str:
        return f"{self.path} + {self.pipelines.settings_source()}"

    def seed(self) -> list[str]:
        """Create the file's pipelines that S3 has never held; returns their names.

        Raises:
            ConfigError: the file is missing or invalid.
            ArtifactError: S3 failed.
        """
        text, _ = self._file.read()
        tree = parse_config(text, source=str(self.path))
        config_from_tree(tree, source=str(self.path), env=self._env)
        created = self.pipelines.seed(list(tree.get("pipelines") or []), author=f"seed:{self.path}")
        if created:
            log.info("seeded %s from %s: %s", self.pipelines.settings_source(), self.path, ", ".join(created))
        self._seeded = True
        return created

    def load(self) -> Config:
        """The file's settings with the pipelines stored in S3, validated as one file would be.

        Raises:
            ConfigError: the file is missing or invalid, S3 cannot be read, or a stored
                pipeline is invalid (every problem listed).
        """
        text, version = self._file.read()
        tree = parse_config(text, source=str(self.path))
        try:
            if not self._seeded:
                self.seed()
            fingerprint = self.pipelines.fingerprint()  # before the reads: an edit in between shows next tick
            stored = self.pipelines.list()
        except ArtifactError as error:
            raise ConfigError(
                f"cannot read the pipelines: {error}", source=self.pipelines.settings_source()
            ) from None
        tree = {**tree, "pipelines": [pipeline.definition for pipeline in stored]}
        config = config_from_tree(tree, source=self._source(), env=self._env)
        check_store_kind(config.settings.config_store.kind, opened="s3", source=str(self.path))
        self._file.remember(version)
        self._fingerprint = fingerprint
        return config

    def changed(self) -> bool:
        """True when the file or any stored pipeline changed since the last :meth:`load` (or S3 is down)."""
        if self._fingerprint is None or self._file.changed():
            return True
        try:
            return self.pipelines.fingerprint() != self._fingerprint
        except ArtifactError:
            return True  # load() will report it


def open_stores(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> tuple[ConfigStore, PipelineStore]:
    """The configuration store and the pipeline store that ``settings.config_store`` in ``path`` picks.

    ``yaml`` (the default): the file serves both. ``s3``: :class:`S3ConfigStore` and
    :class:`S3PipelineStore` in the artifacts bucket, the file's pipelines seeded (an S3
    outage here is only logged; the first ``load`` seeds then). A file that is missing or
    cannot be parsed gets the YAML stores, whose ``load`` reports the problem, so a
    scheduler still starts and shows it.

    Raises:
        ConfigError: ``config_store.kind`` is ``s3`` and the settings are invalid.
    """
    path = Path(path)
    tree = _settings_tree(path)
    if _store_kind(tree, env) != "s3":
        return YamlConfigStore(path, env=env, opened_as="yaml"), YamlPipelineStore(path)
    settings = config_from_tree({"settings": tree.get("settings")}, source=str(path), env=env).settings
    pipelines = S3PipelineStore(settings.artifacts)
    config_store = S3ConfigStore(path, pipelines, env=env)
    try:
        config_store.seed()
    except (ConfigError, ArtifactError) as error:
        log.warning("pipelines not seeded yet (the scheduler's next load retries): %s", error)
    return config_store, pipelines


def store_kind(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> str:
    """The ``settings.config_store.kind`` the file at ``path`` names now (``yaml`` when unreadable)."""
    return _store_kind(_settings_tree(Path(path)), env)


def _settings_tree(path: Path) -> dict[str, Any]:
    """The file's parsed tree, or an empty one when it cannot be read or parsed."""
    try:
        return parse_config(read_text(path)[1], source=str(path))
    except ConfigError:
        return {}


def _store_kind(tree: dict[str, Any], env: Mapping[str, str] | None) -> str:
    settings = tree.get("settings")
    store = settings.get("config_store") if isinstance(settings, dict) else None
    kind = store.get("kind") if isinstance(store, dict) else None
    if not isinstance(kind, str):
        return "yaml"
    try:
        return expand_env(kind, env=os.environ if env is None else env)
    except ConfigError:
        return "yaml"  # load() lists the unset variable with the other problems
