"""``run`` and ``scheduler`` start Ray patiently, and say plainly when it will not start.

A start that times out is simulated with ``OPENANOMALY_RAY_START_TIMEOUT_S=0``: Ray then
waits 0 s for its GCS (``RAY_gcs_server_port_wait_time_s``), as a machine too busy to
start it in time would make it wait in vain. Each case runs the real command in a
process group of its own, and the group is killed afterwards, so nothing a failed start
left can outlive the test (and the test checks that nothing was left).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from openanomaly.cli import main
from openanomaly.runtime.raystart import ATTEMPTS_ENV, TIMEOUT_ENV, auth_notice

CONFIG = "settings:\n  tsdb:\n    url: http://127.0.0.1:9\npipelines: []\n"


def _command(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run ``openanomaly ARGV`` with a 0 s Ray start-up wait; also whether it left processes."""
    config = tmp_path / "pipelines.yaml"
    config.write_text(CONFIG)
    env = os.environ | {TIMEOUT_ENV: "0", ATTEMPTS_ENV: "2", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_gcs_server_port_wait_time_s", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "openanomaly.cli", *argv, "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=240)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
            left = True
        except ProcessLookupError:
            left = False
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), left


@pytest.mark.parametrize("argv", [("run",), ("scheduler", "--address", "local")], ids=["run", "scheduler"])
def test_a_ray_start_that_times_out_is_one_error_line_and_exit_2(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    done, left = _command(tmp_path, *argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "a local Ray did not start after 2 attempt(s)" in errors[0]
    assert f"{TIMEOUT_ENV}, now 0 s" in errors[0] and ATTEMPTS_ENV in errors[0]
    assert "retrying" in done.stderr  # the first failure was retried
    assert not left, "the failed starts left processes behind"


def test_bad_knob_values_are_user_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    config = tmp_path / "pipelines.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv(ATTEMPTS_ENV, "three")
    assert main(["run", "-c", str(config)]) == 2
    assert capsys.readouterr().err == f"error: {ATTEMPTS_ENV}='three' is not a whole number\n"
    monkeypatch.setenv(ATTEMPTS_ENV, "0")
    assert main(["run", "-c", str(config)]) == 2
    assert "must be 1 or more" in capsys.readouterr().err


def test_token_auth_turned_on_by_ray_is_said_aloud() -> None:
    notice = auth_notice(user_set=False, mode="token")
    assert notice is not None
    assert "Ray token auth is on" in notice and "~/.ray/auth_token" in notice
    assert "RAY_AUTH_MODE=disabled" in notice
    # The user chose: nothing to say, whichever way.
    assert auth_notice(user_set=True, mode="token") is None
    assert auth_notice(user_set=True, mode="disabled") is None
