"""deploy/: the kustomize base and KEDA overlay against the Kubernetes JSON schemas and the CRD
schemas kept in tests/data/crds, the Dockerfile through hadolint, and the promises the manifests
make to the connector (probes, ports, the Secret, shutdown time) checked against its settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from connector.cli.settings_help import SETTINGS_HELP
from connector.core.errors import ConfigError
from connector.settings import load_settings
from tests.deploy.kustomize import Doc, build, find, pod_spec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "tests" / "data" / "crds"
KUBERNETES_VERSION = "1.33.0"
CUSTOM = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return build(DEPLOY / "base")


@pytest.fixture(scope="module")
def keda() -> list[Doc]:
    return build(DEPLOY / "overlays" / "keda")


@pytest.mark.parametrize(
    "overlay", ["base", "overlays/keda", "overlays/keda-sasl", "overlays/multi-export", "jobs"]
)
def test_every_manifest_is_valid(overlay: str) -> None:
    docs = build(DEPLOY / overlay)
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM:
            schema = yaml.safe_load((CRDS / f"{doc['kind'].lower()}.yaml").read_text())
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_crd_schemas_catch_a_misspelt_field(base: list[Doc]) -> None:
    monitor = find(base, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    schema = yaml.safe_load((CRDS / "servicemonitor.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, schema)


def test_strict_kubernetes_validation_catches_a_misspelt_field(base: list[Doc]) -> None:
    deployment = find(base, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _container(deployment: Doc) -> Doc:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _config(docs: list[Doc]) -> dict[str, str]:
    return dict(find(docs, "ConfigMap")["data"])


def _acknowledged(config: dict[str, str]) -> dict[str, str]:
    return {**config, "OMNISEND_API_KEY": "k", "OMNISEND_PRIVACY_ACKNOWLEDGED": "true"}


def test_configmap_holds_only_known_settings_and_loads(base: list[Doc]) -> None:
    known = {name for name, _, _ in SETTINGS_HELP}
    config = _config(base)
    assert set(config) <= known
    with pytest.raises(ConfigError, match="personal data"):  # until the user acknowledges
        load_settings({**config, "OMNISEND_API_KEY": "k"})
    settings, _ = load_settings(_acknowledged(config))
    assert settings.metrics_port == 9400


def test_pod_runs_non_root_read_only_without_privileges(base: list[Doc]) -> None:
    pod = find(base, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no KAFKA_PORT=tcp://... from Services
    security = _container(find(base, "Deployment"))["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_grace_period_outlasts_the_shutdown_timeout(base: list[Doc]) -> None:
    pod = find(base, "Deployment")["spec"]["template"]["spec"]
    settings, _ = load_settings(_acknowledged(_config(base)))
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout_s + 5


def test_probes_ports_and_secret_match_the_connector(base: list[Doc]) -> None:
    deployment = find(base, "Deployment")
    container = _container(deployment)
    (port,) = container["ports"]
    assert port["containerPort"] == int(_config(base)["METRICS_PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_file = Path(env["OMNISEND_API_KEY_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (name,) = [n for n, m in mounts.items() if Path(m["mountPath"]) == key_file.parent]
    assert mounts[name]["readOnly"] is True
    assert volumes[name]["secret"]["items"] == [{"key": "api-key", "path": key_file.name}]
    service = find(base, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    # Scraped while not ready too (a broker or registry outage, refused credentials): the
    # metrics that say why, and the alerts on them, are needed most then.
    assert service["spec"]["publishNotReadyAddresses"] is True
    monitor = find(base, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_selectors_select_the_pods(base: list[Doc]) -> None:
    pod_labels = find(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        selector = find(base, kind)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), kind
    assert find(base, "Service")["spec"]["selector"].items() <= pod_labels.items()
    monitor = find(base, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= find(base, "Service")["metadata"]["labels"].items()


def test_disruption_budget_never_blocks_a_drain(base: list[Doc]) -> None:
    assert find(base, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": find(base, "PodDisruptionBudget")["spec"]["selector"],
    }


def test_keda_overlay_scales_the_deployment_on_lag_from_one_replica(keda: list[Doc]) -> None:
    scaled = find(keda, "ScaledObject")["spec"]
    deployment = find(keda, "Deployment")
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    assert scaled["minReplicaCount"] == 1
    assert 1 < scaled["maxReplicaCount"] <= 10
    (trigger,) = scaled["triggers"]
    config = _config(keda)
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config["KAFKA_GROUP_ID"]
    assert trigger["metadata"]["topic"] == config["KAFKA_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install httpx\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(bad)], capture_output=True, check=False)
    assert result.returncode != 0


def test_image_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")


def test_image_dependencies_are_pinned_within_the_project_ranges() -> None:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (DEPLOY / "requirements.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in deploy/requirements.txt"
        assert requirement.specifier.contains(pins[name]), dependency


def test_jobs_share_the_base_configuration_and_key_and_run_the_cli(base: list[Doc]) -> None:
    from connector.cli import build_parser  # noqa: PLC0415

    jobs = build(DEPLOY / "jobs")
    live = pod_spec(find(base, "Deployment"))
    (live_container,) = live["containers"]
    assert {d["kind"] for d in jobs} == {"Job", "CronJob"}
    commands = set()
    for doc in jobs:
        pod = pod_spec(doc)
        (container,) = pod["containers"]
        assert container["envFrom"] == live_container["envFrom"]  # the base's ConfigMap
        assert pod["volumes"][0] == live["volumes"][0]  # the base's Secret
        assert container["image"] == live_container["image"]
        assert pod["restartPolicy"] == "Never"
        assert "ports" not in container  # a job serves no probes
        args = build_parser().parse_args(container["args"])  # the image's entrypoint is the CLI
        commands.add(args.command)
    assert commands == {"backfill", "replay-dlq", "reconcile"}
    cron = find(jobs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod_spec(cron)["containers"][0]["args"] == ["reconcile", "--apply"]


def test_network_policy_opens_the_metrics_port_and_the_connectors_egress(base: list[Doc]) -> None:
    policy = find(base, "NetworkPolicy")["spec"]
    pod_labels = find(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["metrics"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (9092, "TCP"), (8081, "TCP"), (443, "TCP")} <= egress
    omnisend = next(r for r in policy["egress"] if any(p["port"] == 443 for p in r["ports"]))
    assert "to" not in omnisend  # any address, IPv4 and IPv6


def test_the_multi_export_overlay_mounts_what_its_file_names(
    base: list[Doc], tmp_path: Path
) -> None:
    from connector.cli import build_parser  # noqa: PLC0415
    from connector.config import load_config  # noqa: PLC0415

    docs = build(DEPLOY / "overlays" / "multi-export")
    pod = pod_spec(find(docs, "Deployment"))
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])  # works with the image's entrypoint
    assert args.command == "run"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (exports,) = [d for d in docs if d["kind"] == "ConfigMap" and "connector.toml" in d["data"]]
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == exports["metadata"]["name"]
    assert str(args.config) == f"{mounts[config_volume]}/connector.toml"
    text = exports["data"]["connector.toml"]
    secret_dirs = {mounts[n] for n, v in volumes.items() if "secret" in v}
    for line in text.splitlines():
        if line.startswith("api_key_file"):
            path = line.split('"')[1]
            assert path.rsplit("/", 1)[0] in secret_dirs, f"{path} is not mounted"
            key = tmp_path / path.strip("/").replace("/", "_")
            key.write_text("k")
            text = text.replace(path, str(key))
    file = tmp_path / "connector.toml"
    # The operator acknowledges the transfer; the base's ConfigMap is the environment.
    file.write_text(text.replace("privacy_acknowledged = false", "privacy_acknowledged = true"))
    config = load_config(file, _config(base))
    assert sorted(config.connections) == ["eu-store", "us-store"]
    assert [e.name for e in config.exports] == ["vip-eu", "geo-eu", "everything-us"]


SERVICE_MONITOR_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
patches:
  - target:
      kind: ServiceMonitor
      name: omnisend-connector
    patch: |-
      - op: add
        path: /metadata/labels/release
        value: kube-prometheus-stack
  - target:
      kind: PrometheusRule
      name: omnisend-connector
    patch: |-
      - op: add
        path: /metadata/labels/release
        value: kube-prometheus-stack
"""


