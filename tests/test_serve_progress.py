"""``serve run serve_config.yaml`` says what it is waiting for, and stops without our tracebacks.

The shipped config, as a user starts it (only the port and the pipelines file moved into
a temp directory): the builder's, each forecaster replica's and the ingress's
``openanomaly: …`` lines reach the console of ``serve run`` through Ray's log
forwarding, in order, ending with the URL once the app answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from openanomaly.serve.progress import PREFIX, app_summary, scheduler_summary
from tests.fixtures.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_the_builder_names_every_model_and_what_start_up_waits_for() -> None:
    models = {"bolt": "chronos:openanomaly-bolt-mini", "mad": "mad"}
    first, then = app_summary(models, pipelines="/p.yaml", playground=True)
    assert first == (
        "building the app: 2 forecaster deployments, bolt (chronos:openanomaly-bolt-mini), mad (mad); "
        "an ingress with the playground and the scheduler"
    )
    assert then.startswith("next: Serve starts a replica per deployment and each loads its model")
    assert app_summary(models, pipelines=None, playground=False)[0].endswith("; an ingress")


def test_the_scheduler_line_counts_pipelines_and_names_a_bad_file() -> None:
    pipelines = [{"name": "cpu", "state": "idle"}, {"name": "mem", "state": "disabled"}]
    line = scheduler_summary("/p.yaml", {"pipelines": pipelines, "config_error": None})
    assert line.startswith("scheduler running on /p.yaml: 2 pipelines (cpu, mem), 1 disabled")
    assert "first tick" in line
    empty = scheduler_summary("/p.yaml", {"pipelines": [], "config_error": None})
    assert empty.startswith("scheduler running on /p.yaml: no pipelines yet")
    bad = scheduler_summary("/p.yaml", {"pipelines": [], "config_error": "pipelines[0].query: required"})
    assert bad == "scheduler running, but /p.yaml does not load: pipelines[0].query: required"


def _index(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if text in line]
    assert found, f"no line with {text!r} in:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.integration
def test_serve_run_prints_start_up_progress_and_stops_quietly(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    pipelines = str(tmp_path / "pipelines.yaml")
    args["scheduler"]["pipelines"] = pipelines
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # as docs/serve.md starts it
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ADDRESS": "local",  # a cluster of its own, whatever `ray start` runs on this machine
    }
    serve = str(Path(sys.executable).parent / "serve")
    process = subprocess.Popen(
        [serve, "run", "serve_config.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: whatever is left is killed at the end
    )
    lines: list[str] = []
    output = process.stdout
    assert output is not None
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in output), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 420
        while not any(PREFIX + "ready" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "\n".join(lines)
            time.sleep(0.5)
        # "ready" is honest: the default model answers at once.
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/forecast",
            json={"series": [{"values": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]}], "horizon": 3},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        started = list(lines)
        process.send_signal(signal.SIGTERM)  # `serve run` in the background ignores SIGINT
        process.wait(timeout=120)  # stopped (Ray's handler exits with 15, or aborts: -6)
        reader.join(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    ours = [line[line.index(PREFIX) :] for line in started if PREFIX in line]
    built = _index(ours, "building the app: 3 forecaster deployments, bolt (chronos:openanomaly-bolt-mini)")
    assert _index(ours, "next: Serve starts a replica per deployment") == built + 1
    ready = _index(ours, "ready: ")
    for name, model in args["models"].items():
        loading = _index(ours, f"Forecaster-{name}: loading model {model['spec']} on cpu")
        assert built < loading < _index(ours, f"Forecaster-{name}: model {model['spec']} ready in ") < ready
    assert _index(ours, f"ingress: starting the scheduler on {pipelines}") < ready
    assert _index(ours, f"scheduler running on {pipelines}: no pipelines yet") < ready
    assert ours[ready] == (
        f"{PREFIX}ready: http://127.0.0.1:{port}/ (API docs at http://127.0.0.1:{port}/docs, "
        f"playground at http://127.0.0.1:{port}/playground/)"
    )
    assert ready == len(ours) - 1 and len(ours) <= 12, ours  # a handful of lines, "ready" last
    assert "Traceback" not in "\n".join(lines), "\n".join(lines)
