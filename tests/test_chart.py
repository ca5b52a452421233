"""The Helm chart renders objects that Kubernetes and KubeRay accept, and that fit the code.

No cluster here, so the chart is checked the way an API server would check it:

* ``helm lint --strict`` and ``helm template`` for each values file in
  ``charts/openanomaly/ci/`` (defaults; GPU group with existing Secrets and ConfigMap;
  inline pipelines with chart-made Secrets);
* the RayService against the ``openAPIV3Schema`` of KubeRay's own CRD
  (``tests/data/kuberay-crds``, or the folder in ``KUBERAY_CRDS``), made strict: the API server
  rejects unknown fields (strict field validation), so a misspelt key fails here too;
* every core object, and each Ray pod template wrapped as a Pod, against the Kubernetes
  schemas that ship inside ``kubernetes-validate`` (offline);
* against the code: every ``import_path`` in ``serveConfigV2`` names a module of the
  ``openanomaly`` package, the default applications are those of the repository's
  ``serve_config.yaml``, and the rendered ``pipelines.yaml`` loads with
  ``openanomaly.configstore.files.load_config`` given the Secret's keys as environment.

Helm comes from ``$HELM`` or ``PATH``. A missing helm FAILS the test rather than skipping
it (with the install command: ``tests/fixtures/tools.py``): ``.ci/run`` installs one, so a
skip would only hide that the chart went unchecked.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from openanomaly.configstore.files import load_config
from tests.fixtures.tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "openanomaly"
STACK = ROOT / "charts" / "openanomaly-stack"
KUBERAY_CRDS = Path(os.environ.get("KUBERAY_CRDS", ROOT / "tests" / "data" / "kuberay-crds"))
KUBERNETES_VERSION = "1.31.0"
RELEASE = "oa"
CASES = {
    "defaults": [],
    "gpu-existing-secrets": ["-f", str(CHART / "ci" / "gpu-values.yaml")],
    "inline-pipelines": ["-f", str(CHART / "ci" / "pipelines-values.yaml")],
}


def _helm() -> str:
    return require_tool("helm", env="HELM")


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=60, check=False)


def _template(chart: Path, *args: str) -> list[dict[str, Any]]:
    result = _run_helm("template", RELEASE, str(chart), "--namespace", "anomaly", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def _by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _strict(schema: Any) -> Any:
    """Copy of an openAPIV3Schema in which objects with known properties take no others.

    The API server drops or (with strict field validation, kubectl's default) rejects
    unknown fields; jsonschema would accept them silently.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _pod_templates(rayservice: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {case: _template(CHART, *args) for case, args in CASES.items()}


@pytest.fixture(scope="module")
def rayservice_validator() -> jsonschema.Draft7Validator:
    # libyaml: the pure-Python loader takes over 10 s on this 1 MB file.
    crd = yaml.load((KUBERAY_CRDS / "ray.io_rayservices.yaml").read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case: str) -> None:
    result = _run_helm("lint", "--strict", str(CHART), *CASES[case])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_rayservice_matches_kuberay_crd(
    case: str, rendered: dict[str, list[dict[str, Any]]], rayservice_validator: jsonschema.Draft7Validator
) -> None:
    rayservice = _one(rendered[case], "RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    rayservice_validator.validate(rayservice)


def test_strict_crd_schema_rejects_unknown_fields(
    rendered: dict[str, list[dict[str, Any]]], rayservice_validator: jsonschema.Draft7Validator
) -> None:
    """Guards the guard: a misspelt key must fail validation, not vanish."""
    rayservice = copy.deepcopy(_one(rendered["defaults"], "RayService"))
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpec"] = []
    # .message, not str(error): the latter prints the whole (huge) schema.
    messages = [error.message for error in rayservice_validator.iter_errors(rayservice)]
    assert len(messages) == 1
    assert "'workerGroupSpec' was unexpected" in messages[0]


@pytest.mark.parametrize("case", CASES)
def test_core_objects_and_pods_match_kubernetes_schemas(
    case: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[case]
    core = [doc for doc in docs if doc["apiVersion"] == "v1"]
    assert core or case == "gpu-existing-secrets"
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    for group, template in _pod_templates(_one(docs, "RayService")):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": group, **template["metadata"]}}
        pod["spec"] = template["spec"]
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_serve_config_import_paths_exist_in_package(
    case: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    serve = yaml.safe_load(_one(rendered[case], "RayService")["spec"]["serveConfigV2"])
    assert serve["applications"]
    for app in serve["applications"]:
        module, _, attribute = app["import_path"].partition(":")
        assert module.startswith("openanomaly.") and attribute, app["import_path"]
        assert importlib.util.find_spec(module) is not None, f"{app['name']}: no module {module}"


def test_default_serve_applications_mirror_serve_config_yaml(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The chart deploys what ``serve run serve_config.yaml`` deploys (listening on 0.0.0.0),
    plus the scheduler on the mounted pipelines file."""
    repo = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    chart = yaml.safe_load(_one(rendered["defaults"], "RayService")["spec"]["serveConfigV2"])
    scheduler = chart["applications"][0]["args"].pop("scheduler")
    assert scheduler == {"pipelines": "/etc/openanomaly/pipelines.yaml"}
    assert repo["applications"][0]["args"].pop("scheduler") == {"pipelines": "~/.openanomaly/pipelines.yaml"}
    assert chart["applications"] == repo["applications"]
    assert chart["http_options"]["host"] == "0.0.0.0"
    assert chart["http_options"]["port"] == repo["http_options"]["port"]
    assert chart.get("proxy_location") == repo.get("proxy_location")


@pytest.mark.parametrize("case", ["defaults", "inline-pipelines"])
def test_rendered_pipelines_load_as_openanomaly_config(
    case: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """pipelines.yaml loads the way the pods load it: ${VAR}s from the Secret's keys."""
    docs = rendered[case]
    env = _by_name(docs, "Secret")[f"{RELEASE}-openanomaly-env"]["stringData"]
    text = _by_name(docs, "ConfigMap")[f"{RELEASE}-openanomaly-config"]["data"]["pipelines.yaml"]
    config = load_config(text, source="pipelines.yaml", env=env)
    if case == "inline-pipelines":
        assert [p.name for p in config.pipelines] == ["node-cpu"]
        assert "not-a-real-token" not in text
        assert config.settings.tsdb.bearer_token.get_secret_value() == "not-a-real-token"
        # tpl ran: settings may name the release's services.
        assert config.settings.tsdb.url == f"http://{RELEASE}-victoria-metrics-single-server:8428"
        assert config.settings.artifacts.endpoint_url == f"http://{RELEASE}-minio:9000"
        assert config.settings.config_store.kind == "s3"  # editable although the ConfigMap is not


def test_every_ray_container_gets_config_and_credentials(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["inline-pipelines"]
    secret = _by_name(docs, "Secret")[f"{RELEASE}-openanomaly-env"]
    assert set(secret["stringData"]) == {
        "OPENANOMALY_TSDB_BEARER_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "OPENANOMALY_API_TOKEN",
        "OPENANOMALY_READ_TOKEN",
    }
    config_map = f"{RELEASE}-openanomaly-config"
    assert config_map in _by_name(docs, "ConfigMap")
    for group, template in _pod_templates(_one(docs, "RayService")):
        (container,) = template["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}], group
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OPENANOMALY_CONFIG"] == "/etc/openanomaly/pipelines.yaml", group
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["openanomaly-config"]["configMap"]["name"] == config_map, group
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["openanomaly-config"] == "/etc/openanomaly", group


def test_token_auth_on_by_default_with_chart_made_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["defaults"]
    auth = _one(docs, "RayService")["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    secret = _by_name(docs, "Secret")[auth["secretName"]]
    assert len(secret["data"]["auth_token"]) > 40
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_gpu_group_and_existing_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-existing-secrets"]
    made = [d["metadata"]["name"] for d in docs if d["kind"] in ("Secret", "ConfigMap")]
    assert made == [f"{RELEASE}-openanomaly-dashboard"], "existing objects reused"
    cluster = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "ray-auth-token"}
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["rayStartParams"]["num-gpus"] == "2"
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (1, 1, 4)
    spec = gpu["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "nvidia.com/gpu" not in str(groups["cpu"]["template"]["spec"]["containers"][0]["resources"])
    for _, template in _pod_templates(_one(docs, "RayService")):
        (container,) = template["spec"]["containers"]
        assert container["image"] == "registry.example.com/openanomaly:0.1.0-cuda"
        assert container["envFrom"] == [{"secretRef": {"name": "openanomaly-credentials"}}]
        assert template["spec"]["volumes"][0]["configMap"]["name"] == "openanomaly-pipelines"
        assert {"name": "OPENANOMALY_RELEASE", "value": RELEASE} in container["env"]


def test_auth_disabled_is_explicit_and_makes_no_token() -> None:
    docs = _template(CHART, "--set", "auth.mode=disabled")
    assert _one(docs, "RayService")["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "disabled"}
    assert f"{RELEASE}-openanomaly-ray-auth" not in _by_name(docs, "Secret")


def test_inject_env_for_old_operators() -> None:
    docs = _template(CHART, "--set", "auth.injectEnv=true")
    cluster = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    assert "authOptions" not in cluster
    env = {e["name"]: e for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-openanomaly-ray-auth",
        "key": "auth_token",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "auth.mode=off"], "auth.mode"),
        (["--set", "workerz.cpu.replicas=2"], "workerz"),
        (["--set", "workers.cpu.replicas=9"], "minReplicas <= replicas <= maxReplicas"),
        (["--set", "workers.gpu.enabled=true,workers.gpu.groupName=cpu"], "distinct names"),
        (["--set", "serveConfig.applications[0].import_path=nocolon"], "import_path"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(args: list[str], message: str) -> None:
    result = _run_helm("template", RELEASE, str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr


def _stub_chart(path: Path, name: str) -> None:
    """A stand-in for a downloadable subchart: just enough to see whether it renders."""
    (path / "templates").mkdir(parents=True)
    (path / "Chart.yaml").write_text(f"apiVersion: v2\nname: {name}\nversion: 99.0.0\n")
    (path / "templates" / "stub.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stub-{name}\n"
    )


def test_stack_chart_conditions_and_wiring(tmp_path: Path) -> None:
    """The umbrella chart: optional charts off by default, values-trial.yaml wires them in.

    The real subcharts need the network (``helm dependency update``), so stand-ins with the
    same names take their place; the openanomaly subchart is the real one.
    """
    stack = tmp_path / "openanomaly-stack"
    shutil.copytree(STACK, stack)
    shutil.copytree(CHART, stack / "charts" / "openanomaly")
    for name in ("victoria-metrics-single", "minio"):
        _stub_chart(stack / "charts" / name, name)
    lint = _run_helm("lint", "--strict", str(stack))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    defaults = _template(stack)
    assert not {"stub-minio", "stub-victoria-metrics-single"} & set(_by_name(defaults, "ConfigMap"))

    trial = _template(stack, "-f", str(stack / "values-trial.yaml"))
    config_maps = _by_name(trial, "ConfigMap")
    assert {"stub-minio", "stub-victoria-metrics-single"} <= set(config_maps)
    config = load_config(config_maps[f"{RELEASE}-openanomaly-config"]["data"]["pipelines.yaml"], env={})
    assert config.settings.tsdb.url == f"http://{RELEASE}-victoria-metrics-single-server:8428"
    head = _one(trial, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-minio",
        "key": "rootUser",
    }


def test_grafana_dashboard_configmap_for_the_sidecar(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dashboard = _by_name(rendered["defaults"], "ConfigMap")[f"{RELEASE}-openanomaly-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "files" / "openanomaly-dashboard.json").read_text()
    assert json.loads(dashboard["data"]["openanomaly-dashboard.json"]) == json.loads(shipped)
    off = _template(CHART, "--set", "grafanaDashboard.enabled=false")
    assert f"{RELEASE}-openanomaly-dashboard" not in _by_name(off, "ConfigMap")


def test_stack_victoriametrics_deduplicates_retried_writes() -> None:
    values = yaml.safe_load((STACK / "values.yaml").read_text())
    extra = values["victoria-metrics-single"]["server"]["extraArgs"]
    assert extra["dedup.minScrapeInterval"] == "1ms"
    # A window job lists its series first: the 30,000 default would refuse a large pipeline.
    assert int(extra["search.maxSeries"]) >= 100_000 and int(extra["search.maxUniqueTimeseries"]) >= 100_000
