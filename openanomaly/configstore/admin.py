"""Managing pipelines while the service runs: the one implementation behind the CRUD API
(``/v1/pipelines/{name}``) and the playground's Pipelines tab.

A change is checked with exactly the rules and messages of ``openanomaly validate``
before anything is stored, goes to the configured :class:`~openanomaly.configstore.pipelines.PipelineStore`
(the YAML file, or S3 with conditional writes and every version kept), and is logged
with who made it. The scheduler notices the change on its next tick: it polls the same
store (:func:`~openanomaly.configstore.stores.open_stores`).

A definition sent here is never expanded: ``${VAR}`` is refused, because the server's
environment holds its credentials and a pipeline's query and labels leave the process.
Nor may it load a checkpoint from any path (:mod:`openanomaly.models.trust`). Environment
references and local paths stay features of the file an operator edits.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from openanomaly.configstore.files import check_store_kind, load_config
from openanomaly.configstore.pipelines import PipelineVersion, StoredPipeline
from openanomaly.configstore.s3 import S3PipelineStore
from openanomaly.configstore.stores import open_stores, store_kind
from openanomaly.configstore.yamlsafe import DEFINITION_LIMITS, load_json, load_yaml
from openanomaly.core.config import Pipeline, format_duration
from openanomaly.errors import ConfigError, ConfigValidationError, ModelError, SchedulerUnavailable
from openanomaly.models.trust import check_untrusted_spec

__all__ = [
    "STARTER_FILE",
    "PipelineAdmin",
    "PipelineInvalid",
    "Problem",
    "create_starter_file",
    "definition_name",
    "parse_definition",
    "to_yaml",
]

log = logging.getLogger(__name__)

STARTER_FILE = """\
# Created by OpenAnomaly because this file did not exist. Set settings.tsdb to your
# Prometheus / VictoriaMetrics; add pipelines here, with PUT /v1/pipelines/{name}, or in
# the playground's Pipelines tab (docs/pipelines.md).
settings:
  tsdb:
    url: http://localhost:8428
pipelines: []
"""

StatusSource = Callable[[], Mapping[str, Any]]
"""Returns the scheduler's ``status()``; raises :class:`SchedulerUnavailable` when none runs."""


@dataclass(frozen=True)
class Problem:
    """One reason a definition is refused: a field of the pipeline (``schedule.context``) and why."""

    field: str | None
    message: str


class PipelineInvalid(ConfigValidationError):
    """A definition sent over the API or the playground does not validate; nothing was stored.

    ``problems`` name fields relative to the pipeline (``schedule.context``), the form
    in which an API client or an editor sees the definition.
    """

    def __init__(self, name: str, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__([ConfigError(p.message, pipeline=name, field=p.field) for p in problems])


def parse_definition(body: bytes | str, *, content_type: str = "application/yaml") -> dict[str, Any]:
    """The pipeline mapping of a request body or an editor's text (YAML, or JSON).

    Parsed within :data:`~openanomaly.configstore.yamlsafe.DEFINITION_LIMITS` (size, depth, aliases,
    expanded values, plain tags) before anything walks it.

    Raises:
        PipelineInvalid: malformed YAML/JSON, over a limit, or not a mapping (field ``body``).
    """
    json_body = content_type.split(";")[0].strip().lower() == "application/json"
    try:
        # The file's loader and its "malformed YAML: line, column" messages, within a pipeline's limits.
        load = load_json if json_body else load_yaml
        value = load(body, limits=DEFINITION_LIMITS)
    except ConfigError as error:
        raise PipelineInvalid("?", [Problem("body", error.message)]) from None
    if not isinstance(value, dict):
        got = "nothing" if value is None else type(value).__name__
        raise PipelineInvalid("?", [Problem("body", f"expected a mapping of pipeline fields, got {got}")])
    return value


def definition_name(definition: Mapping[str, Any]) -> str:
    """The ``name`` a definition gives itself (the editor's text and ``:validate`` carry it).

    Raises:
        PipelineInvalid: it has none.
    """
    name = definition.get("name")
    if not isinstance(name, str):
        raise PipelineInvalid("?", [Problem("name", "the definition needs a name")])
    return name


def _env_references(node: Any, path: str = "") -> list[Problem]:
    if isinstance(node, str):
        return [Problem(path or None, _NO_ENV)] if "${" in node else []
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _env_references(value, f"{path}.{key}".lstrip("."))]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _env_references(value, f"{path}[{i}]")]
    return []


_NO_ENV = "${VAR} is expanded only in the pipelines file, not in a definition sent to the server"


def _relative(field: str | None) -> str | None:
    """``pipelines[0].schedule.context`` → ``schedule.context``."""
    if field is None or not field.startswith("pipelines[0]"):
        return field
    return field.removeprefix("pipelines[0]").lstrip(".") or None


