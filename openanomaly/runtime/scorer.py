"""The model holder: :class:`WindowScorer` keeps models loaded and scores checked blocks with them.

It is the body of every model actor (the scheduler's warm actors, a Ray Data job's
scoring actors). Models are loaded on first use and kept: zero-shot forecasters per
(spec, params); fitted per-series models per (pipeline, series, fit) in an LRU; a global
fitted model per (pipeline, fit). An artifact store that cannot be read is an error,
never "no model for this series".
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from openanomaly.core.config import Pipeline, Settings
from openanomaly.core.detect import Detection, score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import ArtifactError, ArtifactNotFound, ModelError
from openanomaly.io.artifacts import (
    GLOBAL_SERIES_KEY,
    ArtifactStore,
    latest_model,
    model_key,
    open_store,
    series_key,
)
from openanomaly.models.base import Forecaster
from openanomaly.runtime.options import ModelFactory

__all__ = ["WindowScorer"]

log = logging.getLogger(__name__)


class WindowScorer:
    """Holds models and scores fetched series with them: the body of every model actor.

    Plain Python: the scheduler runs it as a long-lived Ray actor (one per model), a Ray
    Data job as its scoring actors, tests call it directly. Scoring is
    :func:`openanomaly.core.detect.score_range`, the pure core every path uses.

    Models are loaded on first use and kept: zero-shot forecasters per (spec, params);
    fitted per-series models per (pipeline, series, fit) in an LRU of ``model_cache``;
    a global fitted model (NHITS) per (pipeline, fit).

    Args:
        model_factory: zero-shot pipelines: builds the forecaster instead of the registry.
    """

    def __init__(self, *, model_cache: int = 50_000, model_factory: ModelFactory | None = None) -> None:
        self.model_factory = model_factory
        self.cache_size = model_cache
        self._forecasters: dict[str, Forecaster] = {}
        self._fitted: OrderedDict[tuple[str, str, int], Any | None] = OrderedDict()
        self._stores: dict[str, ArtifactStore] = {}

    def ready(self) -> bool:
        """Answers once the actor runs (the scheduler waits on it to see placement problems)."""
        return True

    def score(
        self,
        series: SeriesMatrix,
        pipeline: Pipeline,
        settings: Settings,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None = None,
    ) -> Detection:
        """Score ``(start_ms, end_ms]`` of ``series`` (a checked block) with the pipeline's model.

        Args:
            fit_time_ms: fitted pipelines: the fit whose models to use; None = the latest
                fit at or before ``start_ms``.

        Raises:
            ArtifactError: the store could not be read, or a global model has no fit at or
                before the window.
            ModelError: as :func:`openanomaly.core.detect.score_range`.
        """
        from openanomaly.models.fitted import is_global

        window = {"start_ms": start_ms, "end_ms": end_ms, "checked": True}
        if pipeline.schedule.fit_every is None:
            return score_range(series, pipeline, self._zero_shot(pipeline), **window)
        if self.model_factory is not None:
            raise ModelError(
                "model_factory is for zero-shot pipelines; fitted models are loaded from the ArtifactStore",
                spec=pipeline.model.spec,
            )
        store = self._store(settings)
        if is_global(pipeline.fit_spec):
            model = self._fitted_model(store, pipeline, GLOBAL_SERIES_KEY, fit_time_ms, start_ms)
            if model is None:
                raise ArtifactError(
                    f"no global model fitted at or before {fit_time_ms or start_ms}",
                    key=f"{pipeline.name}/{GLOBAL_SERIES_KEY}",
                )
            return score_range(series, pipeline, model, **window)
        return self._score_per_series(store, series, pipeline, start_ms, end_ms, fit_time_ms)

    def _zero_shot(self, pipeline: Pipeline) -> Forecaster:
        key = json.dumps([pipeline.model.spec, pipeline.model.params], sort_keys=True, default=str)
        if key not in self._forecasters:
            if self.model_factory is not None:
                self._forecasters[key] = self.model_factory(pipeline)
            else:
                from openanomaly.models.registry import load_forecaster

                self._forecasters[key] = load_forecaster(pipeline.model.spec, **pipeline.model.params)
        return self._forecasters[key]

    def _store(self, settings: Settings) -> ArtifactStore:
        key = settings.artifacts.model_dump_json()
        if key not in self._stores:
            self._stores[key] = open_store(settings.artifacts)
        return self._stores[key]

    def _fitted_model(
        self, store: ArtifactStore, pipeline: Pipeline, key: str, fit_time_ms: int | None, start_ms: int
    ) -> Any | None:
        """The model fitted for ``key`` (None: none was fitted for it); cached."""
        from openanomaly.models.fitted import is_global, load_global, load_series_model

        if fit_time_ms is None:
            ref = latest_model(store, pipeline=pipeline.name, series=key, at_or_before_ms=start_ms)
            if ref is None:
                return None
            fit_time_ms = ref.fit_time_ms
        cache_key = (pipeline.name, key, fit_time_ms)
        if cache_key in self._fitted:
            self._fitted.move_to_end(cache_key)
            return self._fitted[cache_key]
        try:
            blob = store.get(model_key(pipeline.name, key, fit_time_ms))
        except ArtifactNotFound:
            model = None  # a series that appeared after the fit: the store said so
        else:
            fit = pipeline.fit_spec
            model = load_global(fit, blob) if is_global(fit) else load_series_model(fit, blob)
        self._fitted[cache_key] = model
        if len(self._fitted) > self.cache_size:
            self._fitted.popitem(last=False)
        return model

    def _score_per_series(
        self,
        store: ArtifactStore,
        series: SeriesMatrix,
        pipeline: Pipeline,
        start_ms: int,
        end_ms: int,
        fit_time_ms: int | None,
    ) -> Detection:
        """One model per series: load them in parallel (S3 latency), score each, merge the rows."""
        keys = [series_key(labels) for labels in series.labels]
        with ThreadPoolExecutor(16) as pool:
            models = list(
                pool.map(lambda key: self._fitted_model(store, pipeline, key, fit_time_ms, start_ms), keys)
            )
        parts = []
        for row, model in enumerate(models):
            one = series.select([row])
            if model is None or not np.isfinite(one.values).any():
                parts.append(None)
                continue
            parts.append(score_range(one, pipeline, model, start_ms=start_ms, end_ms=end_ms, checked=True))
        unfitted = sum(model is None for model in models)
        if unfitted:
            log.warning(
                "pipeline %r: %d of %d series have no fitted model (new since the fit); not scored",
                pipeline.name,
                unfitted,
                len(models),
            )
        return _merge_rows(series, parts, start_ms=start_ms, end_ms=end_ms)


def _merge_rows(
    series: SeriesMatrix, parts: list[Detection | None], *, start_ms: int, end_ms: int
) -> Detection:
    """One Detection from per-row ones (None: that row was not scored)."""
    stamps = series.timestamps
    inside = (stamps > start_ms) & (stamps <= end_ms)
    shape = (len(series), int(inside.sum()))
    arrays = {name: np.full(shape, np.nan) for name in ("anomaly_score", "yhat", "yhat_lower", "yhat_upper")}
    skipped = []
    for row, part in enumerate(parts):
        if part is None:
            continue
        for name, target in arrays.items():
            target[row] = getattr(part, name)[0]
        if part.skipped:
            skipped.append(row)
    return Detection(
        series.labels, stamps[inside], series.values[:, inside], **arrays, skipped=tuple(skipped)
    )
