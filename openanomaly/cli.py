"""The ``openanomaly`` command: validate | run [--once] | scheduler | backtest | example | playground | demo.

User errors (bad YAML, unknown model, unreachable TSDB, no data) print one line per
problem to stderr and exit with status 2; anything else is a bug and keeps its
traceback. ``-v`` turns on INFO logging, ``-vv`` DEBUG.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from openanomaly.configstore.files import YamlConfigStore
from openanomaly.core.config import Config, Pipeline, format_duration
from openanomaly.core.episodes import EpisodeCollector, check_labels, print_episodes, print_label_check
from openanomaly.core.series import format_labels
from openanomaly.core.times import format_iso as _iso
from openanomaly.core.times import parse_time
from openanomaly.errors import ConfigError, OpenAnomalyError, UsageError
from openanomaly.io.csvseries import read_csv_series

if TYPE_CHECKING:
    from openanomaly.core.detect import Detection
    from openanomaly.models.base import Forecaster
    from openanomaly.runtime.window import RunResult

__all__ = ["EXAMPLES_DIR", "UsageError", "main", "parse_time", "read_csv_series"]

log = logging.getLogger("openanomaly")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
"""Bundled example pipelines and data (present in a source checkout)."""

EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------- tables for --out


class FrameCollector:
    """Long-format rows (one per scored point) for ``--out``: CSV or Parquet."""

    COLUMNS = (
        "timestamp",
        "pipeline",
        "series",
        "value",
        "anomaly_score",
        "yhat",
        "yhat_lower",
        "yhat_upper",
    )

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, detection: Detection) -> int:
        rows, cols = np.nonzero(np.isfinite(detection.anomaly_score))
        if rows.size:
            names = np.array([format_labels(labels) for labels in detection.labels], dtype=object)
            self.parts.append(
                {
                    "timestamp": detection.timestamps[cols],
                    "series": names[rows],
                    "value": detection.actual[rows, cols],
                    "anomaly_score": detection.anomaly_score[rows, cols],
                    "yhat": detection.yhat[rows, cols],
                    "yhat_lower": detection.yhat_lower[rows, cols],
                    "yhat_upper": detection.yhat_upper[rows, cols],
                }
            )
        return 0


def _check_out(path: Path) -> None:
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--out {str(path)!r}: the file name must end in .csv or .parquet")
    if not path.parent.exists():
        raise UsageError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist")


def _write_out(path: Path, collectors: Sequence[FrameCollector]) -> int:
    import pandas as pd

    frames = [
        pd.DataFrame({"pipeline": collector.pipeline, **part})
        for collector in collectors
        for part in collector.parts
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FrameCollector.COLUMNS)
    frame = frame.reindex(columns=FrameCollector.COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"].astype("int64"), unit="ms", utc=True)
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return len(frame)


# --------------------------------------------------------------------------- commands


def _load_config(path: str) -> Config:
    """The file's settings with the pipelines of its store (the file, or S3: ``settings.config_store``)."""
    from openanomaly.configstore.stores import open_stores

    return open_stores(path)[0].load()


def _select(config: Config, name: str | None, source: str) -> list[Pipeline]:
    if name is None:
        if not config.pipelines:
            raise ConfigError("no pipelines defined", source=source)
        return list(config.pipelines)
    try:
        return [config.pipeline(name)]
    except KeyError:
        known = ", ".join(p.name for p in config.pipelines) or "none"
        raise UsageError(f"{source}: no pipeline named {name!r} (defined: {known})") from None


def _forecaster(pipeline: Pipeline) -> Forecaster:
    from openanomaly.models.registry import load_forecaster

    return load_forecaster(pipeline.model.spec, **pipeline.model.params)


@contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(desc=description, unit="pt", disable=None, leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _print_result(result: RunResult) -> None:
    print(
        f"{result.pipeline}: ({_iso(result.start_ms)}, {_iso(result.end_ms)}] "
        f"{result.series_scored}/{result.series_in} series scored, {result.points_scored} points, "
        f"{result.anomalies} anomalous, {result.samples_written} samples written"
        + (f" ({result.samples_present} already present, not rewritten)" if result.samples_present else "")
    )
    warm_up = result.points_in - result.points_scored
    if warm_up > 0:
        print(f"  {warm_up} points not scored: warm-up ({_WARM_UP}) or no context before them")
    for labels in result.skipped:
        print(f"  skipped (no context before some points): {format_labels(labels)}", file=sys.stderr)


_WARM_UP = "the residual record spans less than scoring.calibration.min_history"


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load_config(args.file)
    names = ", ".join(p.name for p in config.pipelines) or "no pipelines"
    print(f"{args.file}: OK ({len(config.pipelines)} pipelines: {names})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    if not args.once:
        return _run_scheduler(args, config)
    from openanomaly.io.tsdb import PrometheusClient
    from openanomaly.runtime.window import fetch, latest_window, local_scorer, run_window

    pipelines = _select(config, args.pipeline, args.config)
    now_ms = parse_time(args.now) if args.now else int(datetime.now(UTC).timestamp() * 1000)
    forecasters = {p.name: _forecaster(p) for p in pipelines}
    with PrometheusClient(config.settings.tsdb) as client:
        # Fetch (and so check) every pipeline's window before writing any, so a bad query
        # leaves nothing half written; each window is scored from that one fetch.
        windows = []
        for pipeline in pipelines:
            start_ms, end_ms = latest_window(pipeline, now_ms)
            block = fetch(client, pipeline, start_ms=start_ms, end_ms=end_ms)
            windows.append((pipeline, start_ms, end_ms, block))
        for pipeline, start_ms, end_ms, block in windows:
            scorer = local_scorer(pipeline, forecasters[pipeline.name])
            window = {"start_ms": start_ms, "end_ms": end_ms, "source": block, "sink": client}
            _, result = run_window(pipeline, scorer, **window)
            _print_result(result)
    return 0


def _run_scheduler(args: argparse.Namespace, config: Config) -> int:
    """``run`` without ``--once``: the scheduler in this process, its model actors on a local Ray."""
    import signal
    import time

    import ray

    from openanomaly.runtime.raystart import start_ray
    from openanomaly.runtime.scheduler import Scheduler

    if args.pipeline:
        raise UsageError("--pipeline works with --once; the scheduler runs every pipeline of the file")
    address = args.address or "local"
    start_ray(address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 0)
    print(
        f"scheduling {len(config.pipelines)} pipelines from {args.config} on "
        f"{'a local Ray' if address == 'local' else address} ({cpus:g} CPUs); Ctrl-C or SIGTERM stops",
        flush=True,
    )
    scheduler = Scheduler(args.config, delay=round(args.delay * 1000))
    seen: dict[str, Any] = {}
    # ``docker stop`` and Kubernetes send SIGTERM, not Ctrl-C's SIGINT: both now stop the
    # same way, letting the windows in flight finish (a killed window would be redone, but
    # its samples could be half-written until then).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            scheduler.tick()
            time.sleep(args.tick)
            _print_progress(scheduler.status(), seen)
    except KeyboardInterrupt:
        print("stopping: letting the windows in flight finish…", file=sys.stderr, flush=True)
        scheduler.stop(wait=True)
        _print_progress(scheduler.status(), seen)
        return 0
    finally:
        ray.shutdown()


def _print_progress(status: dict[str, Any], seen: dict[str, Any]) -> None:
    """One line per window completed or failed since the last call, and each new config error.

    ``seen`` holds what was last printed: counts per pipeline name, and the config error
    under ``"config error"`` (a space: no pipeline name can collide with it).
    """
    error = status.get("config_error")
    if error and seen.get("config error") != error:
        print(f"error: {error}", file=sys.stderr, flush=True)
    seen["config error"] = error
    for record in status["pipelines"]:
        counts = (record["windows_total"], record["errors_total"] + record["no_data_total"])
        if seen.get(record["name"]) == counts:
            continue
        seen[record["name"]] = counts
        if record["state"] in ("idle", "running") and record["last_end_ms"] is not None:
            print(
                f"{record['name']}: window to {_iso(record['last_end_ms'])} done, "
                f"{record['series_scored']}/{record['series_in']} series scored, "
                f"{record['samples_written']} samples written, "
                f"{record['last_window_duration_s'] or 0:.2f}s",
                flush=True,
            )
        elif record["reason"]:
            print(f"{record['name']}: {record['state']}: {record['reason']}", file=sys.stderr, flush=True)


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Start the detached scheduler actor on a running cluster (KubeRay, compose, ``ray start``)."""
    import time

    import ray

    from openanomaly.runtime.raystart import start_ray
    from openanomaly.runtime.scheduler_actor import start_scheduler

    _load_config(args.config)  # a bad file is an error here, where the person who made it sees it
    path = str(Path(args.config).resolve())
    start_ray(args.address, namespace=args.namespace, logging_level=logging.WARNING)
    handle = start_scheduler(
        path,
        name=args.name,
        namespace=args.namespace,
        tick_s=args.tick,
        delay=round(args.delay * 1000),
    )
    print(f"scheduler {args.name!r} running in namespace {args.namespace!r} on {path}", flush=True)
    if args.detach:
        return 0
    print("Ctrl-C leaves it running in the cluster (it stops with the cluster: `ray stop`)", flush=True)
    seen: dict[str, Any] = {}
    try:
        while True:
            time.sleep(args.tick)
            _print_progress(ray.get(handle.status.remote()), seen)
    except KeyboardInterrupt:
        return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from openanomaly.io.tsdb import PrometheusClient
    from openanomaly.runtime.window import Tally, iter_blocks, local_scorer, run_window

    config = _load_config(args.config)
    pipelines = _select(config, args.pipeline, args.config)
    start_ms, end_ms = parse_time(args.start), parse_time(args.end)
    if end_ms <= start_ms:
        raise UsageError(f"--end {args.end!r} is not after --start {args.start!r}")
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out)
    if args.batch_chunks is not None and args.batch_chunks <= 0:
        raise UsageError(f"--batch-chunks must be positive, got {args.batch_chunks}")
    if args.top < 0:
        raise UsageError(f"--top must be 0 or more, got {args.top}")
    forecasters = {p.name: _forecaster(p) for p in pipelines}

    collectors = [FrameCollector(p.name) for p in pipelines]
    episodes = [EpisodeCollector(pipeline=p.name, step_ms=p.step_ms) for p in pipelines]
    tallies = [Tally() for _ in pipelines]
    ranges = [(start_ms // p.step_ms * p.step_ms, end_ms // p.step_ms * p.step_ms) for p in pipelines]
    with PrometheusClient(config.settings.tsdb) as client, _progress_bar("backtest") as progress:
        done: dict[str, tuple[int, int]] = {}

        def reporter(name: str) -> Callable[[int, int], None]:
            def report(points: int, total: int) -> None:
                done[name] = (points, total)
                progress(sum(d for d, _ in done.values()), sum(t for _, t in done.values()))

            return report

        batches = [
            iter_blocks(
                client,
                pipeline,
                start_ms=lo,
                end_ms=hi,
                batch_chunks=args.batch_chunks,
                progress=reporter(pipeline.name),
            )
            for pipeline, (lo, hi) in zip(pipelines, ranges, strict=True)
        ]
        # The first batch of every pipeline before any write: bad queries or no data fail
        # the whole command with nothing written.
        firsts = [next(iterator) for iterator in batches]
        sink = None if out is not None else client
        for index, pipeline in enumerate(pipelines):
            scorer = local_scorer(pipeline, forecasters[pipeline.name])
            for batch_start, batch_end, block in itertools.chain([firsts[index]], batches[index]):
                detection, result = run_window(
                    pipeline, scorer, start_ms=batch_start, end_ms=batch_end, source=block, sink=sink
                )
                episodes[index].add(detection)
                if out is not None:
                    collectors[index].add(detection)
                tallies[index].add(detection, result.samples_written, result.samples_present)
    for pipeline, tally, (lo, hi) in zip(pipelines, tallies, ranges, strict=True):
        _print_result(tally.result(pipeline, lo, hi))
    if out is not None:
        rows = _write_out(out, collectors)
        print(f"wrote {rows} scored points to {out}")
    every = [episode for collector in episodes for episode in collector.episodes]
    print_episodes(every, top=args.top)
    return 0


def _with_model(pipeline: Pipeline, spec: str) -> Pipeline:
    """The example pipeline with ``spec`` as its model.

    The example's band (0.05/0.95) is narrowed to the levels the model forecasts
    (Chronos-Bolt: 0.1..0.9), and the command says so: ``--model chronos:…`` is a demo
    that must run as written, where a pipelines file is refused and fixed by its author.
    """
    from openanomaly.models.registry import model_info

    try:
        pipeline = Pipeline.model_validate(pipeline.model_dump() | {"model": spec})
    except ValidationError as error:
        problem = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise UsageError(f"--model {spec!r}: {problem}") from None
    levels = model_info(pipeline.model.spec, pipeline.model.params).levels
    if levels is None:
        return pipeline
    wanted = list(pipeline.scoring.quantiles)
    band = [min(max(level, levels[0]), levels[-1]) for level in wanted]
    if band != wanted:
        print(f"{spec} forecasts levels {levels[0]}..{levels[-1]}: band {wanted} narrowed to {band}")
        scoring = pipeline.scoring.model_dump() | {"quantiles": band}
        pipeline = Pipeline.model_validate(pipeline.model_dump() | {"scoring": scoring})
    return pipeline


def cmd_example(args: argparse.Namespace) -> int:
    from openanomaly.core.detect import score_range
    from openanomaly.runtime.window import scored_range

    config_path = EXAMPLES_DIR / "example.yaml"
    if not config_path.exists():
        raise UsageError(f"the bundled example is missing: {config_path} (run from a source checkout)")
    pipeline = YamlConfigStore(config_path, env={}).load().pipelines[0]
    if args.model is not None:
        pipeline = _with_model(pipeline, args.model)
    data = EXAMPLES_DIR / "data" / "ec2_request_latency_system_failure.csv"
    series = read_csv_series(data, step_ms=pipeline.step_ms, name="ec2_request_latency")
    start_ms, end_ms = scored_range(series, pipeline)
    forecaster = _forecaster(pipeline)
    print(f"backtesting {data.name} ({series.values.shape[1]} points) with model {pipeline.model.label}")
    with _progress_bar("example") as progress:
        detection = score_range(
            series, pipeline, forecaster, start_ms=start_ms, end_ms=end_ms, progress=progress
        )
    frame = FrameCollector(pipeline.name)
    frame.add(detection)
    out = Path(args.out)
    _check_out(out)
    rows = _write_out(out, [frame])
    episodes = EpisodeCollector(pipeline=pipeline.name, step_ms=pipeline.step_ms)
    episodes.add(detection)
    with np.errstate(invalid="ignore"):
        flagged = int(np.count_nonzero(detection.anomaly_score > 1))
    context = format_duration(pipeline.schedule.context)
    warm_up = detection.points_in - detection.points_scored
    print(
        f"scored {detection.points_scored} points after {context} of context, "
        f"{flagged} above 1 in {len(episodes.episodes)} episodes; wrote {rows} rows to {out}"
        + (f"; {warm_up} warm-up points not scored ({_WARM_UP})" if warm_up else "")
    )
    print_episodes(episodes.episodes, top=args.top)
    labels = json.loads((EXAMPLES_DIR / "data" / "labels.json").read_text())[data.name]
    windows = [(parse_time(begin), parse_time(end)) for begin, end in labels]
    print(f"\nagainst the NAB labels (examples/data/labels.json, {len(windows)} windows):")
    print_label_check(check_labels(episodes.episodes, windows), top=args.top)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The compose demo's stack as local processes (:mod:`openanomaly.demo.stack`)."""
    from openanomaly.core.config import parse_duration
    from openanomaly.demo.stack import run_demo

    try:
        duration = parse_duration(args.duration).total_seconds()
        every = parse_duration(args.incidents_every).total_seconds()
    except ValueError as error:
        raise UsageError(f"--duration/--incidents-every: {error}") from None
    if duration <= 0 or every <= 0 or every % 60:
        raise UsageError("--duration must be positive and --incidents-every a whole number of minutes")
    return run_demo(
        duration_s=duration,
        tsdb_url=args.tsdb,
        serve=args.serve,
        every_ms=round(every * 1000),
        report=_print_progress,
    )


# --------------------------------------------------------------------------- entry point


def cmd_playground(args: argparse.Namespace) -> int:
    from openanomaly.ui import launch

    launch(args.config, host=args.host, port=args.port, tsdb_url=args.tsdb_url)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openanomaly", description="Anomaly detection for Prometheus / VictoriaMetrics metrics."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logging")
    # -v is accepted after the command too; SUPPRESS keeps the subparser from resetting it to 0.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="-v info, -vv debug logging"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", parents=[common], help="check a pipelines YAML file")
    validate.add_argument("file")
    validate.set_defaults(handler=cmd_validate)

    run = commands.add_parser(
        "run", parents=[common], help="run the pipelines on schedule (a local Ray), or --once"
    )
    run.add_argument("-c", "--config", required=True, help="pipelines YAML file (reloaded on change)")
    run.add_argument("--once", action="store_true", help="score the latest complete window of each and exit")
    run.add_argument("--pipeline", help="with --once: only this pipeline")
    run.add_argument("--now", help="with --once: score the window ending at or before this time instead")
    run.add_argument("--address", help="Ray cluster to use instead of starting a local one (e.g. auto)")
    run.add_argument("--tick", type=float, default=5.0, help="seconds between scheduling passes")
    run.add_argument("--delay", type=float, default=0.0, help="seconds to wait after a window ends")
    run.set_defaults(handler=cmd_run)

    sched = commands.add_parser(
        "scheduler", parents=[common], help="start the scheduler actor on a running Ray cluster"
    )
    sched.add_argument("-c", "--config", required=True, help="pipelines YAML file (reloaded on change)")
    sched.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    sched.add_argument("--name", default="openanomaly-scheduler", help="actor name")
    sched.add_argument("--namespace", default="openanomaly", help="Ray namespace")
    sched.add_argument("--tick", type=float, default=5.0, help="seconds between scheduling passes")
    sched.add_argument("--delay", type=float, default=0.0, help="seconds to wait after a window ends")
    sched.add_argument("--detach", action="store_true", help="exit once it runs (it keeps running)")
    sched.set_defaults(handler=cmd_scheduler)

    back = commands.add_parser("backtest", parents=[common], help="score a past range, in batches")
    back.add_argument("-c", "--config", required=True, help="pipelines YAML file")
    back.add_argument("--start", required=True, help="ISO 8601, unix seconds or now-<duration>")
    back.add_argument("--end", default="now", help="ISO 8601, unix seconds or now-<duration> (default now)")
    back.add_argument("--pipeline", help="only this pipeline")
    back.add_argument("--out", help="write results to this .csv/.parquet instead of the TSDB")
    back.add_argument("--batch-chunks", type=int, default=None, help="chunks per forecast batch")
    back.add_argument("--top", type=int, default=10, help="anomaly episodes to list")
    back.set_defaults(handler=cmd_backtest)

    example = commands.add_parser(
        "example", parents=[common], help="backtest the bundled example series (no TSDB needed)"
    )
    example.add_argument("--out", default="openanomaly-example.csv", help=".csv or .parquet results")
    example.add_argument("--model", help="model spec instead of the example's (e.g. statsforecast:AutoETS)")
    example.add_argument("--top", type=int, default=5, help="anomaly episodes to list")
    example.set_defaults(handler=cmd_example)

    playground = commands.add_parser(
        "playground", parents=[common], help="web page to try queries, models and bands (Gradio)"
    )
    playground.add_argument("-c", "--config", help="pipelines YAML file (optional)")
    playground.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    playground.add_argument("--port", type=int, default=7860)
    playground.add_argument("--tsdb-url", help="TSDB for ad-hoc queries when there is no -c")
    playground.set_defaults(handler=cmd_playground)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="the compose demo without containers: TSDB, demo data, scheduler, vmalert; alerts in minutes",
    )
    demo.add_argument(
        "--duration", default="10m", help="how long to run once the demo data starts (default 10m)"
    )
    demo.add_argument(
        "--tsdb", metavar="URL", help="use this running VictoriaMetrics instead of starting one"
    )
    demo.add_argument("--serve", action="store_true", help="also start the Serve app and its playground")
    demo.add_argument(
        "--incidents-every",
        default="2m",
        help="spacing of the planted incidents (default 2m: at 2, 4, 6 min)",
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error)."""
    args = _parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        return args.handler(args)
    except OpenAnomalyError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
