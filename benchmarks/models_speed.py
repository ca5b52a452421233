"""Forecast speed of every model adapter on CPU: series per second for one ``forecast`` call.

Contexts are 1,440 points (one day of 1-minute samples), horizon 10, levels
[0.1, 0.5, 0.9]. Each adapter gets a series count that keeps its run to seconds; the
rate is series / time of one warm call (a first call warms numba / torch). Reports
wall time and this process' CPU time; trust the CPU figure on a shared, loaded machine
(torch may use several threads, so its CPU time can exceed wall time).

Chronos runs on random-weight checkpoints built locally (no hub): ``tiny`` (tests) and
``base`` (the layer sizes of the released chronos-bolt-small / chronos-2, so the speed
is representative). Also compares the statsforecast adapter's per-series loop with the
``StatsForecast`` DataFrame API (``n_jobs`` 1 and 2) on the same data.

    uv run python benchmarks/models_speed.py [--quick]

Writes ``benchmarks/results/models_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import RESULTS, write_result

from openanomaly.models import load_forecaster
from openanomaly.models.tiny import build_tiny_chronos

LENGTH = 1440
HORIZON = 10
LEVELS = [0.1, 0.5, 0.9]


def data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH)
    daily = np.sin(2 * np.pi * t / 60)[None, :]  # hourly cycle at 1-minute steps
    return 100 + 10 * daily + rng.normal(0, 2, (n, LENGTH))


def timed(call: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, model: Any, n: int) -> dict[str, Any]:
    contexts = data(n)
    model.forecast(contexts[:2], HORIZON, LEVELS)  # warm-up (JIT, threads)
    wall, cpu = timed(lambda: model.forecast(contexts, HORIZON, LEVELS))
    row = {
        "adapter": name,
        "series": n,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "series_per_s_wall": round(n / wall, 1),
        "series_per_s_cpu": round(n / cpu, 1) if cpu > 0 else None,
    }
    print(json.dumps(row), flush=True)
    return row


def statsforecast_api(model_name: str, season: int, n: int, n_jobs: int) -> dict[str, Any]:
    """The StatsForecast DataFrame API on the same data, for comparison with the adapter."""
    import pandas as pd
    import statsforecast.models as sf
    from statsforecast import StatsForecast

    values = data(n)
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(n), LENGTH),
            "ds": np.tile(np.arange(LENGTH), n),
            "y": values.ravel(),
        }
    )
    model = getattr(sf, model_name)(season_length=season)
    engine = StatsForecast(models=[model], freq=1, n_jobs=n_jobs)
    wall, _cpu = timed(lambda: engine.forecast(df=frame, h=HORIZON, level=[80]))
    row = {
        "adapter": f"StatsForecast API {model_name} n_jobs={n_jobs}",
        "series": n,
        "wall_s": round(wall, 3),
        "series_per_s_wall": round(n / wall, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer series, no base-size Chronos")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0

    def count(n: int) -> int:
        return max(4, int(n * scale))

    rows = [
        measure("zscore", load_forecaster("zscore"), count(10_000)),
        measure("mad", load_forecaster("mad"), count(10_000)),
        measure(
            "statsforecast:SeasonalNaive season 60",
            load_forecaster("statsforecast:SeasonalNaive", season_length=60),
            count(1000),
        ),
        measure(
            "statsforecast:AutoETS season 24",
            load_forecaster("statsforecast:AutoETS", season_length=24),
            count(10),
        ),
        measure("statsforecast:AutoARIMA", load_forecaster("statsforecast:AutoARIMA"), count(5)),
        measure(
            "statsforecast:MSTL season 60",
            load_forecaster("statsforecast:MSTL", season_length=60),
            count(20),
        ),
    ]
    rows.append(statsforecast_api("SeasonalNaive", 60, count(1000), 1))
    rows.append(statsforecast_api("SeasonalNaive", 60, count(1000), 2))
    rows.append(statsforecast_api("AutoETS", 24, count(10), 1))
    rows.append(statsforecast_api("AutoETS", 24, count(10), 2))
    with tempfile.TemporaryDirectory() as tmp:
        sizes = ["tiny"] if args.quick else ["tiny", "base"]
        for kind in ("bolt", "chronos2"):
            for size in sizes:
                path = build_tiny_chronos(kind, Path(tmp) / f"{kind}-{size}", size=size, context_length=2048)
                model = load_forecaster(f"chronos:{path}", device="cpu", batch_size=64)
                n = count(1000 if size == "tiny" else 100)
                rows.append(measure(f"chronos {kind} ({size}, random weights) cpu", model, n))
    result = {
        "context_length": LENGTH,
        "horizon": HORIZON,
        "levels": LEVELS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    write_result(RESULTS / "models_speed.json", result)


if __name__ == "__main__":
    main()
