"""Where the configuration comes from, and how a running service notices it changed.

``ConfigStore`` is the port the scheduler and the CLI use; ``YamlConfigStore`` reads a
YAML file, and :mod:`openanomaly.configstore.pipelines` adds one that takes the settings from the
file and the pipelines from S3 (:func:`config_from_tree` validates what it assembles).
Every problem becomes one :class:`~openanomaly.errors.ConfigError` that names the file,
the pipeline (by name, else by index) and the field path, so ``openanomaly validate``
can print it and a reloading scheduler can log it and keep the last good config.

File layout::

    settings:
      tsdb:
        url: http://localhost:8428
        bearer_token: ${VM_TOKEN}        # ${VAR} / ${VAR:-default} expand from the environment
    pipelines:
      - name: cpu
        query: rate(node_cpu_seconds_total{mode="user"}[5m])
        step: 1m
        model: chronos:amazon/chronos-bolt-small
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from openanomaly.configstore.checks import pipeline_problems
from openanomaly.configstore.yamlsafe import FILE_LIMITS, YamlLimits, load_yaml
from openanomaly.core.config import Config, Pipeline
from openanomaly.errors import ConfigError, ConfigValidationError

__all__ = [
    "ConfigStore",
    "ConfigValidationError",
    "FileVersion",
    "YamlConfigStore",
    "check_store_kind",
    "config_from_tree",
    "expand_env",
    "load_config",
    "parse_config",
    "read_text",
]

# ${NAME} or ${NAME:-default}; $${ escapes a literal ${.
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@runtime_checkable
class ConfigStore(Protocol):
    """A source of :class:`~openanomaly.core.config.Config` that can say when it changed."""

    def load(self) -> Config:
        """The current configuration.

        Raises:
            ConfigError: it is missing or invalid (nothing partial is returned).
        """
        ...

    def changed(self) -> bool:
        """True when the source differs from what the last successful ``load`` returned."""
        ...


def expand_env(text: str, *, env: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in ``text`` from ``env``; ``$${`` → ``${``.

    Raises:
        ConfigError: a referenced variable is unset and has no default.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name!r} is not set (write ${{{name}:-default}} for a default)"
        )

    return _ENV_REF.sub(replace, text)


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _expand_tree(
    node: Any,
    *,
    env: Mapping[str, str],
    unset: list[tuple[tuple[int | str, ...], str]],
    loc: tuple[int | str, ...] = (),
) -> Any:
    """``node`` with ``${VAR}`` expanded in every string.

    A string naming an unset variable is kept as written and ``(loc, message)`` appended
    to ``unset``, so validation still runs and lists every other problem with it.
    """
    if isinstance(node, str):
        try:
            return expand_env(node, env=env)
        except ConfigError as error:
            unset.append((loc, str(error)))
            return node
    if isinstance(node, dict):
        return {
            key: _expand_tree(value, env=env, unset=unset, loc=(*loc, key)) for key, value in node.items()
        }
    if isinstance(node, list):
        return [_expand_tree(value, env=env, unset=unset, loc=(*loc, i)) for i, value in enumerate(node)]
    return node


def _pipeline_name(raw: Any, index: int) -> str | None:
    pipelines = raw.get("pipelines") if isinstance(raw, dict) else None
    if isinstance(pipelines, list) and index < len(pipelines) and isinstance(pipelines[index], dict):
        name = pipelines[index].get("name")
        return str(name) if name is not None else None
    return None


def _validation_errors(error: ValidationError, raw: Any, source: str) -> list[ConfigError]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        pipeline = _pipeline_at(raw, loc)
        if item["type"] not in ("missing", "extra_forbidden") and "input" in item and len(loc) > 2:
            value = item["input"]
            if isinstance(value, str | int | float | bool):
                message = f"{message} (got {value!r})" if repr(value) not in message else message
        problems.append(ConfigError(message, source=source, pipeline=pipeline, field=_loc_path(loc) or None))
    return problems


def parse_config(
    text: str | bytes, *, source: str = "<string>", limits: YamlLimits = FILE_LIMITS
) -> dict[str, Any]:
    """The YAML ``text`` as a mapping, ``${VAR}`` not expanded (a writable store keeps it as written).

    Raises:
        ConfigError: malformed YAML (with line and column), over ``limits``
            (:func:`~openanomaly.configstore.yamlsafe.load_yaml`), an empty file, or a top level
            that is not a mapping.
    """
    raw = load_yaml(text, source=source, limits=limits)
    if raw is None:
        raise ConfigError("the file is empty; expected 'settings:' and 'pipelines:'", source=source)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"expected a mapping with 'settings:' and 'pipelines:' at the top, got {type(raw).__name__}",
            source=source,
        )
    return raw


def load_config(text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate a YAML configuration (:func:`parse_config`, then :func:`config_from_tree`).

    Raises:
        ConfigError: malformed YAML (with line and column), or invalid content
            (:class:`ConfigValidationError` listing every problem, unset ``${VAR}``
            included).
    """
    return config_from_tree(parse_config(text, source=source), source=source, env=env)


