"""deploy/kubernetes (issue 15): each overlay renders with `kubectl kustomize`, validates
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an unknown field is an
error), and says what an operator relies on: replicas, probes, ports, a non-root pod, and
only VCC_PKI_* names that gateway/config.py reads.

ServiceMonitor is a prometheus-operator CRD: kubernetes-validate has schemas for built-in
kinds only, so it is the one kind checked by hand here (its fields) instead."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Config, load_config
from tests.deploytools import DEPLOY, require_tool

KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("single-sqlite", "ha-postgres")
KUBERNETES_VERSION = "1.30"
# Kinds that kubernetes-validate has no schema for (CRDs), and why each is acceptable.
CRDS = {"ServiceMonitor": "monitoring.coreos.com/v1, prometheus-operator"}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_object_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    checked = []
    for doc in docs:
        if doc["kind"] in CRDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "Ingress", "PodDisruptionBudget", "NetworkPolicy",
            "ConfigMap", "ServiceAccount"} <= set(checked)


def test_the_validator_refuses_a_typo() -> None:
    """Strict validation is what catches a misspelt field (so the test above means it)."""
    docs = render("ha-postgres")
    deployment = one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_service_monitor_scrapes_metrics(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items())
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics",
                                             "interval": "30s"}]
    assert "http" in {p["name"] for p in service["spec"]["ports"]}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Every VCC_PKI_* variable the container gets: the ConfigMap's and its own env
    (a Secret reference stands for its value as "<secret>")."""
    config_map = one(docs, "ConfigMap")
    spec = container(docs)
    assert spec["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    env = dict(config_map["data"])
    for item in spec.get("env", []):
        env[item["name"]] = item.get("value", "<secret>")
    return env


def test_environment_names_are_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    env = environment(docs)
    settings = {f"VCC_PKI_{f.name.upper()}" for f in dataclasses.fields(Config)} - {
        "VCC_PKI_EXTRA"}
    assert set(env) <= settings, set(env) - settings
    # and the values parse as the gateway parses them (secrets and the module path aside)
    plain = {k: v for k, v in env.items() if v != "<secret>"}
    config = load_config(plain)
    assert config.bind == "0.0.0.0"  # reachable from the Service, not only loopback
    assert config.data_dir == Path("/var/lib/vcc-pki")
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"http": config.http_port, "https": config.https_port,
                     "est": config.est_port}


def test_probes_and_security(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    spec = container(docs)
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert spec["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the user the image (deploy/container/Containerfile) runs as
    [user] = re.findall(r"^USER (\d+):(\d+)$",
                        (DEPLOY / "container" / "Containerfile").read_text(), re.M)
    assert (str(pod["securityContext"]["runAsUser"]),
            str(pod["securityContext"]["runAsGroup"])) == user != ("0", "0")
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in spec["volumeMounts"]}
    assert {"/var/lib/vcc-pki", "/tmp"} <= mounts


def test_ingress_passes_tls_through(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """ACME and EST keep their TLS end to end (EST reads the client certificate from the
    handshake); OCSP and CRLs are plain HTTP."""
    _, docs = rendered
    backends = {}
    for ingress in by_kind(docs, "Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        [rule] = ingress["spec"]["rules"]
        port = rule["http"]["paths"][0]["backend"]["service"]["port"]["name"]
        passthrough = annotations.get("nginx.ingress.kubernetes.io/ssl-passthrough") == "true"
        backends[port] = passthrough
    assert backends == {"http": False, "https": True, "est": True}


def test_single_sqlite() -> None:
    docs = render("single-sqlite")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert by_kind(docs, "HorizontalPodAutoscaler") == []
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data",
                               "persistentVolumeClaim": {"claimName": "vcc-pki-data"}}
    assert one(docs, "PersistentVolumeClaim")["metadata"]["name"] == "vcc-pki-data"
    env = environment(docs)
    assert "VCC_PKI_DATABASE_URL" not in env and env["VCC_PKI_KEY_BACKEND"] == "software"
    assert env["VCC_PKI_KEY_PASSPHRASE"] == "<secret>"


def test_ha_postgres() -> None:
    docs = render("ha-postgres")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2, "selector": {"matchLabels": {
            "app.kubernetes.io/component": "gateway", "app.kubernetes.io/name": "vcc-pki",
            "app.kubernetes.io/part-of": "vcc-pki"}}}
    env = environment(docs)
    for secret in ("VCC_PKI_DATABASE_URL", "VCC_PKI_REDIS_URL", "VCC_PKI_PKCS11_PIN"):
        assert env[secret] == "<secret>"
    assert env["VCC_PKI_KEY_BACKEND"] == "pkcs11"
    assert env["VCC_PKI_PKCS11_MODULE"].startswith("/opt/pkcs11/")
    # workers: auto with Redis, from the CPU limit (issue 18); the base's memory limit stays
    assert "VCC_PKI_WORKERS" not in env
    assert container(docs)["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    # Keep-alive connections end after 100 requests, so the Service spreads clients.
    assert env["VCC_PKI_HTTP_KEEPALIVE_REQUESTS"] == "100"
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["/opt/pkcs11"]["readOnly"] is True
    egress = {p["port"] for rule in one(docs, "NetworkPolicy")["spec"]["egress"]
              for p in rule["ports"]}
    assert {5432, 6379} <= egress
