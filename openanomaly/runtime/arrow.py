"""Ray Data blocks: a ``SeriesMatrix`` as an Arrow table, one row per series, and back.

Rows of a Ray Data job are series; blocks are Arrow tables::

    labels: string (the label set as JSON)    values: fixed_size_list<float64>[t]
    t0: int64 (first grid timestamp, ms)      step: int64 (grid step, ms)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from openanomaly.core.series import SeriesMatrix

__all__ = ["matrix_from_table", "table_from_matrix"]


def table_from_matrix(matrix: SeriesMatrix, *, step_ms: int) -> Any:
    """A ``SeriesMatrix`` on a regular grid as an Arrow table, one row per series."""
    import pyarrow as pa

    n, t = matrix.values.shape
    t0 = int(matrix.timestamps[0]) if t else 0
    flat = pa.array(np.ascontiguousarray(matrix.values).reshape(-1), type=pa.float64())
    return pa.table(
        {
            "labels": pa.array([json.dumps(dict(labels), sort_keys=True) for labels in matrix.labels]),
            "values": pa.FixedSizeListArray.from_arrays(flat, max(t, 1)) if t else pa.nulls(n, pa.null()),
            "t0": pa.array(np.full(n, t0, dtype=np.int64)),
            "step": pa.array(np.full(n, step_ms, dtype=np.int64)),
        }
    )


def matrix_from_table(table: Any) -> SeriesMatrix:
    """The inverse of :func:`table_from_matrix` (a block from the job's dataset)."""
    import pyarrow as pa

    n = table.num_rows
    if n == 0:
        return SeriesMatrix.empty()
    column = table.column("values").combine_chunks()
    if pa.types.is_null(column.type):
        return SeriesMatrix.empty()
    # Ray may turn fixed-size lists into variable lists when it concatenates blocks.
    fixed = pa.types.is_fixed_size_list(column.type)
    width = column.type.list_size if fixed else len(column[0].values)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(n, width)
    t0 = int(table.column("t0")[0].as_py())
    step = int(table.column("step")[0].as_py())
    labels = tuple(json.loads(text) for text in table.column("labels").to_pylist())
    timestamps = t0 + step * np.arange(width, dtype=np.int64)
    return SeriesMatrix(labels, timestamps, np.array(values))