def config_from_tree(
    raw: dict[str, Any], *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed configuration (``${VAR}`` not yet expanded).

    A store that assembles the tree itself (settings from a file, pipelines from S3)
    gets exactly the checks and messages of a file. Beyond each field's own checks, a
    pipeline is checked against its model's facts (:mod:`openanomaly.configstore.checks`): what a
    run would reject is refused here.

    Raises:
        ConfigValidationError: every problem, unset ``${VAR}`` included.
    """
    unset: list[tuple[tuple[int | str, ...], str]] = []
    raw = _expand_tree(raw, env=os.environ if env is None else env, unset=unset)
    problems = [
        ConfigError(message, source=source, pipeline=_pipeline_at(raw, loc), field=_loc_path(loc) or None)
        for loc, message in unset
    ]
    problems += _duplicate_names(raw, source)
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        # The field of an unset variable holds "${VAR}" as written: its own error is noise.
        hidden = {problem.field for problem in problems}
        problems += [
            problem
            for problem in (*_validation_errors(error, raw, source), *_pipeline_checks(raw, source))
            if problem.field not in hidden and "duplicate pipeline name" not in str(problem)
        ]
        raise ConfigValidationError(_unique(problems)) from None
    # What a run would reject that no single field shows (:mod:`openanomaly.configstore.checks`).
    problems += _pipeline_checks(raw, source)
    if problems:
        raise ConfigValidationError(_unique(problems))
    return config


def _pipeline_at(raw: Any, loc: tuple[int | str, ...]) -> str | None:
    if len(loc) >= 2 and loc[0] == "pipelines" and isinstance(loc[1], int):
        return _pipeline_name(raw, loc[1])
    return None


def _pipeline_checks(raw: dict[Any, Any], source: str) -> list[ConfigError]:
    """The model-fact checks of every pipeline that is valid on its own.

    Listed beside the other problems when something else is wrong too, so one load shows
    everything to fix.
    """
    pipelines = raw.get("pipelines")
    if not isinstance(pipelines, list):
        return []
    problems = []
    for index, item in enumerate(pipelines):
        try:
            pipeline = Pipeline.model_validate(item)
        except ValidationError:
            continue  # its field errors are already listed
        problems += [
            ConfigError(message, source=source, pipeline=pipeline.name, field=f"pipelines[{index}].{field}")
            for field, message in pipeline_problems(pipeline)
        ]
    return problems


def _unique(problems: list[ConfigError]) -> list[ConfigError]:
    """``problems`` without repeats (a check can be reached both through ``Config`` and alone)."""
    first: dict[str, ConfigError] = {}
    for problem in problems:
        first.setdefault(str(problem), problem)
    return list(first.values())


def _duplicate_names(raw: dict[Any, Any], source: str) -> list[ConfigError]:
    """One error per repeated pipeline name, naming both positions (pydantic would not)."""
    pipelines = raw.get("pipelines")
    if not isinstance(pipelines, list):
        return []
    first: dict[str, int] = {}
    problems = []
    for index, item in enumerate(pipelines):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            problems.append(
                ConfigError(
                    f"duplicate pipeline name {name!r} (first used by pipelines[{first[name]}])",
                    source=source,
                    pipeline=name,
                    field=f"pipelines[{index}].name",
                )
            )
        else:
            first[name] = index
    return problems


def read_text(path: Path) -> tuple[bytes, str]:
    """The file's bytes and its UTF-8 text.

    Raises:
        ConfigError: missing, unreadable, or not UTF-8.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror}", source=str(path)) from None
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"not UTF-8 text ({error.reason} at byte {error.start})", source=str(path)
        ) from None


