"""One series from a ``timestamp,value`` CSV file (the NAB layout), for runs without a TSDB.

Its own module because the CLI's ``example``, the playground's CSV upload, the tests and
the benchmarks all read such files; before, the playground imported it from the CLI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openanomaly.core.series import SeriesMatrix
from openanomaly.errors import UsageError

__all__ = ["read_csv_series"]


def read_csv_series(path: Path, *, step_ms: int, name: str) -> SeriesMatrix:
    """A ``timestamp,value`` CSV (the NAB layout) as a one-series SeriesMatrix on the step grid.

    Rows are sorted, duplicate timestamps keep the last row, and missing grid points
    are NaN, so the result can go straight into :func:`openanomaly.core.detect.score_range`.
    Naive timestamps are UTC. The series gets ``__name__=name`` and ``source=<file name>``.

    Raises:
        UsageError: unreadable file, wrong columns, unparsable timestamps or values
            (the file is a command-line or form input).
    """
    import pandas as pd

    from openanomaly.core.detect import align_to_grid

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None
    if list(frame.columns[:2]) != ["timestamp", "value"]:
        raise UsageError(f"{str(path)!r}: expected columns 'timestamp,value', got {list(frame.columns)}")
    try:
        stamps = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ms").astype("int64").to_numpy()
        values = pd.to_numeric(frame["value"]).to_numpy(np.float64)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{str(path)!r}: {error}") from None
    order = np.argsort(stamps, kind="stable")
    stamps, values = stamps[order], values[order]
    keep = np.r_[np.diff(stamps) > 0, True]  # the last of duplicate timestamps wins
    raw = SeriesMatrix(({"__name__": name, "source": path.name},), stamps[keep], values[keep][None, :])
    return align_to_grid(raw, step_ms=step_ms)
