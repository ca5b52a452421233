"""The scheduler: one named, detached Ray actor that owns every pipeline's schedule.

Every ``tick`` (a background loop, or a test calling ``tick(now_ms=...)``) it

1. reloads the pipeline YAML if it changed (a bad edit keeps the last good config and
   shows the error in the status; pipelines added or removed take effect at once);
2. for each pipeline that is not already running, computes the windows that are due
   and hands them to a worker thread, which runs (if due) a fit, then each window in
   order through the one window path (:mod:`openanomaly.runtime.window`), scored by a warm model
   actor (:class:`openanomaly.runtime.runner.JobRunner`), persisting progress after each window.

Windows sit on a fixed grid: ``((k - 1) * infer_every, k * infer_every]``. A pipeline
that falls behind (a TSDB outage, a restart) catches up window by window on the same
grid, so a retried window produces exactly what it would have on time, and the write
skips samples already stored.

Progress (the end of the last *completed* window, and the last fit time) is persisted
in the ArtifactStore under ``_scheduler/<pipeline>.json``, written after the window's
samples are written. Why there: it is the one durable store every node already
reaches (S3 in cluster mode), and it outlives the actor, the node and the whole Ray
cluster. On start the scheduler reads it back and continues with the next window: no
gap, no duplicate. With ``artifacts.kind: none`` progress lives in the actor only (a
warning says so) and a restart starts again from the current window.

It never fails to start: an invalid pipelines file or an unreachable store at start-up
(an actor restart, a rolling update) is shown in the status and on ``/metrics``
(``config_error``, each pipeline's ``state`` and ``reason``) and retried on every tick,
so fixing the file or the store is enough. Each pipeline has a ``state``: ``idle``,
``running``, ``no_data`` (the query returned no series, or its series hold no sample
in the window: the window is retried, and after ``gap_after_ms`` a window without samples
is reported as a gap, ``gaps_total``),
``failed`` (the last run raised; retried next tick), ``stalled`` (a run is past
``window_timeout``), ``waiting`` (its progress cannot be read yet) or ``disabled``.

Isolation: each pipeline runs in its own thread, and one pipeline's failure (bad
query, model error, TSDB outage) only marks that pipeline's status; the window is
retried on the next tick, the others go on. Never two runs of one pipeline at once.
Each window has a time limit (``window_timeout``): a model actor that cannot be placed
or a job that hangs ends the run with ``WindowTimeout``, shown in the status.

The Ray actor that runs it and the helpers that find it by name (for the HTTP API) are
:mod:`openanomaly.runtime.scheduler_actor`; which windows are due, :mod:`~openanomaly.runtime.plan`;
what the status shows, :mod:`~openanomaly.runtime.status`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from openanomaly.configstore.files import ConfigStore
from openanomaly.configstore.stores import open_stores
from openanomaly.core.config import Config, Pipeline, Settings
from openanomaly.errors import ConfigError, NoSamples, NoSeries, OpenAnomalyError, WindowTimeout
from openanomaly.io.artifacts import ArtifactStore, MemoryStore, load_json, open_store, save_json
from openanomaly.runtime.plan import due_windows, fit_due, gap_after_ms
from openanomaly.runtime.status import PipelineStatus, metrics_text

__all__ = ["PipelineProgress", "Scheduler"]

log = logging.getLogger(__name__)

_STATE_PREFIX = "_scheduler"

RunWindow = Callable[..., Any]  # (settings, pipeline, *, start_ms, end_ms, fit_time_ms) -> RunResult
RunFit = Callable[..., Any]  # (settings, pipeline, *, fit_time_ms) -> FitResult


def _ms(duration: Any) -> int:
    return round(duration.total_seconds() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PipelineProgress:
    """The persisted part: where the pipeline is on its window grid."""

    last_end_ms: int | None = None
    last_fit_ms: int | None = None


@dataclass
class _Entry:
    pipeline: Pipeline
    progress: PipelineProgress | None  # None until the store could be read
    status: PipelineStatus
    future: Future[Any] | None = None
    started: float | None = None  # monotonic start of the run in flight
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Bumped when the pipeline is removed or its query/step change: a run in flight of
    # the old definition stops after its current window and must not save its progress.
    generation: int = 0


class Scheduler:
    """Owns the schedules. Plain Python (testable without Ray); the Ray actor
    (:mod:`openanomaly.runtime.scheduler_actor`) wraps it.

    Args:
        config: where pipelines and settings come from (a path to YAML or a ConfigStore).
        now: the clock, returning unix **milliseconds**; injected so tests drive time.
        store: where progress is persisted; default: the configured ArtifactStore.
        run_window / run_fit: the jobs (default: :class:`openanomaly.runtime.runner.JobRunner` on the
            Ray cluster this process is connected to); injectable for tests.
        job_options: :class:`openanomaly.runtime.options.JobOptions` for the default jobs.
        delay: milliseconds to wait after a window ends before scoring it (ingestion lag).
        max_catchup: windows one pipeline runs per tick when it is behind.
        tick_s: seconds between ticks of the background loop (``autostart=True``).
        threads: pipelines run at the same time.
        window_timeout: seconds one window (or fit) may take before it fails with
            ``WindowTimeout``; a run in flight longer than that shows as ``stalled``.

    Never raises for a bad configuration or an unreachable store: see the module docstring.
    """

    def __init__(
        self,
        config: str | ConfigStore,
        *,
        now: Callable[[], int] | None = None,
        store: ArtifactStore | None = None,
        run_window: RunWindow | None = None,
        run_fit: RunFit | None = None,
        job_options: Any | None = None,
        delay: int = 0,
        max_catchup: int = 60,
        tick_s: float = 5.0,
        threads: int = 4,
        window_timeout: float = 300.0,
        autostart: bool = False,
    ) -> None:
        self._source: ConfigStore = open_stores(config)[0] if isinstance(config, str) else config
        self._now = now or (lambda: int(time.time() * 1000))
        self._job_options = job_options
        self._runner: Any | None = None
        self._run_window = run_window or self._default_run_window
        self._run_fit = run_fit or self._default_run_fit
        self.delay_ms = delay
        self.max_catchup = max_catchup
        self.tick_s = tick_s
        self.window_timeout = window_timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pipeline")
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._config_error: str | None = None
        self._fixed_store = store
        self._store: ArtifactStore | None = store
        self.config: Config | None = None
        self.reload()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        if autostart:
            self.start()

    # -- jobs -----------------------------------------------------------------------

    def _jobs(self) -> Any:
        if self._runner is None:
            from openanomaly.runtime.runner import JobRunner

            self._runner = JobRunner(self._job_options)
        return self._runner

    def _default_run_window(
        self, settings: Settings, pipeline: Pipeline, *, start_ms: int, end_ms: int, fit_time_ms: int | None
    ) -> Any:
        entry = self._entries.get(pipeline.name)
        return self._jobs().run_window(
            settings,
            pipeline,
            start_ms=start_ms,
            end_ms=end_ms,
            fit_time_ms=fit_time_ms,
            series_hint=entry.status.series_in if entry else 0,
            timeout_s=self.window_timeout,
        )

    def _default_run_fit(self, settings: Settings, pipeline: Pipeline, *, fit_time_ms: int) -> Any:
        return self._jobs().run_fit(
            settings, pipeline, fit_time_ms=fit_time_ms, timeout_s=self.window_timeout
        )

    # -- configuration -------------------------------------------------------------

    @staticmethod
    def _open_store(settings: Settings) -> ArtifactStore:
        if settings.artifacts.kind == "none":
            log.warning(
                "artifacts.kind is 'none': scheduler progress is kept in memory only; "
                "after a restart pipelines start again from the current window"
            )
            return MemoryStore()
        return open_store(settings.artifacts)

    def _read_progress(self, entry: _Entry) -> bool:
        """Load the entry's persisted progress once; False (state ``waiting``) while the store fails."""
        if entry.progress is not None:
            return True
        name = entry.pipeline.name
        try:
            if self._store is None:
                assert self.config is not None
                self._store = self._open_store(self.config.settings)
            data = load_json(self._store, f"{_STATE_PREFIX}/{name}.json") or {}
        except OpenAnomalyError as error:
            entry.status.state, entry.status.reason = "waiting", f"cannot read progress: {error}"
            log.error("pipeline %r waits: cannot read its progress: %s", name, error)
            return False
        entry.progress = PipelineProgress(
            last_end_ms=data.get("last_end_ms"), last_fit_ms=data.get("last_fit_ms")
        )
        entry.status.last_end_ms, entry.status.last_fit_ms = (
            entry.progress.last_end_ms,
            entry.progress.last_fit_ms,
        )
        if entry.status.state == "waiting":
            entry.status.state, entry.status.reason = "idle", None
        return True

    def _save_progress(self, entry: _Entry, generation: int, progress: PipelineProgress) -> None:
        """Persist ``progress``, unless the entry moved on (see ``_Entry.generation``) meanwhile."""
        assert self._store is not None
        with self._lock:
            if entry.generation == generation:
                save_json(self._store, f"{_STATE_PREFIX}/{entry.pipeline.name}.json", asdict(progress))

    def _apply(self, config: Config) -> None:
        """Make the entries match ``config``.

        A removed pipeline stops (a run in flight ends after its current window) and its
        progress is forgotten, so one created later under the same name starts fresh. A
        changed one keeps its progress unless its query or step changed: then the old
        windows say nothing about the new series, and it starts again from the current one.
        """
        from openanomaly.configstore.checks import check_fittable

        with self._lock:
            names = {pipeline.name for pipeline in config.pipelines}
            for name in [name for name in self._entries if name not in names]:
                self._forget(self._entries.pop(name), "removed")
            for pipeline in config.pipelines:
                entry = self._entries.get(pipeline.name)
                if entry is None:
                    entry = self._entries[pipeline.name] = _Entry(
                        pipeline, None, PipelineStatus(pipeline.name)
                    )
                elif (entry.pipeline.query, entry.pipeline.step) != (pipeline.query, pipeline.step):
                    self._forget(entry, "query or step changed")
                    entry.status = PipelineStatus(pipeline.name)
                entry.pipeline = pipeline
                entry.status.model = pipeline.model.label
                entry.status.disabled_reason = None
                if entry.status.state == "disabled":
                    entry.status.state, entry.status.reason = "idle", None
                try:
                    check_fittable(pipeline)
                except ConfigError as error:
                    entry.status.disabled_reason = str(error)
                    entry.status.state, entry.status.reason = "disabled", str(error)
        if self._runner is not None:
            self._runner.prune(config.pipelines)

    def _forget(self, entry: _Entry, why: str) -> None:
        """Stop the entry's run in flight after its current window and drop its persisted progress."""
        entry.generation += 1
        entry.progress = PipelineProgress() if entry.progress is not None else None
        name = entry.pipeline.name
        log.info("pipeline %r %s: its progress starts over", name, why)
        if self._store is not None:
            try:
                self._store.delete(f"{_STATE_PREFIX}/{name}.json")
            except OpenAnomalyError as error:  # the next save overwrites it anyway
                log.warning("pipeline %r: could not delete its old progress: %s", name, error)

    def reload(self) -> bool:
        """Re-read the configuration if it changed (or never loaded); True when a new one was applied.

        A failure keeps the last good configuration (none at all if the first load
        failed) and is shown as ``config_error``; the next tick tries again.
        """
        try:
            if self.config is not None and not self._source.changed():
                return False
            config = self._source.load()
        except (ConfigError, OSError) as error:
            self._config_error = str(error)
            log.error("configuration load failed, keeping the last good one: %s", error)
            return False
        self._config_error = None
        if self._fixed_store is None and (
            self.config is None or config.settings.artifacts != self.config.settings.artifacts
        ):
            self._store = None  # opened (and retried) when progress is next read
            for entry in self._entries.values():
                entry.progress = None if not self._running(entry) else entry.progress
        self.config = config
        self._apply(config)
        log.info("configuration loaded: %d pipelines", len(config.pipelines))
        return True

    # -- running -------------------------------------------------------------------

    @staticmethod
    def _running(entry: _Entry) -> bool:
        return entry.future is not None and not entry.future.done()

    def _run(self, entry: _Entry, windows: list[tuple[int, int]]) -> None:
        """Worker thread: fit if due, then each window in order, persisting after each."""
        if not entry.lock.acquire(blocking=False):
            return
        try:
            assert self.config is not None and entry.progress is not None
            pipeline, settings = entry.pipeline, self.config.settings
            status, progress, generation = entry.status, entry.progress, entry.generation
            status.running, status.state, status.reason = True, "running", None
            status.last_run_started = time.time()
            entry.started = began = time.monotonic()
            ok = True
            try:
                for start, end in windows:
                    if entry.generation != generation:
                        break  # removed, or its query/step changed: the rest is not ours to run
                    fit_every = pipeline.schedule.fit_every
                    if fit_every is not None and fit_due(
                        last_fit_ms=progress.last_fit_ms, window_start_ms=start, fit_every_ms=_ms(fit_every)
                    ):
                        self._run_fit(settings, pipeline, fit_time_ms=start)
                        progress.last_fit_ms = start
                        status.fits_total += 1
                        self._save_progress(entry, generation, progress)
                    window_began = time.monotonic()
                    result = self._run_window(
                        settings,
                        pipeline,
                        start_ms=start,
                        end_ms=end,
                        fit_time_ms=progress.last_fit_ms if fit_every is not None else None,
                    )
                    self._check_samples(status, pipeline, result, start, end)
                    progress.last_end_ms = end
                    self._save_progress(entry, generation, progress)
                    status.last_window_duration_s = time.monotonic() - window_began
                    status.series_in = int(getattr(result, "series_in", 0))
                    status.series_scored = int(getattr(result, "series_scored", 0))
                    status.samples_written = int(getattr(result, "samples_written", 0))
                    status.windows_total += 1
                    status.last_error = None
                status.state, status.reason = "idle", None
            except Exception as error:  # one pipeline's failure must not stop the others
                ok = False
                self._record_failure(status, error)
            finally:
                status.last_end_ms, status.last_fit_ms = progress.last_end_ms, progress.last_fit_ms
                status.last_run_ok = ok
                status.last_run_finished = time.time()
                status.last_run_duration_s = time.monotonic() - began
                status.running = False
                entry.started = None
        finally:
            entry.lock.release()

    def _check_samples(
        self, status: PipelineStatus, pipeline: Pipeline, result: Any, start: int, end: int
    ) -> None:
        """A window whose series hold no sample is not done: retried, then reported as a gap.

        Raises:
            NoSamples: while the window is younger than :func:`gap_after_ms` (state ``no_data``).
        """
        points_in = getattr(result, "points_in", None)
        if points_in is None or points_in or not getattr(result, "series_in", 0):
            return
        limit = gap_after_ms(pipeline)
        if self._now() - end < limit:
            raise NoSamples(
                f"window ({_iso(start)}, {_iso(end)}]: its {result.series_in} series hold no sample "
                f"(a TSDB outage or a scrape gap?); retried until samples arrive, reported as a gap "
                f"after {limit // 60_000} min",
                pipeline=pipeline.name,
            )
        status.gaps_total += 1
        log.warning(
            "pipeline %r: window (%s, %s] had no sample after %d min: reported as a gap, not scored",
            pipeline.name,
            _iso(start),
            _iso(end),
            limit // 60_000,
        )

    @staticmethod
    def _record_failure(status: PipelineStatus, error: Exception) -> None:
        status.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, NoSeries):
            status.no_data_total += 1
            status.state, status.reason = "no_data", str(error)
            log.warning("pipeline %r: %s (window retried next tick)", status.name, error)
            return
        status.errors_total += 1
        status.state, status.reason = "failed", status.last_error
        if isinstance(error, WindowTimeout):
            status.timeouts_total += 1
        if isinstance(error, OpenAnomalyError):
            log.error("pipeline %r failed (window retried next tick): %s", status.name, error)
        else:
            log.exception("pipeline %r failed", status.name)

    def _due(self, entry: _Entry, now_ms: int) -> list[tuple[int, int]]:
        assert entry.progress is not None
        return due_windows(
            last_end_ms=entry.progress.last_end_ms,
            now_ms=now_ms,
            every_ms=_ms(entry.pipeline.schedule.infer_every),
            delay_ms=self.delay_ms,
            max_windows=self.max_catchup,
        )

    def _launch(self, entry: _Entry, now_ms: int) -> list[tuple[int, int]]:
        """Start the entry's due windows in a worker thread; the windows launched (none if busy)."""
        if entry.status.disabled_reason or self._running(entry) or not self._read_progress(entry):
            return []
        windows = self._due(entry, now_ms)
        if windows:
            entry.future = self._pool.submit(self._run, entry, windows)
        return windows

    def tick(self, now_ms: int | None = None, *, wait: bool = False) -> dict[str, list[tuple[int, int]]]:
        """One scheduling pass at ``now_ms`` (default: the clock). Returns the windows launched.

        Args:
            wait: block until the launched runs finish (tests, one-shot CLI runs).
        """
        now_ms = self._now() if now_ms is None else now_ms
        self.reload()
        launched: dict[str, list[tuple[int, int]]] = {}
        futures = []
        with self._lock:
            for name, entry in self._entries.items():
                windows = self._launch(entry, now_ms)
                if windows:
                    launched[name] = windows
                    futures.append(entry.future)
        if wait:
            for future in futures:
                if future is not None:
                    future.result()
        return launched

    def trigger(self, name: str, now_ms: int | None = None, *, wait: bool = False) -> dict[str, Any]:
        """Run one pipeline's due windows now (``POST /v1/pipelines/{name}/run``).

        Returns ``{"pipeline", "status": started|already_running|up_to_date|waiting, "windows"}``.

        Raises:
            KeyError: no pipeline of that name.
            ConfigError: the pipeline is disabled (the reason is the message).
        """
        now_ms = self._now() if now_ms is None else now_ms
        self.reload()
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise KeyError(name)
            if entry.status.disabled_reason:
                raise ConfigError(entry.status.disabled_reason, pipeline=name)
            if self._running(entry):
                return {"pipeline": name, "status": "already_running", "windows": []}
            if not self._read_progress(entry):
                return {"pipeline": name, "status": "waiting", "windows": [], "reason": entry.status.reason}
            windows = self._launch(entry, now_ms)
            if not windows:
                return {"pipeline": name, "status": "up_to_date", "windows": []}
            future = entry.future
        if wait and future is not None:
            future.result()
        return {"pipeline": name, "status": "started", "windows": [list(w) for w in windows]}

    def wait_idle(self, timeout_s: float = 300.0) -> bool:
        """Block until no pipeline is running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                busy = [e.future for e in self._entries.values() if self._running(e)]
            if not busy:
                return True
            for future in busy:
                with contextlib.suppress(Exception):
                    if future is not None:
                        future.result(timeout=max(0.0, deadline - time.monotonic()))
        return False

    # -- background loop -------------------------------------------------------------

    def start(self) -> None:
        """Tick every ``tick_s`` seconds in a background thread until :meth:`stop`."""
        if self._loop is not None and self._loop.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.tick_s):
                try:
                    self.tick()
                except Exception:
                    log.exception("scheduler tick failed")

        self._loop = threading.Thread(target=loop, name="scheduler-loop", daemon=True)
        self._loop.start()

    def stop(self, *, wait: bool = False, timeout_s: float = 60.0) -> None:
        """Stop ticking; with ``wait``, let the runs in flight finish and stop the model actors."""
        self._stop.set()
        if wait:
            self.wait_idle(timeout_s)
            if self._runner is not None:
                self._runner.close()

    # -- status ----------------------------------------------------------------------

    def status(self, now_ms: int | None = None) -> dict[str, Any]:
        """Every pipeline's status (``GET /v1/pipelines``), plus the config error if any."""
        now_ms = self._now() if now_ms is None else now_ms
        pipelines = []
        with self._lock:
            for entry in self._entries.values():
                status = entry.status
                end = entry.progress.last_end_ms if entry.progress is not None else status.last_end_ms
                status.lag_s = (now_ms - end) / 1000 if end is not None else None
                status.running = self._running(entry) or status.running
                started = entry.started
                status.running_for_s = None if started is None else time.monotonic() - started
                record = asdict(status)
                if status.running_for_s is not None and status.running_for_s > self.window_timeout:
                    record["state"] = "stalled"
                    record["reason"] = (
                        f"running for {status.running_for_s:.0f}s (limit {self.window_timeout:g}s)"
                    )
                pipelines.append(record)
        return {"pipelines": pipelines, "config_error": self._config_error}

    def metrics(self, now_ms: int | None = None) -> str:
        """Prometheus text exposition of the scheduler's self-metrics."""
        status = self.status(now_ms)
        return metrics_text(status["pipelines"], config_error=status["config_error"] is not None)

    def ping(self) -> bool:
        return True

    def source(self) -> str:
        """Where the pipelines come from (the YAML path), for :func:`ensure_scheduler`."""
        path = getattr(self._source, "path", None)
        return str(path) if path is not None else repr(self._source)
