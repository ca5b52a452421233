"""Forecast quality (MASE, WQL) and speed of the shipped Chronos-Bolt against the baselines.

    uv run python benchmarks/forecast_quality.py [--origins 8] [--shipped chronos:openanomaly-bolt-mini]

Series: every CSV under ``../shared/benchmarks/nab`` and ``../shared/benchmarks/smd``
(NAB realKnownCause + artificialWithAnomaly, SMD machine-1; none of them is used in
pretraining). Each series is cut at ``--origins`` rolling origins spread evenly over
its length: the model sees the points before the origin (its context: 512 points, or
two days when that is longer, so SeasonalNaive sees a full daily season; Chronos-Bolt
reads only the last 512) and forecasts the next 64 points, levels 0.1 … 0.9.

Metrics per series, over all its windows, then the mean over series (each series weighs
the same, whatever its scale; a geometric mean would be undefined, since SeasonalNaive
and ``default`` forecast NAB's artificial series exactly):

* MASE: mean absolute error of the median / mean absolute one-step change in the
  contexts.
* WQL: weighted quantile loss, ``sum mean_q 2 * pinball_q / sum |y|``.

A few series near zero (SMD is min-max scaled) or a model's exploding band on one series
can dominate a mean, so the table also prints the median over series (not in the JSON).

Series whose scale is zero (flat contexts, an all-zero future) are left out for every
model. A forecast step that some model leaves NaN (``default`` does for a few steps past
what its seasonal history covers) is left out for every model too; the count is printed.

Speed: series/s of one batched ``forecast`` call over all windows on this machine's CPU
(after a warm-up call), same run, same windows.

Writes ``benchmarks/results/forecast_quality.json``:
``{"shipped": spec, "models": {spec: {"mase", "wql", "series_per_s"}}}``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from _results import RESULTS, write_result

from openanomaly.models import load_forecaster

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
DEFAULT_OUT = RESULTS / "forecast_quality.json"
SHIPPED = "chronos:openanomaly-bolt-mini"
HORIZON = 64
CONTEXT = 512
LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@dataclass(frozen=True)
class Windows:
    """All evaluation windows: contexts left-padded with NaN, futures, and their series."""

    contexts: np.ndarray  # (w, longest context)
    futures: np.ndarray  # (w, HORIZON)
    seasons: np.ndarray  # (w,) steps per day of each window's series
    series: np.ndarray  # (w,) index of each window's series
    names: list[str]  # one per series


def read_series(path: Path) -> tuple[np.ndarray, int]:
    """A NAB-format CSV → (values, steps per day from the median sampling interval)."""
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str)
    values = rows[:, 1].astype(np.float64)
    stamps = np.array([datetime.fromisoformat(t).timestamp() for t in rows[:, 0]])
    step = float(np.median(np.diff(stamps)))
    return values, max(1, round(86400 / step))


def build_windows(roots: list[Path], origins: int) -> Windows:
    """``origins`` evenly spaced forecast origins per series of every CSV under ``roots``."""
    contexts, futures, seasons, series, names = [], [], [], [], []
    for root in roots:
        for path in sorted(root.rglob("*.csv")):
            names.append(f"{path.parent.name}/{path.name}")
            values, day = read_series(path)
            length = max(CONTEXT, 2 * day)
            if values.size < length + HORIZON:
                length = values.size - HORIZON * origins  # short series: what is there
            for origin in np.linspace(length, values.size - HORIZON, origins).astype(int):
                contexts.append(values[origin - length : origin])
                futures.append(values[origin : origin + HORIZON])
                seasons.append(day)
                series.append(len(names) - 1)
    longest = max(c.size for c in contexts)
    padded = np.full((len(contexts), longest), np.nan)
    for row, context in enumerate(contexts):
        padded[row, longest - context.size :] = context
    return Windows(padded, np.stack(futures), np.array(seasons), np.array(series), names)


def scores(
    windows: Windows, median: np.ndarray, quantiles: np.ndarray, scored: np.ndarray
) -> dict[str, float]:
    """Pooled MASE and WQL over the ``scored`` ``(window, step)`` points (module docstring)."""
    y = np.where(scored, windows.futures, 0.0)
    steps = scored.sum(axis=1)
    error = np.where(scored, np.abs(median - windows.futures), 0.0).sum(axis=1)
    levels = np.asarray(LEVELS)
    gap = windows.futures[:, :, None] - quantiles
    pinball = np.where(scored[:, :, None], np.maximum(levels * gap, (levels - 1) * gap), 0.0)
    scale = _naive_scale(windows.contexts) * steps
    mase, wql = [], []
    for index in np.unique(windows.series[steps > 0]):
        rows = (windows.series == index) & (steps > 0)
        mase.append(error[rows].sum() / scale[rows].sum())
        wql.append(2 * pinball[rows].mean(axis=2).sum() / np.abs(y[rows]).sum())
    return {
        "mase": round(float(np.mean(mase)), 4),
        "wql": round(float(np.mean(wql)), 4),
        "mase_median": round(float(np.median(mase)), 4),
        "wql_median": round(float(np.median(wql)), 4),
    }


def _naive_scale(contexts: np.ndarray) -> np.ndarray:
    return np.nanmean(np.abs(np.diff(contexts, axis=1)), axis=1)


def run_model(spec: str, params: dict[str, Any], windows: Windows) -> tuple[np.ndarray, np.ndarray, float]:
    """(median, quantiles, series/s) of one batched forecast over all windows."""
    model = load_forecaster(spec, **params)
    model.forecast(windows.contexts[:2], HORIZON, LEVELS)  # warm-up: numba JIT, torch threads
    started = time.perf_counter()
    forecast = model.forecast(windows.contexts, HORIZON, LEVELS)
    seconds = time.perf_counter() - started
    return forecast.median, forecast.quantiles, windows.contexts.shape[0] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / "nab", SHARED / "smd"])
    parser.add_argument("--origins", type=int, default=8, help="forecast origins per series")
    parser.add_argument("--shipped", default=SHIPPED, help="the Chronos spec to evaluate")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    windows = build_windows(args.data, args.origins)
    forecasts: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for spec, params in [
        (args.shipped, {"device": "cpu"}),
        ("statsforecast:SeasonalNaive", None),
        ("statsforecast:AutoETS", {}),
        ("default", {}),
    ]:
        # SeasonalNaive repeats the last day, which differs per series: one call per season.
        forecasts[spec] = _per_season(spec, windows) if params is None else run_model(spec, params, windows)
    scored = np.isfinite(windows.futures) & _usable(windows)[:, None]
    for spec, (median, quantiles, _) in forecasts.items():
        finite = np.isfinite(quantiles).all(axis=2) & np.isfinite(median)
        print(f"{spec}: {int((scored & ~finite).sum())} scored points without a forecast")
        scored &= finite
    models = {}
    print(f"{'model':32s} {'MASE':>8s} {'WQL':>10s} {'MASE med':>9s} {'WQL med':>8s} {'series/s':>9s}")
    for spec, (median, quantiles, rate) in forecasts.items():
        row = scores(windows, median, quantiles, scored)
        print(
            f"{spec:32s} {row['mase']:8.4f} {row['wql']:10.4f} {row['mase_median']:9.4f} "
            f"{row['wql_median']:8.4f} {rate:9.1f}"
        )
        models[spec] = {"mase": row["mase"], "wql": row["wql"], "series_per_s": round(rate, 1)}
    print(
        f"{windows.contexts.shape[0]} windows of {len(windows.names)} series ({args.origins} origins each), "
        f"{int(scored.sum())} of {scored.size} points scored"
    )
    write_result(args.out, {"shipped": args.shipped, "models": models})


def _usable(windows: Windows) -> np.ndarray:
    """Windows of series with a non-zero scale and future: MASE and WQL are defined."""
    usable = np.zeros(windows.contexts.shape[0], dtype=bool)
    scale = _naive_scale(windows.contexts)
    weight = np.nansum(np.abs(windows.futures), axis=1)
    for index in np.unique(windows.series):
        rows = windows.series == index
        usable[rows] = (scale[rows] > 0).all() and weight[rows].sum() > 0
    return usable


def _per_season(spec: str, windows: Windows) -> tuple[np.ndarray, np.ndarray, float]:
    """SeasonalNaive with each series' own daily season (one batched call per season)."""
    median = np.full(windows.futures.shape, np.nan)
    quantiles = np.full((*windows.futures.shape, len(LEVELS)), np.nan)
    seconds = 0.0
    for season in np.unique(windows.seasons):
        rows = np.flatnonzero(windows.seasons == season)
        part = Windows(
            windows.contexts[rows], windows.futures[rows], windows.seasons[rows], windows.series[rows], []
        )
        m, q, rate = run_model(spec, {"season_length": int(season)}, part)
        median[rows], quantiles[rows] = m, q
        seconds += rows.size / rate
    return median, quantiles, windows.contexts.shape[0] / seconds


if __name__ == "__main__":
    main()
