"""The window's write, side by side: a claimed-fresh range (no read-back) vs reading back.

Why: a window's write used to read back the outputs already stored in its range before
sending, and the TSDB's cost for that read grows with every output series it holds, so
the write grew faster than the series count, and more so once the outputs existed. Now a
window first claims its range in one marker series (:func:`openanomaly.runtime.window.claim`)
and reads back only where an earlier run claimed it (a retry, an overlap).

Starts a throw-away VictoriaMetrics, loads the series (``scale_out.py``'s data and
pipeline: model ``default``, 5-minute step), fetches and scores one window shard by shard
once, then writes that window's outputs at a run of consecutive windows, the two ways in
alternating order, each timed whole (every shard):

- ``claimed``: as shipped: ``claim`` (nothing marked), then every shard's
  ``write(..., fresh=True)``.
- ``read_back``: the way before: every shard's ``write`` reads back its outputs first.

The first two windows meet a TSDB that holds none of the pipeline's outputs; the later
ones meet one that holds them (steady state, every window after the first).

    uv run python benchmarks/write_cost.py --series 2000          # quick
    uv run python benchmarks/write_cost.py                        # 20k and 100k series

Writes ``benchmarks/results/write_cost.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from _cluster import machine, start_vm
from _results import RESULTS, write_result
from scale_out import STEP_MS, load, pipeline_for, shard_queries

WINDOWS = 6  # per size: claimed / read_back alternating, the first pair before any output exists


def measure(url: str, series: int, group: int, end_ms: int) -> dict[str, Any]:
    """One size: score one window, then write it at ``WINDOWS`` windows both ways."""
    from openanomaly.core.config import TSDBSettings
    from openanomaly.core.detect import score_range
    from openanomaly.io.tsdb import PrometheusClient
    from openanomaly.models.registry import load_forecaster
    from openanomaly.runtime.window import claim, fetch, write

    pipeline = pipeline_for(f"write-{series}", series, group)
    forecaster = load_forecaster("default")
    start = end_ms - STEP_MS
    windows: list[dict[str, Any]] = []
    with PrometheusClient(TSDBSettings(url=url, timeout=300)) as client:
        shards = []
        for query in shard_queries(client, pipeline, start, end_ms):
            shard = pipeline.model_copy(update={"query": query})
            block = fetch(client, shard, start_ms=start, end_ms=end_ms)
            shards.append((shard, score_range(block, shard, forecaster, start_ms=start, end_ms=end_ms)))
        for k in range(WINDOWS):
            way = ("claimed", "read_back")[k % 2]
            shift = (WINDOWS - k) * STEP_MS  # earlier windows than the scored one, each new
            began = time.perf_counter()
            fresh = (
                claim(client, pipeline, start_ms=start - shift, end_ms=end_ms - shift)
                if way == "claimed"
                else False
            )
            written = present = 0
            for shard, detection in shards:
                moved = dataclasses.replace(detection, timestamps=detection.timestamps - shift)
                w, p = write(client, shard, moved, fresh=fresh)
                written, present = written + w, present + p
            row = {
                "window": k + 1,
                "way": way,
                "outputs_stored_before": "none" if k == 0 else "earlier windows'",
                "seconds": round(time.perf_counter() - began, 2),
                "samples_written": written,
                "samples_present": present,
            }
            print(series, row, flush=True)
            windows.append(row)
    steady = {way: [w["seconds"] for w in windows[2:] if w["way"] == way] for way in ("claimed", "read_back")}
    claimed, read_back = (sum(v) / len(v) for v in (steady["claimed"], steady["read_back"]))
    return {
        "series": series,
        "shards": len(shards),
        "windows": windows,
        "steady_claimed_s": round(claimed, 2),
        "steady_read_back_s": round(read_back, 2),
        "speedup": round(read_back / claimed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", default="20000,100000", help="comma list of window sizes (series)")
    parser.add_argument("--out", default=str(RESULTS / "write_cost.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.series.split(",")]
    group = min(sizes)
    day = 86_400_000
    end_ms = (int(time.time() * 1000) // 3_600_000 - 1) * 3_600_000
    record: dict[str, Any] = {
        "benchmark": "write_cost",
        "pipeline": {"model": "default", "step": "5m", "infer_every": "5m", "context": "3d"},
        "machine": machine(),
        "note": "shared 2-core machine; one VictoriaMetrics (default flags but no dedup), both ways "
        "alternating in one run; steady = windows 3..6, when earlier windows' outputs are stored",
        "sizes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        vm, url = start_vm(Path(tmp) / "vm", dedup=False)
        try:
            load_s = load(
                url, series=max(sizes), group=group, start_ms=end_ms - 3 * day - 2 * STEP_MS, end_ms=end_ms
            )
            record["load_seconds"] = round(load_s, 1)
            for series in sizes:
                record["sizes"].append(measure(url, series, group, end_ms))
                write_result(args.out, record)
        finally:
            vm.terminate()
            vm.wait(30)
    print(f"{'series':>8} {'claimed s':>10} {'read back s':>12} {'speedup':>8}")
    for size in record["sizes"]:
        claimed, read_back = size["steady_claimed_s"], size["steady_read_back_s"]
        print(f"{size['series']:>8} {claimed:>10} {read_back:>12} {size['speedup']:>8}")


if __name__ == "__main__":
    main()
