"""Which windows and fits are due: the scheduler's arithmetic on the ``infer_every`` grid, pure.

Windows sit on a fixed grid: ``((k - 1) * infer_every, k * infer_every]``. A pipeline
that falls behind (a TSDB outage, a restart) catches up window by window on the same
grid, so a retried window produces exactly what it would have on time.
"""

from __future__ import annotations

from openanomaly.core.config import Pipeline

__all__ = ["GAP_AFTER_MS", "due_windows", "fit_due", "gap_after_ms"]

GAP_AFTER_MS = 3_600_000
"""How long a window without samples stays due (at least ten windows): long enough for a
TSDB restart or a delayed remote write, short enough that a dead target is reported."""


def gap_after_ms(pipeline: Pipeline) -> int:
    """How long after its end a window with no sample is retried before it is reported as a gap."""
    return max(GAP_AFTER_MS, 10 * round(pipeline.schedule.infer_every.total_seconds() * 1000))


def due_windows(
    *, last_end_ms: int | None, now_ms: int, every_ms: int, delay_ms: int = 0, max_windows: int = 60
) -> list[tuple[int, int]]:
    """The windows ``(start, end]`` to score now, oldest first, at most ``max_windows``.

    Windows end on multiples of ``every_ms`` and end at or before ``now - delay``. A
    pipeline never run before starts with the latest complete window. After a gap the
    missed windows come back in order (the rest on later ticks when over ``max_windows``).
    If ``last_end_ms`` is off the grid (``infer_every`` was changed), the first window
    runs from it to the next grid point, so nothing is skipped or scored twice.

    Example:
        >>> due_windows(last_end_ms=120_000, now_ms=250_000, every_ms=60_000)
        [(120000, 180000), (180000, 240000)]
    """
    if every_ms <= 0:
        raise ValueError(f"every_ms must be positive, got {every_ms}")
    horizon = (now_ms - delay_ms) // every_ms * every_ms
    if last_end_ms is None:
        return [(horizon - every_ms, horizon)]
    windows = []
    start = last_end_ms
    while len(windows) < max_windows:
        end = start // every_ms * every_ms + every_ms
        if end > horizon:
            break
        windows.append((start, end))
        start = end
    return windows


def fit_due(*, last_fit_ms: int | None, window_start_ms: int, fit_every_ms: int) -> bool:
    """True when the model must be (re)fitted before scoring a window starting at ``window_start_ms``."""
    return last_fit_ms is None or window_start_ms - last_fit_ms >= fit_every_ms