class FileVersion:
    """Which content of one file was last loaded, so polling it every few seconds is cheap.

    ``changed()`` compares the file's mtime and size first and hashes the content only
    when they moved, so touching the file without editing it does not count as a change.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stat: tuple[int, int] | None = None
        self._digest: str | None = None

    def _stat_key(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def read(self) -> tuple[str, tuple[tuple[int, int] | None, str]]:
        """The file's text, and the version to :meth:`remember` once that text loaded.

        Raises:
            ConfigError: missing, unreadable, or not UTF-8.
        """
        stat = self._stat_key()
        data, text = read_text(self.path)
        return text, (stat, hashlib.sha256(data).hexdigest())

    def remember(self, version: tuple[tuple[int, int] | None, str]) -> None:
        self._stat, self._digest = version

    def changed(self) -> bool:
        """True if the content differs from the last one remembered (or it vanished)."""
        if self._digest is None:
            return True
        stat = self._stat_key()
        if stat is None:
            return True
        if stat == self._stat:
            return False
        try:
            digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return True
        if digest == self._digest:
            self._stat = stat  # touched, not edited
            return False
        return True


def check_store_kind(kind: str, *, opened: str, source: str) -> None:
    """Refuse a ``settings.config_store.kind`` other than the one this process opened.

    A running scheduler and Serve app keep the store they opened at start (the YAML
    file, or S3). Switching under them would read pipelines from one store while edits
    go to the other, so the switch is refused, saying so, until a restart: the scheduler
    keeps its last good configuration and shows this as ``config_error``, and edits
    over the API get it as a 409.

    Raises:
        ConfigError: ``kind`` is not ``opened`` (field ``settings.config_store.kind``).
    """
    if kind != opened:
        raise ConfigError(
            f"changed from {opened!r} to {kind!r} while running: restart the scheduler and the Serve app "
            "to switch stores (until then the last good configuration runs and edits are refused)",
            source=source,
            field="settings.config_store.kind",
        )


class YamlConfigStore:
    """Configuration from one YAML file, re-read when its content changes (see :class:`FileVersion`).

    Args:
        opened_as: the ``config_store.kind`` it serves as (:func:`check_store_kind`);
            ``None``: any (a file read once, e.g. a bundled example).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        opened_as: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._env = env
        self._opened_as = opened_as
        self._version = FileVersion(self.path)

    def __repr__(self) -> str:
        return f"YamlConfigStore({str(self.path)!r})"

    def load(self) -> Config:
        """Read and validate the file; remember its version for :meth:`changed`.

        Raises:
            ConfigError: missing, unreadable, malformed or invalid file.
        """
        text, version = self._version.read()
        config = load_config(text, source=str(self.path), env=self._env)
        if self._opened_as is not None:
            check_store_kind(config.settings.config_store.kind, opened=self._opened_as, source=str(self.path))
        self._version.remember(version)
        return config

    def changed(self) -> bool:
        """True if the file's content differs from the last successful :meth:`load` (or it vanished)."""
        return self._version.changed()
