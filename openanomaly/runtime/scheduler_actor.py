"""The scheduler as one named, detached Ray actor, and the helpers that find it by name.

Public helpers for the HTTP API (``GET /v1/pipelines``, ``POST /v1/pipelines/{name}/run``,
``GET /metrics``): :func:`scheduler_status`, :func:`trigger_run`, :func:`scheduler_metrics`
look the actor up by name.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from openanomaly.runtime.scheduler import Scheduler

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_NAMESPACE",
    "SchedulerActor",
    "ensure_scheduler",
    "get_scheduler",
    "scheduler_metrics",
    "scheduler_status",
    "start_scheduler",
    "trigger_run",
]

log = logging.getLogger(__name__)

DEFAULT_NAME = "openanomaly-scheduler"
DEFAULT_NAMESPACE = "openanomaly"


@functools.cache
def _actor_class() -> Any:
    import ray

    return ray.remote(Scheduler)


class _LazyActor:
    """``SchedulerActor`` without importing Ray at module import (``import openanomaly`` stays light)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_actor_class(), name)


SchedulerActor: Any = _LazyActor()


def start_scheduler(
    config_path: str,
    *,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    autostart: bool = True,
    num_cpus: float = 0.1,
    runtime_env: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Start (or find) the named, detached scheduler actor; returns its handle.

    ``max_restarts=-1``: if the actor's process dies, Ray restarts it and ``__init__``
    reloads the persisted progress, so the schedule resumes where it left off.
    ``max_concurrency`` lets status and trigger calls through while runs are in flight.

    Args:
        runtime_env: e.g. ``{"env_vars": {"AWS_ACCESS_KEY_ID": ...}}`` for the S3 store;
            the jobs the actor launches inherit it.
        kwargs: :class:`Scheduler` options (``now``, ``delay``, ``tick_s``, ``job_options``...).
    """
    import ray

    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": 16,
        "num_cpus": num_cpus,
    }
    if runtime_env:
        options["runtime_env"] = runtime_env
    handle = _actor_class().options(**options).remote(config_path, autostart=autostart, **kwargs)
    ray.get(handle.ping.remote())
    return handle


def ensure_scheduler(
    config_path: str | os.PathLike[str],
    *,
    name: str = DEFAULT_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    **kwargs: Any,
) -> Any:
    """Start the scheduler at start-up of a long-running app (the Serve ingress), or find it.

    For deployments where ``serve run`` / a KubeRay RayService brings everything up and
    there is no separate ``openanomaly scheduler`` step. Safe to call from every replica
    at once and on every replica restart: Ray's ``get_if_exists`` creates one named
    detached actor and returns it to all callers, and the actor outlives the replicas.

    ``config_path`` is made absolute here, because the actor's working directory is not
    the caller's. The actor may be placed on any node, so the file must exist on every
    node that can host it (KubeRay: mount the pipelines ConfigMap in the head and in
    every worker group's pod spec, at the same path). Without an explicit
    ``runtime_env``, the actor gets the caller's (its ``env_vars`` are what ``${VAR}`` in
    the pipelines file and the S3 credentials come from).

    If a scheduler of that name already runs on another file, it is kept (it owns the
    schedule and its progress) and a warning names both files: stop it with
    ``ray.kill(get_scheduler())`` to switch files. A bad pipelines file does not fail the
    start: the scheduler reports it (``config_error``) and picks the file up once fixed.

    Args:
        kwargs: :func:`start_scheduler` options (``runtime_env``, ``num_cpus``, and the
            :class:`Scheduler` options ``tick_s``, ``delay``, ``job_options``...).

    Returns:
        the actor handle.
    """
    import ray

    path = os.path.abspath(os.fspath(config_path))
    if "runtime_env" not in kwargs:
        inherited = dict(ray.get_runtime_context().runtime_env or {})
        kwargs["runtime_env"] = {key: inherited[key] for key in ("env_vars",) if inherited.get(key)}
    handle = start_scheduler(path, name=name, namespace=namespace, **kwargs)
    running = ray.get(handle.source.remote())
    if running != path:
        log.warning(
            "scheduler %r in namespace %r already runs pipelines from %s, not %s; keeping it",
            name,
            namespace,
            running,
            path,
        )
    return handle


def get_scheduler(*, name: str = DEFAULT_NAME, namespace: str = DEFAULT_NAMESPACE) -> Any:
    """The running scheduler actor.

    Raises:
        ValueError: none is running under that name (Ray's error).
    """
    import ray

    return ray.get_actor(name, namespace=namespace)


def scheduler_status(*, name: str = DEFAULT_NAME, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """For ``GET /v1/pipelines``: ``{"pipelines": [status...], "config_error": str | None}``."""
    import ray

    return ray.get(get_scheduler(name=name, namespace=namespace).status.remote())


def trigger_run(
    pipeline: str, *, name: str = DEFAULT_NAME, namespace: str = DEFAULT_NAMESPACE
) -> dict[str, Any]:
    """For ``POST /v1/pipelines/{name}/run``; KeyError (→ 404) for an unknown pipeline."""
    import ray

    return ray.get(get_scheduler(name=name, namespace=namespace).trigger.remote(pipeline))


def scheduler_metrics(*, name: str = DEFAULT_NAME, namespace: str = DEFAULT_NAMESPACE) -> str:
    """Prometheus text of the scheduler's self-metrics, for ``GET /metrics``."""
    import ray

    return ray.get(get_scheduler(name=name, namespace=namespace).metrics.remote())