def test_an_overlay_can_label_the_service_monitor_for_its_prometheus(tmp_path: Path) -> None:
    """The README's snippet: kube-prometheus-stack selects ServiceMonitors and
    PrometheusRules by `release`."""
    readme = (ROOT / "README.md").read_text()
    snippet = SERVICE_MONITOR_OVERLAY.format(base="../../base")
    assert snippet in readme
    overlay = tmp_path / "monitoring"
    overlay.mkdir()
    base = Path(os.path.relpath(DEPLOY / "base", overlay))
    (overlay / "kustomization.yaml").write_text(SERVICE_MONITOR_OVERLAY.format(base=base))
    docs = build(overlay)
    assert find(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Its rule selector needs the same label, or no alert is loaded.
    assert find(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "release" not in find(docs, "Deployment")["metadata"]["labels"]


def test_the_keda_sasl_overlay_authenticates_the_scaler() -> None:
    docs = build(DEPLOY / "overlays" / "keda-sasl")
    auth = find(docs, "TriggerAuthentication")
    (trigger,) = find(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert parameters == {"sasl", "username", "password", "tls"}
    misspelt = {**auth, "spec": {"secretTargetRefs": auth["spec"]["secretTargetRef"]}}
    schema = yaml.safe_load((CRDS / "triggerauthentication.yaml").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(misspelt, schema)
