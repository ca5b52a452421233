"""How a pipeline's windows and fits are spread over the cluster: :class:`JobOptions`, GPU placement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from openanomaly.core.config import Pipeline
from openanomaly.models.base import Forecaster

__all__ = ["JobOptions", "ModelFactory", "num_gpus"]

ModelFactory = Callable[[Pipeline], Forecaster]
"""Builds a zero-shot pipeline's forecaster in the model actor (see ``JobOptions.model_factory``)."""


@dataclass(frozen=True)
class JobOptions:
    """How windows and fits are spread over the cluster.

    Attributes:
        series_per_shard: series per fetch task of a Ray Data job (one query per shard).
        batch_size: series per block of a Ray Data job (one forecast call, one write).
        max_workers: Ray Data scoring actors / fit tasks at most; None = as many as the
            cluster's free CPUs hold (each gets ``worker_num_cpus``, or less to fit), so a
            job grows with the cluster.
        worker_num_cpus: CPUs reserved per Ray Data scoring actor or fit task.
        fetch_num_cpus: CPUs reserved per Ray Data fetch task (mostly waiting on HTTP).
        num_gpus: GPUs per model actor; None = 1 when the cluster has GPUs and the model
            runs on one (chronos; neuralforecast with ``accelerator: gpu``), else 0.
        ray_data_min_series: a pipeline whose last window had at least this many series
            runs its windows as Ray Data jobs (fetch shards in parallel, several scoring
            actors, on every node). None (the default): chosen per pipeline from what the
            runner measured, see :meth:`~openanomaly.runtime.runner.JobRunner.uses_ray_data`.
        max_restarts / max_task_retries: Ray Data scoring actors: None = Ray Data's own
            default (restart and retry without limit); setting them uses Ray 2.60's
            deprecated ``ray_remote_args`` path.
        model_cache: fitted per-series models kept in each model actor (LRU).
        context_cache_mb: the fetched contexts the scheduler keeps between windows, so a
            window fetches only its new points (:mod:`openanomaly.runtime.contexts`),
            in MiB of values (least recently used dropped first); 0 keeps none: every
            window fetches its whole context.
        model_factory: builds the forecaster of a zero-shot pipeline in the model actor
            instead of the registry: for a model of your own, or a test model that fails
            on purpose. It must pickle (a module-level function or class does). Fitted
            pipelines load their models from the ArtifactStore and refuse a factory.
    """

    series_per_shard: int = 1000
    batch_size: int = 512
    max_workers: int | None = None
    worker_num_cpus: float = 1.0
    fetch_num_cpus: float = 0.25
    num_gpus: float | None = None
    ray_data_min_series: int | None = None
    max_restarts: int | None = None
    max_task_retries: int | None = None
    model_cache: int = 50_000
    context_cache_mb: int = 1024
    model_factory: ModelFactory | None = None

    def __post_init__(self) -> None:
        for name in ("series_per_shard", "batch_size", "max_workers", "ray_data_min_series"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"JobOptions.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("worker_num_cpus", "fetch_num_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"JobOptions.{name} must be > 0, got {getattr(self, name)}")
        if self.context_cache_mb < 0:
            raise ValueError(f"JobOptions.context_cache_mb must be >= 0, got {self.context_cache_mb}")


def num_gpus(pipeline: Pipeline, options: JobOptions) -> float:
    """GPUs a model actor or Ray Data worker of ``pipeline`` reserves (``JobOptions.num_gpus``)."""
    if options.num_gpus is not None:
        return options.num_gpus
    import ray

    from openanomaly.models.registry import model_info

    # A GPU reserved for a model that runs on CPU would only starve the ones that use it.
    gpu_model = model_info(pipeline.model.spec, pipeline.model.params).gpu
    return 1.0 if gpu_model and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
