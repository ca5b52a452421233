"""Where pipelines are stored and edited: the writable port behind the pipelines API.

``PipelineStore`` keeps pipeline definitions *as written* (``${VAR}`` not expanded) and
only stores: the caller validates (``openanomaly.configstore.files.config_from_tree``) before a
``put``. Every stored pipeline has an ``etag`` (16 hex chars of the SHA-256 of its
canonical JSON), equal iff the definitions are equal, so an editor can say "replace it
only if it is still what I read" (``if_match``) and lose with
:class:`~openanomaly.errors.PreconditionFailed` instead of overwriting someone else.

Two adapters, chosen by ``settings.config_store.kind``
(:func:`openanomaly.configstore.stores.open_stores`):

* :class:`YamlPipelineStore` (``yaml``, the default): the pipelines file itself,
  rewritten whole under a lock, the previous text kept as ``<file>.bak``.
* :class:`~openanomaly.configstore.s3.S3PipelineStore` (``s3``): one object per pipeline
  in the artifacts bucket, written with S3 conditional requests, every version kept.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import yaml

from openanomaly.configstore.files import (
    parse_config,
    read_text,
)
from openanomaly.core.config import PIPELINE_NAME, PIPELINE_NAME_MAX
from openanomaly.errors import (
    ConfigError,
    InvalidPipelineName,
    PipelineNotFound,
    PreconditionFailed,
)
from openanomaly.io.artifacts import replace_atomically

__all__ = [
    "PipelineStore",
    "PipelineVersion",
    "StoredPipeline",
    "YamlPipelineStore",
    "as_stored",
    "check_precondition",
    "check_put",
    "checked_name",
    "definition_etag",
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


def as_stored(definition: dict[str, Any]) -> StoredPipeline:
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


def check_put(name: str, definition: dict[str, Any]) -> dict[str, Any]:
    """A private copy of ``definition`` (later edits by the caller do not leak in)."""
    if definition.get("name") != name:
        raise ValueError(f"pipeline {name!r}: definition's name is {definition.get('name')!r}, not {name!r}")
    return copy.deepcopy(definition)


def check_precondition(
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
                return index, as_stored(item)
        return None

    def list(self) -> list[StoredPipeline]:
        """Every pipeline with a string name, sorted (an absent file has none)."""
        read = self._read(self.path)
        if read is None:
            return []
        items = self._pipelines(read[1], self.path)
        stored = [
            as_stored(item) for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)
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
        definition = check_put(checked_name(name, source=str(self.path)), definition)
        with self._edit() as (tree, write):
            found = self._find(tree, self.path, name)
            check_precondition(
                name, found[1] if found else None, if_match=if_match, if_none_match=if_none_match
            )
            pipelines = self._pipelines(tree, self.path)
            if found:
                pipelines[found[0]] = definition
            else:
                pipelines.append(definition)
            tree["pipelines"] = pipelines
            write(tree)
        return as_stored(definition), found is None

    def delete(self, name: str, *, if_match: str | None = None, author: str) -> StoredPipeline:
        checked_name(name, source=str(self.path))
        with self._edit() as (tree, write):
            found = self._find(tree, self.path, name)
            if found is None:
                raise PipelineNotFound(name, source=str(self.path))
            check_precondition(name, found[1], if_match=if_match, if_none_match=False)
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
