"""The S3 adapters: pipelines as versioned objects in the artifacts bucket, and the scheduler's view of them.

* :class:`S3PipelineStore` (``config_store.kind: s3``): one object per pipeline in the
  artifacts bucket, written with S3 conditional requests, every version kept.
* :class:`S3ConfigStore`: a :class:`~openanomaly.configstore.files.ConfigStore` with the
  file's settings and the pipelines stored in S3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from openanomaly.configstore.files import (
    FileVersion,
    check_store_kind,
    config_from_tree,
    parse_config,
)
from openanomaly.configstore.pipelines import (
    PipelineVersion,
    StoredPipeline,
    as_stored,
    check_precondition,
    check_put,
    checked_name,
    definition_etag,
)
from openanomaly.configstore.yamlsafe import DEFINITION_LIMITS
from openanomaly.core.config import ArtifactSettings, Config
from openanomaly.errors import (
    ArtifactError,
    ConfigError,
    PipelineNotFound,
    PreconditionFailed,
)
from openanomaly.io.artifacts import S3Store, open_store

__all__ = ["S3ConfigStore", "S3PipelineStore"]

log = logging.getLogger(__name__)

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
        return (obj, as_stored(self._definition(obj, key))) if obj is not None else None

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
        definition = check_put(checked_name(name, source=self.settings_source()), definition)
        body = yaml.safe_dump(definition, sort_keys=False, allow_unicode=True).encode()
        before = self._commit(name, body, if_match=if_match, if_none_match=if_none_match, author=author)
        return as_stored(definition), before is None

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
            check_precondition(
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
