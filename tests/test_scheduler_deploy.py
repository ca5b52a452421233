"""docker-compose.yml and the Dockerfile: Docker cannot run in CI, so check their structure."""

from __future__ import annotations

from pathlib import Path

import yaml

from openanomaly.configstore import YamlConfigStore

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_has_the_cluster_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"victoriametrics", "minio", "minio-init", "openanomaly", "grafana"} <= set(services)
    head = services["openanomaly"]
    command = " ".join(head["command"])
    assert "ray start --head" in command
    assert "serve deploy serve_config.yaml" in command
    assert "openanomaly scheduler -c" in command
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(head["environment"])
    # every mounted host file exists
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert head["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_pipelines_validate_and_point_at_compose_services() -> None:
    config = YamlConfigStore(ROOT / "examples" / "compose-pipelines.yaml").load()
    assert config.settings.tsdb.url == "http://victoriametrics:8428"
    assert config.settings.artifacts.kind == "s3"
    assert config.settings.artifacts.endpoint_url == "http://minio:9000"
    assert any(p.schedule.fit_every for p in config.pipelines)


def test_dockerfile_uses_uv_and_the_lock_file() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "uv sync --frozen --no-dev" in text
    assert "COPY pyproject.toml uv.lock" in text
    for path in ("serve_config.yaml", "openanomaly", "pyproject.toml", "uv.lock"):
        assert (ROOT / path).exists()
