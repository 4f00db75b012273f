"""manifests/: kube-flannel.yml against the official client's models, and install-conf."""

# ApiClient.sanitize_for_serialization carries no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML installed
from kubernetes import client

from subnet.netconf import parse_net_config

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
IMAGE = "localhost/pyflannel:0.1.0"
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
}


def load() -> list[dict[str, Any]]:
    with open(MANIFESTS / "kube-flannel.yml", encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in load() if doc["kind"] == kind]
    return found


def daemonset_pod() -> dict[str, Any]:
    pod: dict[str, Any] = by_kind("DaemonSet")["spec"]["template"]["spec"]
    return pod


def test_objects_in_upstream_order() -> None:
    assert [(d["kind"], d["metadata"]["name"]) for d in load()] == [
        ("Namespace", "kube-flannel"),
        ("ClusterRole", "flannel"),
        ("ClusterRoleBinding", "flannel"),
        ("ServiceAccount", "flannel"),
        ("ConfigMap", "kube-flannel-cfg"),
        ("DaemonSet", "kube-flannel-ds"),
    ]


@pytest.mark.parametrize("index", range(6))
def test_object_deserialises_strictly_into_the_client_models(index: int) -> None:
    """The model holds every key of the YAML: nothing misspelled, nothing mistyped."""
    doc = load()[index]
    api = client.ApiClient()
    model = api.deserialize(json.dumps(doc), MODELS[(doc["apiVersion"], doc["kind"])],
                            "application/json")
    assert api.sanitize_for_serialization(model) == doc


def test_model_check_catches_typos() -> None:
    doc = by_kind("DaemonSet")
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    api = client.ApiClient()
    model = api.deserialize(json.dumps(doc), "V1DaemonSet", "application/json")
    assert api.sanitize_for_serialization(model) != doc


def test_namespace_is_privileged() -> None:
    assert by_kind("Namespace")["metadata"]["labels"] == {
        "k8s-app": "flannel", "pod-security.kubernetes.io/enforce": "privileged"}


def test_rbac_rules_and_binding() -> None:
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
             for r in by_kind("ClusterRole")["rules"]}
    assert rules == {
        (("",), ("pods",)): ["get", "list", "watch"],
        (("",), ("namespaces",)): ["list", "watch"],
        (("networking.k8s.io",), ("networkpolicies",)): ["list", "watch"],
        (("",), ("nodes",)): ["get", "list", "watch"],
        (("",), ("nodes/status",)): ["patch"],
    }
    binding = by_kind("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "flannel"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flannel",
                                    "namespace": "kube-flannel"}]
    assert by_kind("ServiceAccount")["metadata"]["namespace"] == "kube-flannel"


def test_net_conf_is_upstreams_default() -> None:
    cfg = parse_net_config(by_kind("ConfigMap")["data"]["net-conf.json"])
    assert str(cfg.network) == "10.244.0.0/16"
    assert cfg.backend.type == "vxlan"
    assert cfg.enable_nftables is False
    assert cfg.enable_ipv4 is True and cfg.enable_ipv6 is False


def test_cni_conf_is_a_conflist_led_by_flannel() -> None:
    conf = json.loads(by_kind("ConfigMap")["data"]["cni-conf.json"])
    assert conf["name"] == "cbr0"
    assert conf["cniVersion"] == "0.3.1"
    assert [p["type"] for p in conf["plugins"]] == ["flannel", "portmap"]
    assert conf["plugins"][0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}


def test_daemonset_scheduling() -> None:
    ds = by_kind("DaemonSet")
    assert ds["spec"]["selector"] == {"matchLabels": {"app": "flannel"}}
    assert ds["spec"]["template"]["metadata"]["labels"]["app"] == "flannel"
    pod = daemonset_pod()
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "flannel"
    assert pod["tolerations"] == [{"operator": "Exists", "effect": "NoSchedule"}]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]


def test_init_containers_install_plugin_and_conflist() -> None:
    plugin, conf = daemonset_pod()["initContainers"]
    assert plugin["name"] == "install-cni-plugin" and conf["name"] == "install-cni"
    assert plugin["image"] == conf["image"] == IMAGE
    assert plugin["command"] + plugin["args"] == [
        "/opt/bin/install-conf", "--executable", "/opt/bin/flannel-cni", "/opt/cni/bin/flannel"]
    assert plugin["volumeMounts"] == [{"name": "cni-plugin", "mountPath": "/opt/cni/bin"}]
    assert conf["command"] + conf["args"] == [
        "/opt/bin/install-conf", "/etc/kube-flannel/cni-conf.json",
        "/etc/cni/net.d/10-flannel.conflist"]
    assert {m["name"]: m["mountPath"] for m in conf["volumeMounts"]} == {
        "cni": "/etc/cni/net.d", "flannel-cfg": "/etc/kube-flannel/"}


