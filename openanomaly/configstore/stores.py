"""Which stores a pipelines file picks (``settings.config_store.kind``): YAML or S3."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openanomaly.configstore.files import (
    ConfigStore,
    YamlConfigStore,
    config_from_tree,
    expand_env,
    parse_config,
    read_text,
)
from openanomaly.configstore.pipelines import PipelineStore, YamlPipelineStore
from openanomaly.configstore.s3 import S3ConfigStore, S3PipelineStore
from openanomaly.errors import (
    ArtifactError,
    ConfigError,
)

__all__ = ["open_stores", "store_kind"]

log = logging.getLogger(__name__)


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
