"""The in-memory record for many series on one time grid.

Prometheus' ``query_range`` evaluates every series at the same instants
(``start + k * step``), so a pipeline's series share one timestamp axis. Holding
them as one ``(n_series, n_times)`` float array with NaN for "no sample" keeps the
hot path (fetch → forecast → score → write) free of per-series Python objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SeriesMatrix", "format_labels"]


@dataclass(frozen=True)
class SeriesMatrix:
    """Many series sampled on one shared, strictly increasing time grid.

    Attributes:
        labels: one label set per series (``__name__`` included when present), length n.
        timestamps: int64 milliseconds since the epoch, shape ``(t,)``, strictly increasing.
        values: float64, shape ``(n, t)``; NaN where a series has no sample.

    Raises:
        ValueError: when the shapes or dtypes disagree.
    """

    labels: tuple[Mapping[str, str], ...]
    timestamps: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.timestamps.ndim != 1 or self.timestamps.dtype != np.int64:
            raise ValueError(
                f"timestamps must be 1-D int64, got {self.timestamps.dtype} "
                f"with shape {self.timestamps.shape}"
            )
        if self.values.ndim != 2 or self.values.dtype != np.float64:
            raise ValueError(
                f"values must be 2-D float64, got {self.values.dtype} with shape {self.values.shape}"
            )
        if self.values.shape != (len(self.labels), len(self.timestamps)):
            raise ValueError(
                f"values shape {self.values.shape} does not match "
                f"{len(self.labels)} label sets x {len(self.timestamps)} timestamps"
            )
        if len(self.timestamps) > 1 and not np.all(np.diff(self.timestamps) > 0):
            raise ValueError("timestamps must be strictly increasing")

    @classmethod
    def empty(cls) -> SeriesMatrix:
        return cls((), np.empty(0, np.int64), np.empty((0, 0), np.float64))

    @classmethod
    def from_rows(
        cls,
        labels: Sequence[Mapping[str, str]],
        timestamps: Sequence[int] | np.ndarray,
        values: Sequence[Sequence[float]] | np.ndarray,
    ) -> SeriesMatrix:
        """Build from plain Python sequences, converting dtypes (tests, API edges)."""
        return cls(
            tuple(dict(label_set) for label_set in labels),
            np.asarray(timestamps, dtype=np.int64),
            np.asarray(values, dtype=np.float64).reshape(len(labels), len(timestamps)),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows: np.ndarray | Sequence[int]) -> SeriesMatrix:
        """The given series (row indices or a boolean mask), same time grid."""
        index = np.arange(len(self.labels))[rows]
        return SeriesMatrix(tuple(self.labels[i] for i in index), self.timestamps, self.values[index])

    def between(self, start_ms: int, end_ms: int) -> SeriesMatrix:
        """The columns with ``start_ms < t <= end_ms`` (the window convention of detect)."""
        keep = (self.timestamps > start_ms) & (self.timestamps <= end_ms)
        return SeriesMatrix(self.labels, self.timestamps[keep], self.values[:, keep])


def format_labels(labels: Mapping[str, str]) -> str:
    """A label set as PromQL writes a series, ``name{a="x",b="y"}``, for messages and tables."""
    name = labels.get("__name__", "")
    rest = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()) if key != "__name__")
    return f"{name}{{{rest}}}"
