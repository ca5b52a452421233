"""The alert rules in monitoring/alerts.yml pass ``promtool check rules`` and their unit tests.

promtool ships in Debian's ``prometheus`` package (``.ci/run`` installs it); a missing
promtool fails the test, since a skip would hide that the rules went unchecked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.fixtures.tools import require_tool

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    fired = {
        check["alertname"]
        for test in tests
        for check in test.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    assert fired == alerts
