"""Which model specs a pipeline from an untrusted source may name: the API and the playground.

A Chronos spec names a checkpoint directory or a hub id, and loading a checkpoint can
run code (a pickled file in it, a custom class). The pipelines file is the operator's,
so it may name any directory; a definition sent to the server is someone else's. Such a
definition may name:

* a spec whose adapter lists its models (``statsforecast:AutoETS``, ``mad``, ...);
* a Chronos checkpoint by registry name: one shipped in the package
  (:data:`~openanomaly.models.chronos.SHIPPED_MODELS`) or a released hub id
  (:data:`~openanomaly.models.chronos.HUB_MODELS`);
* a directory under the models root the operator configured
  (``OPENANOMALY_MODELS_ROOT``), written as an absolute path: the loader reads a
  relative path from its working directory, not from the root.

Anything else (``chronos:/etc``, ``chronos:../../../tmp/x``, ``chronos:someone/model``)
is refused before it is stored or run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from openanomaly.errors import ModelError
from openanomaly.models.registry import ADAPTERS, split_spec

__all__ = ["MODELS_ROOT_ENV", "check_untrusted_spec", "models_root"]

MODELS_ROOT_ENV = "OPENANOMALY_MODELS_ROOT"
"""A directory whose checkpoint directories an API or playground pipeline may name."""


def models_root(environ: Mapping[str, str] | None = None) -> Path | None:
    """The configured models root, resolved (symlinks followed); None when unset."""
    value = (os.environ if environ is None else environ).get(MODELS_ROOT_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def check_untrusted_spec(spec: str, *, root: Path | None, trusted: Iterable[str] = ()) -> None:
    """Refuse a spec a definition from the API or the playground may not name (see the module).

    Args:
        spec: the pipeline's ``model.spec``.
        root: :func:`models_root`; None: no directory is allowed.
        trusted: specs the operator already configured (the playground runs those).

    Raises:
        ModelError: the spec names a checkpoint outside the allow-list; the message says
            what is allowed.
    """
    from openanomaly.models.chronos import HUB_MODELS, SHIPPED_MODELS

    prefix, name = split_spec(spec)
    adapter = ADAPTERS.get(prefix)
    if adapter is None or adapter.names is not None or spec in trusted:
        return  # unknown specs are refused by validation itself; listed names load no file
    if name in SHIPPED_MODELS or name in HUB_MODELS:
        return
    path = Path(name).expanduser()
    if root is not None and path.is_absolute() and path.resolve().is_relative_to(root):
        return
    where = (
        f"a directory under {root} (an absolute path)"
        if root
        else f"no directory ({MODELS_ROOT_ENV} is unset)"
    )
    registry = ", ".join(sorted({*SHIPPED_MODELS, *HUB_MODELS}))
    raise ModelError(
        f"a pipeline sent to the server may load a {prefix} checkpoint by registry name ({registry}) "
        f"or {where}, not {name!r}: a checkpoint can run code",
        spec=spec,
    )
