"""Scheduler state machine without Ray: windows, resume, fit cadence, isolation, reload, metrics.

The jobs are injected as plain functions that record what they were asked to do, so
the tests drive time through ``tick(now_ms=...)`` and never sleep.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from openanomaly.errors import QueryError
from openanomaly.io.artifacts import MemoryStore
from openanomaly.runtime.plan import due_windows, fit_due
from openanomaly.runtime.scheduler import Scheduler

MIN = 60_000
T0 = 1_700_000_000_000 // (60 * MIN) * (60 * MIN)  # an hour boundary


def _yaml(path: Path, pipelines: str) -> str:
    path.write_text(
        "settings:\n  tsdb:\n    url: http://127.0.0.1:1\n  artifacts:\n    kind: none\n"
        f"pipelines:\n{pipelines}"
    )
    return str(path)


PIPE = """  - name: {name}
    query: '{query}'
    model: mad
    schedule:
      infer_every: 10m
      context: 30m
"""


class Recorder:
    """Records every window/fit; fails for pipelines named in ``fail``."""

    def __init__(self) -> None:
        self.windows: list[tuple[str, int, int, int | None]] = []
        self.fits: list[tuple[str, int]] = []
        self.fail: set[str] = set()
        self.lock = threading.Lock()

    def run_window(self, settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        if pipeline.name in self.fail:
            raise QueryError("down", url="http://127.0.0.1:1")
        with self.lock:
            self.windows.append((pipeline.name, start_ms, end_ms, fit_time_ms))
        return type("R", (), {"series_scored": 3, "samples_written": 12})()

    def run_fit(self, settings, pipeline, *, fit_time_ms):
        with self.lock:
            self.fits.append((pipeline.name, fit_time_ms))


def _scheduler(config: str, recorder: Recorder, store=None) -> Scheduler:
    return Scheduler(
        config,
        store=store if store is not None else MemoryStore(),
        run_window=recorder.run_window,
        run_fit=recorder.run_fit,
        now=lambda: T0,
    )


def test_due_windows_grid_first_run_catch_up_and_limit() -> None:
    every = 10 * MIN
    first = due_windows(last_end_ms=None, now_ms=T0 + 25 * MIN, every_ms=every)
    assert first == [(T0 + 10 * MIN, T0 + 20 * MIN)]
    assert due_windows(last_end_ms=T0, now_ms=T0 + 25 * MIN, every_ms=every) == [
        (T0, T0 + 10 * MIN),
        (T0 + 10 * MIN, T0 + 20 * MIN),
    ]
    assert due_windows(last_end_ms=T0, now_ms=T0 + 9 * MIN, every_ms=every) == []
    assert len(due_windows(last_end_ms=T0, now_ms=T0 + 1000 * MIN, every_ms=every, max_windows=5)) == 5
    # ingestion delay holds the window back
    assert due_windows(last_end_ms=T0, now_ms=T0 + 10 * MIN, every_ms=every, delay_ms=30_000) == []
    # off-grid progress (infer_every changed): first window closes the gap to the grid
    assert due_windows(last_end_ms=T0 + 5 * MIN, now_ms=T0 + 20 * MIN, every_ms=every) == [
        (T0 + 5 * MIN, T0 + 10 * MIN),
        (T0 + 10 * MIN, T0 + 20 * MIN),
    ]
    with pytest.raises(ValueError, match="every_ms"):
        due_windows(last_end_ms=None, now_ms=0, every_ms=0)


def test_fit_due() -> None:
    assert fit_due(last_fit_ms=None, window_start_ms=T0, fit_every_ms=MIN)
    assert not fit_due(last_fit_ms=T0, window_start_ms=T0 + 30_000, fit_every_ms=MIN)
    assert fit_due(last_fit_ms=T0, window_start_ms=T0 + MIN, fit_every_ms=MIN)


def test_resume_after_restart_has_no_gap_and_no_duplicate(tmp_path) -> None:
    config = _yaml(tmp_path / "p.yaml", PIPE.format(name="cpu", query="cpu"))
    store, recorder = MemoryStore(), Recorder()
    first = _scheduler(config, recorder, store)
    first.tick(T0 + 10 * MIN, wait=True)
    first.tick(T0 + 20 * MIN, wait=True)
    # "restart": a new scheduler over the same persisted store, 3 windows later
    second = _scheduler(config, recorder, store)
    second.tick(T0 + 50 * MIN, wait=True)
    ends = [end for _, _, end, _ in recorder.windows]
    starts = [start for _, start, _, _ in recorder.windows]
    assert starts[1:] == ends[:-1], "windows must be contiguous"
    assert ends == [T0 + k * 10 * MIN for k in range(1, 6)]
    assert len(set(ends)) == len(ends)


def test_failing_pipeline_retries_its_window_and_does_not_block_others(tmp_path) -> None:
    config = _yaml(
        tmp_path / "p.yaml", PIPE.format(name="good", query="a") + PIPE.format(name="bad", query="b")
    )
    recorder = Recorder()
    recorder.fail.add("bad")
    scheduler = _scheduler(config, recorder)
    scheduler.tick(T0 + 10 * MIN, wait=True)
    scheduler.tick(T0 + 20 * MIN, wait=True)
    status = {p["name"]: p for p in scheduler.status(T0 + 20 * MIN)["pipelines"]}
    assert status["good"]["windows_total"] == 2 and status["good"]["last_run_ok"]
    assert status["bad"]["errors_total"] == 2 and "QueryError" in status["bad"]["last_error"]
    assert status["bad"]["last_end_ms"] is None
    recorder.fail.clear()  # outage over: the missed windows are filled in order
    scheduler.tick(T0 + 20 * MIN, wait=True)
    bad = [(s, e) for name, s, e, _ in recorder.windows if name == "bad"]
    assert bad == [(T0 + 10 * MIN, T0 + 20 * MIN)]
    assert scheduler.status(T0 + 20 * MIN)["pipelines"][1]["lag_s"] == 0


def test_never_two_runs_of_one_pipeline(tmp_path) -> None:
    config = _yaml(tmp_path / "p.yaml", PIPE.format(name="slow", query="a"))
    release = threading.Event()
    calls: list[int] = []

    def slow(settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        calls.append(end_ms)
        release.wait(10)

    scheduler = Scheduler(config, store=MemoryStore(), run_window=slow, now=lambda: T0)
    assert scheduler.tick(T0 + 10 * MIN) == {"slow": [(T0, T0 + 10 * MIN)]}
    assert scheduler.tick(T0 + 20 * MIN) == {}
    assert scheduler.trigger("slow", T0 + 20 * MIN)["status"] == "already_running"
    assert scheduler.status()["pipelines"][0]["running"]
    release.set()
    assert scheduler.wait_idle(10)
    assert scheduler.trigger("slow", T0 + 20 * MIN, wait=True)["status"] == "started"
    assert calls == [T0 + 10 * MIN, T0 + 20 * MIN]
    assert scheduler.trigger("slow", T0 + 20 * MIN)["status"] == "up_to_date"
    with pytest.raises(KeyError):
        scheduler.trigger("nope")


def test_fit_cadence(tmp_path) -> None:
    pipe = PIPE.format(name="ets", query="a").replace("model: mad", "model: statsforecast:AutoETS")
    pipe += "      fit_every: 30m\n      fit_window: 2h\n"
    recorder = Recorder()
    scheduler = _scheduler(_yaml(tmp_path / "p.yaml", pipe), recorder)
    scheduler.tick(T0 + 10 * MIN, wait=True)
    scheduler.tick(T0 + 40 * MIN, wait=True)
    assert recorder.fits == [("ets", T0), ("ets", T0 + 30 * MIN)]
    # each window uses the latest fit at or before its start
    assert [(start, fit) for _, start, _, fit in recorder.windows] == [
        (T0, T0),
        (T0 + 10 * MIN, T0),
        (T0 + 20 * MIN, T0),
        (T0 + 30 * MIN, T0 + 30 * MIN),
    ]


def test_config_reload_adds_pipelines_and_keeps_last_good(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    config = _yaml(path, PIPE.format(name="one", query="a"))
    recorder = Recorder()
    scheduler = _scheduler(config, recorder)
    scheduler.tick(T0 + 10 * MIN, wait=True)
    _yaml(path, PIPE.format(name="one", query="a") + PIPE.format(name="two", query="b"))
    scheduler.tick(T0 + 20 * MIN, wait=True)
    assert {name for name, *_ in recorder.windows} == {"one", "two"}
    path.write_text("pipelines: [oops")
    scheduler.tick(T0 + 30 * MIN, wait=True)
    status = scheduler.status()
    assert status["config_error"] and str(path) in status["config_error"]
    assert len(status["pipelines"]) == 2


def test_an_edit_keeps_progress_unless_query_or_step_changed_and_a_removal_stops(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    _yaml(path, PIPE.format(name="one", query="a") + PIPE.format(name="two", query="b"))
    store, recorder = MemoryStore(), Recorder()
    scheduler = _scheduler(str(path), recorder, store)
    scheduler.tick(T0 + 10 * MIN, wait=True)
    # "one" changes its model only: it resumes where it was; "two" changes its query: it
    # starts again from the current window (its old windows scored other series).
    edited = PIPE.format(name="one", query="a").replace("model: mad", "model: zscore")
    _yaml(path, edited + PIPE.format(name="two", query="c"))
    scheduler.tick(T0 + 40 * MIN, wait=True)
    one = [(s, e) for name, s, e, _ in recorder.windows if name == "one"]
    two = [(s, e) for name, s, e, _ in recorder.windows if name == "two"]
    assert one == [(T0 + k * 10 * MIN, T0 + (k + 1) * 10 * MIN) for k in range(4)]
    assert two == [(T0, T0 + 10 * MIN), (T0 + 30 * MIN, T0 + 40 * MIN)]
    # "two" is removed while a run is in flight: that run stops after its current window,
    # nothing of it is saved, and a pipeline re-created under the name starts fresh.
    release, started = threading.Event(), threading.Event()

    def slow(settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        started.set()
        release.wait(10)
        return recorder.run_window(settings, pipeline, start_ms=start_ms, end_ms=end_ms, fit_time_ms=None)

    scheduler._run_window = slow
    scheduler.tick(T0 + 70 * MIN)
    assert started.wait(10)
    in_flight = scheduler._entries["two"].future
    _yaml(path, edited)
    scheduler.reload()
    assert [p["name"] for p in scheduler.status()["pipelines"]] == ["one"]
    release.set()
    assert scheduler.wait_idle(10)
    in_flight.result(10)  # no longer an entry, so wait_idle does not wait for it
    two_now = [e for name, _, e, _ in recorder.windows if name == "two"]
    assert two_now == [T0 + 10 * MIN, T0 + 40 * MIN, T0 + 50 * MIN], "stops after its current window"
    assert store.list("_scheduler/two") == []
    scheduler._run_window = recorder.run_window
    _yaml(path, edited + PIPE.format(name="two", query="c"))
    scheduler.tick(T0 + 80 * MIN, wait=True)
    assert [e for name, _, e, _ in recorder.windows if name == "two"][-1] == T0 + 80 * MIN
    assert len([e for name, _, e, _ in recorder.windows if name == "two"]) == 4


def test_unfittable_pipeline_is_refused_at_load_and_the_last_good_config_runs(tmp_path) -> None:
    """Config loading rejects what a run would (openanomaly.configstore.checks); the scheduler keeps going."""
    path = tmp_path / "p.yaml"
    recorder = Recorder()
    scheduler = _scheduler(_yaml(path, PIPE.format(name="ok", query="b")), recorder)
    scheduler.tick(T0 + 10 * MIN, wait=True)
    pipe = PIPE.format(name="naive", query="a").replace(
        "model: mad", "model:\n      spec: statsforecast:SeasonalNaive\n      params: {season_length: 6}"
    )
    pipe += "      fit_every: 30m\n      fit_window: 2h\n"
    _yaml(path, pipe + PIPE.format(name="ok", query="b"))
    scheduler.tick(T0 + 20 * MIN, wait=True)
    status = scheduler.status()
    assert (
        "'pipelines[0].schedule.fit_every': model 'statsforecast:SeasonalNaive' has no fitted form"
        in (status["config_error"])
    )
    assert [p["name"] for p in status["pipelines"]] == ["ok"]
    assert [name for name, *_ in recorder.windows] == ["ok", "ok"]


def test_metrics_text(tmp_path) -> None:
    recorder = Recorder()
    scheduler = _scheduler(_yaml(tmp_path / "p.yaml", PIPE.format(name="cpu", query="a")), recorder)
    scheduler.tick(T0 + 10 * MIN, wait=True)
    text = scheduler.metrics(T0 + 15 * MIN)
    assert 'openanomaly_pipeline_lag_seconds{pipeline="cpu"} 300.0' in text
    assert 'openanomaly_pipeline_windows_total{pipeline="cpu"} 1.0' in text
    assert 'openanomaly_pipeline_series_scored{pipeline="cpu"} 3.0' in text
    assert "# TYPE openanomaly_pipeline_errors_total counter" in text


@pytest.mark.integration
def test_ensure_scheduler_starts_once_and_keeps_the_running_one(
    ray_cluster, tmp_path, monkeypatch, caplog
) -> None:
    """What a Serve ingress does at start-up: every replica calls it, one actor runs."""
    import uuid

    import ray

    from openanomaly.runtime.scheduler_actor import ensure_scheduler

    config = _yaml(tmp_path / "pipelines.yaml", PIPE.format(name="a", query="m"))
    other = _yaml(tmp_path / "other.yaml", PIPE.format(name="b", query="m"))
    monkeypatch.chdir(tmp_path)  # a relative path is resolved here, not in the actor
    options = {"name": f"ensure-{uuid.uuid4().hex[:6]}", "namespace": "openanomaly-test"}
    first = ensure_scheduler("pipelines.yaml", autostart=False, num_cpus=0.05, **options)
    try:
        assert ray.get(first.source.remote()) == config
        assert [p["name"] for p in ray.get(first.status.remote())["pipelines"]] == ["a"]
        with caplog.at_level("WARNING", logger="openanomaly.runtime.scheduler"):
            second = ensure_scheduler(other, autostart=False, num_cpus=0.05, **options)
        assert second._actor_id == first._actor_id
        assert ray.get(second.source.remote()) == config
        assert "already runs pipelines from" in caplog.text and other in caplog.text
    finally:
        ray.kill(first, no_restart=True)


def test_starts_on_an_invalid_file_reports_it_and_recovers_when_fixed(tmp_path, monkeypatch) -> None:
    """A restart while the file is broken (an unset ${VAR}) must not leave a dead scheduler."""
    monkeypatch.delenv("OA_TEST_QUERY", raising=False)
    path = tmp_path / "p.yaml"
    _yaml(path, PIPE.format(name="cpu", query="${OA_TEST_QUERY}"))
    recorder = Recorder()
    scheduler = _scheduler(str(path), recorder)  # does not raise
    assert scheduler.tick(T0 + 10 * MIN, wait=True) == {}
    status = scheduler.status()
    assert "OA_TEST_QUERY" in status["config_error"] and status["pipelines"] == []
    assert "openanomaly_scheduler_config_error 1.0" in scheduler.metrics()
    monkeypatch.setenv("OA_TEST_QUERY", "up")  # fixed: the next tick loads it
    assert scheduler.tick(T0 + 10 * MIN, wait=True) == {"cpu": [(T0, T0 + 10 * MIN)]}
    assert scheduler.status()["config_error"] is None
    assert "openanomaly_scheduler_config_error 0.0" in scheduler.metrics()


def test_unreachable_store_makes_pipelines_wait_then_resume(tmp_path, monkeypatch) -> None:
    """S3 down at start: pipelines wait (visible), nothing runs blind; S3 back: they resume."""
    from moto.server import ThreadedMotoServer

    from tests.fixtures.servers import free_port

    for name, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    path = tmp_path / "p.yaml"
    path.write_text(
        "settings:\n  tsdb:\n    url: http://127.0.0.1:1\n"
        f"  artifacts:\n    kind: s3\n    bucket: progress\n    endpoint_url: http://127.0.0.1:{port}\n"
        f"pipelines:\n{PIPE.format(name='cpu', query='up')}"
    )
    recorder = Recorder()
    scheduler = Scheduler(str(path), run_window=recorder.run_window, run_fit=recorder.run_fit, now=lambda: T0)
    assert scheduler.tick(T0 + 10 * MIN, wait=True) == {}
    (status,) = scheduler.status()["pipelines"]
    assert status["state"] == "waiting" and "cannot read progress" in status["reason"]
    assert 'openanomaly_pipeline_state{pipeline="cpu",state="waiting"} 1.0' in scheduler.metrics()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="progress")
        assert scheduler.tick(T0 + 10 * MIN, wait=True) == {"cpu": [(T0, T0 + 10 * MIN)]}
        assert scheduler.status()["pipelines"][0]["state"] == "idle"
    finally:
        server.stop()


def test_no_series_is_a_state_and_the_window_is_kept(tmp_path) -> None:
    from openanomaly.errors import NoSeries

    recorder = Recorder()

    def empty(settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        raise NoSeries(f"query {pipeline.query!r} returned no series", pipeline=pipeline.name)

    config = _yaml(tmp_path / "p.yaml", PIPE.format(name="gone", query="absent"))
    scheduler = Scheduler(
        config, store=MemoryStore(), run_window=empty, run_fit=recorder.run_fit, now=lambda: T0
    )
    scheduler.tick(T0 + 10 * MIN, wait=True)
    scheduler.tick(T0 + 20 * MIN, wait=True)
    (status,) = scheduler.status(T0 + 20 * MIN)["pipelines"]
    assert status["state"] == "no_data" and "returned no series" in status["reason"]
    assert status["no_data_total"] == 2 and status["errors_total"] == 0
    assert status["last_end_ms"] is None  # nothing skipped: the windows are scored once data comes
    assert 'openanomaly_pipeline_no_data_total{pipeline="gone"} 2.0' in scheduler.metrics()


def test_a_window_without_samples_stays_due_then_is_reported_as_a_gap(tmp_path) -> None:
    # The series exist (the TSDB answered) but hold no sample in the window: a TSDB outage
    # or a scrape gap. The window is not marked done: it is retried (no_data) while it is
    # younger than gap_after_ms, scored as soon as samples arrive, and reported as a gap
    # (gaps_total, a warning) after that.
    from openanomaly.runtime.plan import gap_after_ms
    from openanomaly.runtime.window import RunResult

    samples = {"arrived": False}
    clock = {"now": T0}

    def run_window(settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        points = 10 if samples["arrived"] else 0
        return RunResult(
            pipeline.name, start_ms, end_ms, 3, 3 if points else 0, points, 0, 4 * points, points_in=points
        )

    config = _yaml(tmp_path / "p.yaml", PIPE.format(name="gappy", query="up"))
    scheduler = Scheduler(
        config,
        store=MemoryStore(),
        run_window=run_window,
        run_fit=Recorder().run_fit,
        now=lambda: clock["now"],
    )
    clock["now"] = T0 + 10 * MIN
    scheduler.tick(clock["now"], wait=True)
    (status,) = scheduler.status(clock["now"])["pipelines"]
    assert status["state"] == "no_data" and "hold no sample" in status["reason"]
    assert status["last_end_ms"] is None and status["no_data_total"] == 1
    samples["arrived"] = True  # the TSDB is back: the same window is scored
    scheduler.tick(clock["now"], wait=True)
    (status,) = scheduler.status(clock["now"])["pipelines"]
    assert status["state"] == "idle" and status["last_end_ms"] == T0 + 10 * MIN
    samples["arrived"] = False  # another outage, past the limit: a gap, then on
    limit = gap_after_ms(scheduler.config.pipelines[0])
    clock["now"] = T0 + 20 * MIN + limit
    scheduler.tick(clock["now"], wait=True)
    (status,) = scheduler.status(clock["now"])["pipelines"]
    # the old windows are gaps now; the recent ones without samples are still due
    assert status["gaps_total"] >= 1 and status["last_end_ms"] >= T0 + 20 * MIN
    assert 'openanomaly_pipeline_gaps_total{pipeline="gappy"}' in scheduler.metrics()


@pytest.mark.integration
def test_scheduler_actor_survives_a_bad_file(ray_cluster, tmp_path) -> None:
    """The actor starts (and Ray restarts it) even while the file is invalid."""
    import uuid

    import ray

    from openanomaly.runtime.scheduler_actor import start_scheduler

    path = tmp_path / "p.yaml"
    path.write_text("pipelines: [oops")
    actor = start_scheduler(
        str(path), name=f"bad-{uuid.uuid4().hex[:6]}", namespace="oa-test", autostart=False
    )
    try:
        assert "malformed YAML" in ray.get(actor.status.remote())["config_error"]
        _yaml(path, PIPE.format(name="cpu", query="up"))
        ray.get(actor.reload.remote())
        status = ray.get(actor.status.remote())
        assert status["config_error"] is None and [p["name"] for p in status["pipelines"]] == ["cpu"]
    finally:
        ray.kill(actor, no_restart=True)


def test_a_run_past_the_time_limit_shows_as_stalled(tmp_path) -> None:
    release = threading.Event()

    def stuck(settings, pipeline, *, start_ms, end_ms, fit_time_ms):
        release.wait(30)
        return type("R", (), {"series_scored": 1, "samples_written": 4})()

    config = _yaml(tmp_path / "p.yaml", PIPE.format(name="slow", query="a"))
    scheduler = Scheduler(config, store=MemoryStore(), run_window=stuck, now=lambda: T0, window_timeout=0.2)
    scheduler.tick(T0 + 10 * MIN)
    try:
        time.sleep(0.5)
        (status,) = scheduler.status()["pipelines"]
        assert status["running"] and status["state"] == "stalled"
        assert "limit 0.2s" in status["reason"]
        assert 'openanomaly_pipeline_state{pipeline="slow",state="stalled"} 1.0' in scheduler.metrics()
    finally:
        release.set()
        assert scheduler.wait_idle(30)
    assert scheduler.status()["pipelines"][0]["state"] == "idle"


@pytest.mark.integration
def test_a_model_that_cannot_be_placed_times_out_visibly(ray_cluster, tmp_path) -> None:
    """A model actor asking for a GPU the cluster lacks: the window fails with a reason, it never hangs."""
    from openanomaly.runtime.options import JobOptions

    config = _yaml(tmp_path / "p.yaml", PIPE.format(name="gpu", query="up"))
    scheduler = Scheduler(
        config, store=MemoryStore(), job_options=JobOptions(num_gpus=1), now=lambda: T0, window_timeout=3
    )
    try:
        scheduler.tick(T0 + 10 * MIN, wait=True)
        (status,) = scheduler.status()["pipelines"]
        assert status["state"] == "failed" and status["timeouts_total"] == 1
        assert "WindowTimeout" in status["reason"] and "waiting for resources" in status["reason"]
        assert status["last_end_ms"] is None  # the window is retried, not skipped
    finally:
        scheduler.stop(wait=True)
