"""What every Ray Data job shares: the cluster budget, the fetch stage, and one big job at a time.

A job's fetch tasks, scoring actors and fit tasks are sized to the CPUs the cluster has
free when the job starts (:func:`job_budget`), and one such job runs at a time
(:data:`BIG_JOB`), so two jobs never each hold half of what both need.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from openanomaly.core.config import Pipeline, Settings
from openanomaly.errors import DataError, NodeLost, OpenAnomalyError, WindowTimeout
from openanomaly.runtime.arrow import table_from_matrix
from openanomaly.runtime.options import JobOptions
from openanomaly.runtime.shards import plan_shards

__all__ = [
    "BIG_JOB",
    "Budget",
    "drive",
    "fetch_dataset",
    "job_budget",
    "output_rows",
    "ray_data",
    "restart_args",
]

BIG_JOB = threading.Semaphore(1)
"""One Ray Data job at a time per scheduler: each is sized to the whole free cluster."""

_POLL_S = 1.0  # how often a waiting job checks its deadline and the cluster's nodes


def ray_data() -> Any:
    import ray
    import ray.data

    if not ray.is_initialized():
        raise DataError("jobs need a Ray cluster: call ray.init() (or run inside the scheduler actor)")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray.data


@dataclass(frozen=True)
class Budget:
    """What one Ray Data job may reserve: sized to the CPUs free when it starts."""

    workers: int
    worker_cpus: float
    fetch_cpus: float
    fetch_tasks: int


def job_budget(options: JobOptions, shards: int) -> Budget:
    """Workers and CPUs for a job so that its fetch tasks AND its workers fit at once.

    Why: Ray Data starts the scoring actors first; if they took every free CPU, the
    fetch tasks that feed them could never be placed (the stall seen on 2-CPU clusters).
    The fetch stage gets its share first, the workers the rest (at least one, shrunk
    to fit when less than ``worker_num_cpus`` is free).
    """
    import ray

    free = float(ray.available_resources().get("CPU", 0.0))
    # Parsing the TSDB's answer costs CPU: one fetch task per free CPU (at least 4).
    fetch_tasks = max(1, min(shards, max(4, math.floor(free))))
    fetch_cpus = min(options.fetch_num_cpus, max(0.05, free / (2 * fetch_tasks)))
    left = max(0.05, free - fetch_cpus * fetch_tasks)
    worker_cpus = min(options.worker_num_cpus, left)
    fit = math.floor(left / worker_cpus + 1e-9)
    workers = max(1, fit if options.max_workers is None else min(options.max_workers, fit))
    return Budget(workers, worker_cpus, fetch_cpus, fetch_tasks)


def _fetch(
    batch: dict[str, np.ndarray],
    *,
    settings: Settings,
    pipeline: Pipeline,
    start_ms: int,
    end_ms: int,
    rows_per_block: int,
) -> Iterator[Any]:
    """Read task: one shard query → Arrow blocks of at most ``rows_per_block`` series.

    A stateless task rather than an actor: Ray reuses its pooled worker processes for
    tasks. It cuts its own blocks, so one big query still feeds every scoring actor
    without a repartition stage.
    """
    from openanomaly.io.tsdb import PrometheusClient

    with PrometheusClient(settings.tsdb) as client:
        step_ms = pipeline.step_ms
        for query in batch["query"]:
            matrix = client.query_range(str(query), start_ms=start_ms, end_ms=end_ms, step_ms=step_ms)
            for first in range(0, len(matrix), rows_per_block):
                rows = np.arange(first, min(first + rows_per_block, len(matrix)))
                yield table_from_matrix(matrix.select(rows), step_ms=step_ms)


def fetch_dataset(
    settings: Settings,
    pipeline: Pipeline,
    *,
    start_ms: int,
    end_ms: int,
    options: JobOptions,
) -> tuple[Any, Budget]:
    """The job's fetch stage, and the budget sized for its shard count (see :func:`job_budget`)."""
    from openanomaly.io.tsdb import PrometheusClient

    data = ray_data()
    with PrometheusClient(settings.tsdb) as client:
        queries, listed = plan_shards(
            client, pipeline, start_ms=start_ms, end_ms=end_ms, series_per_shard=options.series_per_shard
        )
    budget = job_budget(options, shards=len(queries))
    # Enough blocks for every worker to get work, none larger than batch_size.
    rows_per_block = options.batch_size
    if listed is not None and len(queries) == 1:
        rows_per_block = max(1, min(options.batch_size, -(-listed // (2 * budget.workers))))
    dataset = data.from_items([{"query": q} for q in queries], override_num_blocks=len(queries)).map_batches(
        _fetch,
        fn_kwargs={
            "settings": settings,
            "pipeline": pipeline,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "rows_per_block": rows_per_block,
        },
        batch_size=1,
        batch_format="numpy",
        compute=data.TaskPoolStrategy(size=budget.fetch_tasks),
        num_cpus=budget.fetch_cpus,
    )
    return dataset, budget


def restart_args(options: JobOptions) -> dict[str, int]:
    """Actor fault-tolerance overrides for the scoring pool; none by default.

    Ray Data already restarts a dead pool actor and retries its in-flight batch
    (``max_restarts=-1``, ``max_task_retries=-1``) unless told otherwise. Ray 2.60
    accepts overrides only through ``map_batches(**ray_remote_args)``, which is
    deprecated (removed in Ray 2.64), so they are passed only when set.
    """
    args = {}
    if options.max_restarts is not None:
        args["max_restarts"] = options.max_restarts
    if options.max_task_retries is not None:
        args["max_task_retries"] = options.max_task_retries
    return args


def output_rows(dataset: Any, deadline: float | None, what: str) -> Iterator[dict[str, Any]]:
    """The job's output rows; WindowTimeout once ``deadline`` passes (the job is dropped)."""
    for row in dataset.iter_rows():
        yield row
        if deadline is not None and time.monotonic() > deadline:
            raise WindowTimeout(f"{what} ran past its time limit")


def drive(job: Callable[..., Any], *args: Any, deadline: float | None, what: str) -> Any:
    """``job(*args)`` run as a driving task on this node, stopped past ``deadline`` or on node loss.

    The driving task owns every task and actor the job starts. Why: a job that can no
    longer finish (a node left, and an actor restarted on the node that is left took the
    CPU its other tasks wait for) blocks its iterator forever, and a deadline checked
    between rows never fires; cancelling the driving task ends the job and, by Ray's
    ownership, all it started, so the resources are free for the retry.

    Raises:
        WindowTimeout: ``deadline`` (monotonic seconds) passed. NodeLost: a node the job
            started with left, or the driving task's process died. An OpenAnomalyError
            raised by the job is raised as itself.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _alive_nodes()
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    ref = ray.remote(job).options(num_cpus=0, max_retries=0, scheduling_strategy=here).remote(*args)
    return _await(ref, deadline, nodes, what)


def _alive_nodes() -> set[str]:
    """Ids of the nodes that hold CPUs now (the ones a job's stages can run on)."""
    import ray

    return {node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0}


def _await(ref: Any, deadline: float | None, nodes: set[str], what: str) -> Any:
    """The result of a job's driving task; it is cancelled past ``deadline`` or once one of
    ``nodes`` leaves the cluster. An OpenAnomalyError from the job is raised as itself."""
    import ray
    from ray.exceptions import RayTaskError

    while not ray.wait([ref], timeout=_POLL_S)[0]:
        lost = nodes - _alive_nodes()
        if lost or (deadline is not None and time.monotonic() > deadline):
            ray.cancel(ref, force=True)
            if lost:
                raise NodeLost(f"{what}: node {sorted(lost)[0]} left the cluster; the job was stopped")
            raise WindowTimeout(f"{what} ran past its time limit")
    try:
        return ray.get(ref)
    except RayTaskError as error:
        if isinstance(error.cause, OpenAnomalyError):
            raise error.cause from None
        raise
    except ray.exceptions.RayError as error:  # the driving task's process or node died
        raise NodeLost(f"{what}: {type(error).__name__}: {error}") from None
