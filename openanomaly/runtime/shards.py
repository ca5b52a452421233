"""Sharding a Ray Data job's fetch ("list series") by a regex matcher over PromQL.

When the pipeline query is a plain selector (``metric{a="b"}``), the job lists the
matching series (``/api/v1/series``), picks the label with the most distinct values
(``instance``, ``pod``...) and gives each shard a copy of the selector with a
``label=~"v1|v2|…"`` matcher, so shards are disjoint and together cover every series.
Any other PromQL expression is fetched by one read task, which cuts its rows into blocks
itself (no repartition stage to wait for).
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any

from openanomaly.core.config import Pipeline
from openanomaly.runtime.window import label_matchers

__all__ = ["plan_shards"]

# A plain instant-vector selector: optional metric name, optional {matchers}, nothing else.
_SELECTOR = re.compile(r"^\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(?P<matchers>[^{}]*)\})?\s*$")


def _shard_queries(query: str, series: list[dict[str, str]], shards: int) -> list[str]:
    match = _SELECTOR.match(query)
    if match is None or shards <= 1 or not series:
        return [query]
    distinct: dict[str, set[str]] = {}
    for labels in series:
        for name, value in labels.items():
            distinct.setdefault(name, set()).add(value)
    candidates = [name for name in distinct if name != "__name__"]
    if not candidates:
        return [query]
    label = max(candidates, key=lambda name: (len(distinct[name]), name))
    values = sorted(distinct[label])
    shards = min(shards, len(values))
    groups: list[list[str]] = [[] for _ in range(shards)]
    for value in values:
        groups[zlib.crc32(value.encode()) % shards].append(value)
    has_missing = any(label not in labels for labels in series)
    name = match.group("name") or ""
    matchers = (match.group("matchers") or "").strip().rstrip(",")
    out = []
    for index, group in enumerate(groups):
        # A group too long for one query becomes several (still disjoint).
        for extra in label_matchers(label, group, missing=has_missing and index == 0):
            out.append(f"{name}{{{matchers + ', ' if matchers else ''}{extra}}}")
    return out


def plan_shards(
    client: Any, pipeline: Pipeline, *, start_ms: int, end_ms: int, series_per_shard: int
) -> tuple[list[str], int | None]:
    """The queries of the job's fetch tasks, and the series count when it was listed.

    Raises:
        QueryError: the series listing failed.
    """
    if _SELECTOR.match(pipeline.query) is None:
        return [pipeline.query], None
    listed = client.series(pipeline.query, start_ms=start_ms, end_ms=end_ms)
    shards = max(1, math.ceil(len(listed) / series_per_shard))
    return _shard_queries(pipeline.query, listed, shards), len(listed)