def test_main_container() -> None:
    (main,) = daemonset_pod()["containers"]
    assert main["name"] == "kube-flannel" and main["image"] == IMAGE
    assert main["command"] == ["/opt/bin/flanneld"]
    assert main["args"] == ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
    assert main["ports"] == [{"name": "healthz", "containerPort": 8081, "protocol": "TCP"}]
    assert main["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "healthz"},
                                     "initialDelaySeconds": 10, "periodSeconds": 30}
    assert main["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "healthz"},
                                      "initialDelaySeconds": 5, "periodSeconds": 10}
    assert main["resources"] == {"requests": {"cpu": "100m", "memory": "50Mi"}}
    assert main["securityContext"] == {"privileged": False,
                                       "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}
    assert env == {
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "EVENT_QUEUE_DEPTH": "5000",
        "CONT_WHEN_CACHE_NOT_READY": "false",
    }
    assert {m["name"]: m["mountPath"] for m in main["volumeMounts"]} == {
        "run": "/run/flannel", "flannel-cfg": "/etc/kube-flannel/",
        "xtables-lock": "/run/xtables.lock"}


def test_volumes_match_upstream() -> None:
    volumes = {v["name"]: {k: val for k, val in v.items() if k != "name"}
               for v in daemonset_pod()["volumes"]}
    assert volumes == {
        "run": {"hostPath": {"path": "/run/flannel"}},
        "cni-plugin": {"hostPath": {"path": "/opt/cni/bin"}},
        "cni": {"hostPath": {"path": "/etc/cni/net.d"}},
        "flannel-cfg": {"configMap": {"name": "kube-flannel-cfg"}},
        "xtables-lock": {"hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
    }
    pod = daemonset_pod()
    mounted = {m["name"] for c in pod["containers"] + pod["initContainers"]
               for m in c["volumeMounts"]}
    assert mounted == set(volumes)


def test_containerfile_builds_what_the_manifest_runs() -> None:
    """The text only; tests/e2e/test_image.py builds the image and runs the manifest on it."""
    text = (MANIFESTS / "Containerfile").read_text()
    assert "ARG BASE=docker.io/library/python:3.11-slim\nFROM ${BASE}\n" in text
    for needed in ("nftables", "iptables", "iproute2", "wireguard-go",
                   "pip install --no-cache-dir --disable-pip-version-check --no-deps .",
                   "python -m cni.bundle /opt/bin/flannel-cni", "/opt/bin/flanneld",
                   "manifests/install-conf.py /opt/bin/install-conf"):
        assert needed in text


# --- install-conf ------------------------------------------------------------------


def run_install_conf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MANIFESTS / "install-conf.py"), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_install_conf_installs_the_conflist_atomically(tmp_path: Path) -> None:
    source = tmp_path / "cni-conf.json"
    source.write_text(by_kind("ConfigMap")["data"]["cni-conf.json"])
    target = tmp_path / "net.d" / "10-flannel.conflist"
    target.parent.mkdir()
    target.write_text("old")
    result = run_install_conf(str(source), str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_text() == source.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(target.parent)) == ["10-flannel.conflist"]  # no temp left


def test_install_conf_refuses_broken_json(tmp_path: Path) -> None:
    source = tmp_path / "cni-conf.json"
    source.write_text("{broken")
    target = tmp_path / "10-flannel.conflist"
    target.write_text("{}")
    result = run_install_conf(str(source), str(target))
    assert result.returncode == 1
    assert "install-conf:" in result.stderr
    assert target.read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["10-flannel.conflist", "cni-conf.json"]


def test_install_conf_executable_plugin(tmp_path: Path) -> None:
    source = tmp_path / "flannel-cni"
    source.write_bytes(b"#!/usr/bin/env python3\nprint('plugin')\n")
    target = tmp_path / "flannel"
    assert run_install_conf("--executable", str(source), str(target)).returncode == 0
    assert target.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert run_install_conf(str(source)).returncode == 2


def test_network_policy_is_documented_and_off_by_default() -> None:
    text = (MANIFESTS / "kube-flannel.yml").read_text()
    assert "        # - --network-policy\n" in text
    main = next(c for c in by_kind("DaemonSet")["spec"]["template"]["spec"]["containers"]
                if c["name"] == "kube-flannel")
    assert "--network-policy" not in main["args"]
    switched_on = text.replace("        # - --network-policy\n", "        - --network-policy\n")
    docs = [d for d in yaml.safe_load_all(switched_on) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    on = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "kube-flannel")
    assert on["args"][-1] == "--network-policy"
