"""What one scheduled window costs the pure core: ``detect`` on many series, no TSDB.

Usage::

    uv run python benchmarks/window_cost.py [--series 1000] [--context-days 28] [--repeat 3]

Scores the newest point of ``--series`` noisy daily-seasonal series at a 5-minute step
with ``default`` and the calibration stage, as the scheduler's window does after its
fetch, and reports seconds per window and milliseconds per series (best of ``--repeat``).
Writes ``benchmarks/results/window_cost.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _results import RESULTS, write_result

from openanomaly.core.config import Pipeline
from openanomaly.core.detect import score_range
from openanomaly.core.series import SeriesMatrix
from openanomaly.models.registry import load_forecaster

STEP_MS = 300_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--context-days", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    points = args.context_days * 288 + 1
    t = np.arange(points)
    rng = np.random.default_rng(0)
    values = 50 + 10 * np.sin(2 * np.pi * t / 288)[None, :] + rng.standard_normal((args.series, points))
    grid = STEP_MS * (10**7 + t)  # an absolute grid, as query_range returns
    series = SeriesMatrix(tuple({"i": str(i)} for i in range(args.series)), grid, values)
    pipeline = Pipeline.model_validate(
        {
            "name": "cost",
            "query": "m",
            "step": "5m",
            "model": "default",
            "schedule": {"infer_every": "5m", "context": f"{args.context_days}d"},
        }
    )
    model = load_forecaster("default")
    times = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        result = score_range(series, pipeline, model, start_ms=int(grid[-2]), end_ms=int(grid[-1]))
        times.append(time.perf_counter() - began)
    best = min(times)
    print(
        f"{args.series} series x {points - 1} points of context: {best:.2f} s per window, "
        f"{1000 * best / args.series:.2f} ms per series ({result.points_scored} points scored)"
    )
    write_result(
        RESULTS / "window_cost.json",
        {
            "benchmark": "window_cost",
            "series": args.series,
            "context_points": points - 1,
            "seconds_per_window": best,
            "ms_per_series": 1000 * best / args.series,
            "runs_s": times,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
