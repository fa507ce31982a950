"""The container files checked without a cluster or a Docker daemon: the Kubernetes manifests
against the Kubernetes API's field names they use (an unknown or misspelt field fails, as a
schema check would), their cross references (selectors, volumes, claims, secrets, ports), the
compose file's three sites on host networking, and the Dockerfile's non-root user and build
arguments.

Hand mutations that must fail here: `volumeMount` for `volumeMounts`; a claim name that no
PersistentVolumeClaim declares; a Service whose selector matches no pod; `USER root`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests (pip install pyyaml)")

CONTAINERS = Path(__file__).resolve().parents[1] / "containers"

# Fields of the Kubernetes API (v1 / apps/v1) that these manifests may use, per object type.
META = {"name", "namespace", "labels", "annotations"}
OBJECT = {"apiVersion", "kind", "metadata"}
FIELDS: dict[str, set[str]] = {
    "Namespace": OBJECT,
    "Secret": OBJECT | {"type", "data", "stringData"},
    "ConfigMap": OBJECT | {"data"},
    "PersistentVolumeClaim": OBJECT | {"spec"},
    "Deployment": OBJECT | {"spec"},
    "Service": OBJECT | {"spec"},
}
API = {"Namespace": "v1", "Secret": "v1", "ConfigMap": "v1", "PersistentVolumeClaim": "v1",
       "Service": "v1", "Deployment": "apps/v1"}
PVC_SPEC = {"accessModes", "resources", "storageClassName", "volumeMode"}
ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
DEPLOYMENT_SPEC = {"replicas", "strategy", "selector", "template"}
POD_SPEC = {"containers", "volumes", "securityContext", "serviceAccountName", "nodeSelector"}
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup"}
CONTAINER = {"name", "image", "imagePullPolicy", "args", "command", "ports", "volumeMounts",
             "resources", "env"}
PORT = {"name", "containerPort", "protocol"}
MOUNT = {"name", "mountPath", "readOnly", "subPath"}
VOLUME_SOURCES = {"secret": {"secretName", "defaultMode"}, "configMap": {"name", "defaultMode"},
                  "persistentVolumeClaim": {"claimName", "readOnly"}}
SERVICE_SPEC = {"selector", "ports", "type"}
SERVICE_PORT = {"name", "port", "targetPort", "protocol"}


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((CONTAINERS / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: unknown field(s) {sorted(unknown)}"


def check_pod(spec: dict[str, Any], where: str) -> None:
    only(spec, POD_SPEC, where)
    only(spec.get("securityContext", {}), POD_SECURITY, f"{where}.securityContext")
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    volumes = {}
    for v in spec["volumes"]:
        (source, body), = ((k, val) for k, val in v.items() if k != "name")
        assert source in VOLUME_SOURCES, f"{where}: volume source {source}"
        only(body, VOLUME_SOURCES[source], f"{where}.volumes.{v['name']}")
        volumes[v["name"]] = (source, body)
    for c in spec["containers"]:
        only(c, CONTAINER, f"{where}.containers")
        assert c["image"] and c["args"][0] in ("server", "client")
        for p in c.get("ports", []):
            only(p, PORT, f"{where}.ports")
        for m in c["volumeMounts"]:
            only(m, MOUNT, f"{where}.volumeMounts")
            assert m["name"] in volumes, f"{where}: mount of undeclared volume {m['name']}"


def test_manifests_use_only_known_kubernetes_fields():
    docs = manifests()
    for doc in docs:
        kind, where = doc["kind"], f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["apiVersion"] == API[kind], where
        only(doc, FIELDS[kind], where)
        only(doc["metadata"], META, f"{where}.metadata")
        if kind == "PersistentVolumeClaim":
            only(doc["spec"], PVC_SPEC, where)
            assert set(doc["spec"]["accessModes"]) <= ACCESS_MODES
            assert doc["spec"]["resources"]["requests"]["storage"]
        if kind == "Deployment":
            only(doc["spec"], DEPLOYMENT_SPEC, where)
            template = doc["spec"]["template"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            check_pod(template["spec"], where)
        if kind == "Service":
            only(doc["spec"], SERVICE_SPEC, where)
            for p in doc["spec"]["ports"]:
                only(p, SERVICE_PORT, where)


def test_manifests_reference_what_they_declare():
    docs = manifests()
    declared = {(d["kind"], d["metadata"]["name"]) for d in docs}
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Secret", "PersistentVolumeClaim"} <= kinds
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] == "Deployment"}
    for template in pods.values():
        for v in template["spec"]["volumes"]:
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in declared
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in declared
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in declared
    for service in (d for d in docs if d["kind"] == "Service"):
        matched = [t for t in pods.values()
                   if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert matched, f"Service {service['metadata']['name']} selects no pod"
        names = {p["name"] for t in matched for c in t["spec"]["containers"] for p in c.get("ports", [])}
        assert all(p["targetPort"] in names for p in service["spec"]["ports"])
    site = pods["medfed-site-a"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in site["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"medfed-site-a-data", "medfed-site-a-state"}  # data and state on volumes


def test_compose_runs_three_sites_on_host_networking():
    compose = yaml.safe_load((CONTAINERS / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"server", "site-a", "site-b", "site-c"}
    for name, service in services.items():
        assert service["image"] == "medfed:latest" and service["network_mode"] == "host"
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert {"/certs", "/state"} <= mounts, name
        if name != "server":
            assert "127.0.0.1:50051" in service["command"] and "/config/site.toml" in mounts
            assert f"{name}-state" in compose["volumes"]


def test_dockerfile_one_non_root_image_with_base_and_torch_arguments():
    text = (CONTAINERS / "Dockerfile").read_text()
    assert "ARG BASE=" in text and "FROM ${BASE}" in text
    assert "ARG TORCH=" in text and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["medfed"]' in text