def create_starter_file(path: str | os.PathLike[str]) -> bool:
    """Write :data:`STARTER_FILE` at ``path`` unless a file is there; True when it wrote one.

    So that ``serve run serve_config.yaml`` manages pipelines out of the box; the log
    line says where, and the file says what to edit.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("x") as out:
            out.write(STARTER_FILE)
    except FileExistsError:
        return False
    log.warning("created %s with no pipelines and settings.tsdb.url http://localhost:8428: edit it", target)
    return True


class PipelineAdmin:
    """Read, validate, create, replace and delete pipelines of one pipelines file's store.

    Args:
        config_path: the pipelines YAML (its ``settings.config_store`` picks the store).
        status: the scheduler's status, for the state, lag and errors shown beside each
            definition; ``None``: definitions only.
        models_root: checkpoint directories a definition may name
            (:func:`~openanomaly.models.trust.models_root`); ``None``: none, only
            registry names (:mod:`openanomaly.models.trust`).
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        status: StatusSource | None = None,
        models_root: Path | None = None,
    ) -> None:
        self.config_path = str(config_path)
        self.store = open_stores(self.config_path)[1]
        self._status = status
        self.models_root = models_root

    # -- reading ---------------------------------------------------------------------

    def definitions(self) -> list[StoredPipeline]:
        return self.store.list()

    def get(self, name: str) -> StoredPipeline:
        """Raises: PipelineNotFound."""
        return self.store.get(name)

    def versions(self, name: str) -> list[PipelineVersion]:
        """Newest first. Raises: PipelineNotFound (never existed)."""
        return self.store.versions(name)

    def scheduler_status(self) -> dict[str, Any]:
        """``{"pipelines": {name: status}, "config_error": ..., "scheduler_error": ...}``; never raises."""
        if self._status is None:
            return {"pipelines": {}, "config_error": None, "scheduler_error": "no scheduler configured"}
        try:
            status = self._status()
        except SchedulerUnavailable as error:
            return {"pipelines": {}, "config_error": None, "scheduler_error": str(error)}
        return {
            "pipelines": {p["name"]: p for p in status.get("pipelines", [])},
            "config_error": status.get("config_error"),
            "scheduler_error": None,
        }

    def overview(self) -> dict[str, Any]:
        """Every stored pipeline with its etag and the scheduler's status of it (``GET /v1/pipelines``).

        A pipeline stored but not yet picked up by the scheduler has ``state: pending``.
        """
        status = self.scheduler_status()
        rows = []
        for stored in self.definitions():
            row = dict(status["pipelines"].get(stored.name) or {"name": stored.name, "state": "pending"})
            try:
                pipeline = Pipeline.model_validate(stored.definition)
            except ValidationError:  # a hand-edited file; the scheduler reports it as config_error
                row.update(spec=None, infer_every=None)
            else:
                every = format_duration(pipeline.schedule.infer_every)
                row.update(spec=pipeline.model.spec, infer_every=every)
            row["etag"] = stored.etag
            rows.append(row)
        return {
            "pipelines": rows,
            "config_error": status["config_error"],
            "scheduler_error": status["scheduler_error"],
        }

    # -- checking and writing --------------------------------------------------------------

    def check(self, name: str, definition: Mapping[str, Any]) -> Pipeline:
        """The validated pipeline ``definition`` would become under ``name``.

        The rules are ``openanomaly validate``'s (:func:`~openanomaly.configstore.files.load_config`
        on a file holding only this pipeline), so a definition accepted here loads.

        Raises:
            PipelineInvalid: every problem, each naming its field.
        """
        definition = dict(definition)
        given = definition.setdefault("name", name)
        if given != name:
            raise PipelineInvalid(name, [Problem("name", f"the body names {given!r}, the URL {name!r}")])
        problems = _env_references(definition) + self._untrusted_model(definition)
        if problems:
            raise PipelineInvalid(name, problems)
        text = yaml.safe_dump(
            {"settings": {"tsdb": {"url": "http://settings.are.not.checked.here"}}, "pipelines": [definition]}
        )
        try:
            config = load_config(text, source="pipeline", env={})
        except ConfigValidationError as error:
            raise PipelineInvalid(
                name, [Problem(_relative(e.field), e.message) for e in error.errors]
            ) from None
        except ConfigError as error:
            raise PipelineInvalid(name, [Problem(_relative(error.field), error.message)]) from None
        return config.pipelines[0]

    def _same_store(self) -> None:
        """Refuse an edit once the file names another store than the one opened (a restart switches)."""
        opened = "s3" if isinstance(self.store, S3PipelineStore) else "yaml"
        check_store_kind(store_kind(self.config_path), opened=opened, source=self.config_path)

    def _untrusted_model(self, definition: Mapping[str, Any]) -> list[Problem]:
        """The model spec checked against the allow-list, before validation reads anything at its path."""
        model = definition.get("model")
        spec = model.get("spec") if isinstance(model, dict) else model
        if not isinstance(spec, str):
            return []  # validation names the problem
        try:
            check_untrusted_spec(spec.strip(), root=self.models_root)
        except ModelError as error:
            return [Problem("model.spec", str(error))]
        return []

    def put(
        self,
        name: str,
        definition: Mapping[str, Any],
        *,
        who: str,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> tuple[StoredPipeline, bool]:
        """Validate, then create or replace; ``(stored, created)``.

        Raises:
            PipelineInvalid: nothing was stored.
            PreconditionFailed: ``if_match`` is stale, or ``if_none_match`` and it exists.
            ConfigError: the file now names another ``config_store`` than the one opened
                at start; a restart is needed (HTTP 409).
        """
        self.check(name, definition)
        self._same_store()
        stored, created = self.store.put(
            name, {"name": name, **definition}, if_match=if_match, if_none_match=if_none_match, author=who
        )
        log.info(
            "pipeline %r %s by %s (etag %s): %s",
            name,
            "created" if created else "replaced",
            who,
            stored.etag,
            json.dumps(stored.definition, sort_keys=True, default=str),
        )
        return stored, created

    def delete(self, name: str, *, who: str, if_match: str | None = None) -> StoredPipeline:
        """Raises: PipelineNotFound, PreconditionFailed, ConfigError (see :meth:`put`)."""
        self._same_store()
        deleted = self.store.delete(name, if_match=if_match, author=who)
        log.info("pipeline %r deleted by %s (etag %s)", name, who, deleted.etag)
        return deleted


def to_yaml(definition: Mapping[str, Any]) -> str:
    """A definition as the YAML an editor shows (keys in their stored order)."""
    return yaml.safe_dump(dict(definition), sort_keys=False, allow_unicode=True)
