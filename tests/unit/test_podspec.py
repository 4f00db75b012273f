"""flanneld.lab.podspec: the shipped DaemonSet's pod spec as podman command lines, and what
breaks when the manifest is wrong.  pods.py's pure helpers for the node's CNI config."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML installed

from flanneld.lab import podspec
from flanneld.lab.pods import chain_plugins, host_view_argv, pick_config
from flanneld.lab.podspec import ContainerRun, Manifest, PodContext, load_manifest, pod_run
from subnet.errors import ConfigError

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "kube-flannel.yml"
CTX = PodContext(
    node_name="n1",
    node_ip="198.18.0.11",
    netns_path="/var/run/netns/lab-n1",
    host_root="/s/n1/host",
    pod_dir="/s/n1/pod",
    api_host="198.18.0.1",
    api_port=16443,
    container_prefix="lab-n1",
    image="localhost/pyflannel:dev",
    ulimits=(("nofile", 20000), ("nproc", 32768)),
)


def shipped() -> Manifest:
    return load_manifest(MANIFEST.read_text(encoding="utf-8"))


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]


def edited(change: Any) -> Manifest:
    """The shipped manifest after ``change(docs)`` mutated its objects."""
    objects = copy.deepcopy(docs())
    change(objects)
    return load_manifest(yaml.safe_dump_all(objects))


def daemonset_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [d for d in objects if d["kind"] == "DaemonSet"]
    pod: dict[str, Any] = ds["spec"]["template"]["spec"]
    return pod


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec = daemonset_pod(objects)
    (found,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == name]
    return found


def by_name(runs: tuple[ContainerRun, ...]) -> dict[str, ContainerRun]:
    return {run.name: run for run in runs}


def volumes(run: ContainerRun) -> list[str]:
    argv = list(run.argv)
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--volume"]


def env(run: ContainerRun) -> dict[str, str]:
    pairs = [w.removeprefix("--env=") for w in run.argv if w.startswith("--env=")]
    return dict(p.split("=", 1) for p in pairs)


def after_image(run: ContainerRun) -> list[str]:
    argv = list(run.argv)
    return argv[argv.index(CTX.image or "") + 1:]


# --- the shipped manifest --------------------------------------------------------------


def test_init_containers_run_first_in_manifest_order_then_flanneld() -> None:
    run = pod_run(shipped(), CTX)
    assert [(c.name, c.init) for c in run.containers] == [
        ("install-cni-plugin", True), ("install-cni", True), ("kube-flannel", False)]
    assert [c.podman_name for c in run.containers] == [
        "lab-n1-install-cni-plugin", "lab-n1-install-cni", "lab-n1-kube-flannel"]


def test_every_container_runs_in_the_nodes_network_namespace_from_the_given_image() -> None:
    for c in pod_run(shipped(), CTX).containers:
        assert c.argv[0] == "run"
        assert "--network=ns:/var/run/netns/lab-n1" in c.argv
        assert "--pull=never" in c.argv
        assert "--ulimit=nofile=20000:20000" in c.argv
        assert CTX.image in c.argv


def test_command_becomes_the_entrypoint_and_args_follow_the_image() -> None:
    runs = by_name(pod_run(shipped(), CTX).containers)
    flanneld = runs["kube-flannel"]
    assert '--entrypoint=["/opt/bin/flanneld"]' in flanneld.argv
    assert after_image(flanneld) == ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
    assert after_image(runs["install-cni-plugin"]) == [
        "--executable", "/opt/bin/flannel-cni", "/opt/cni/bin/flannel"]
    assert after_image(runs["install-cni"]) == [
        "/etc/kube-flannel/cni-conf.json", "/etc/cni/net.d/10-flannel.conflist"]


def test_downward_api_env_plain_env_and_the_kubelets_service_variables() -> None:
    flanneld = by_name(pod_run(shipped(), CTX).containers)["kube-flannel"]
    assert env(flanneld) == {
        "KUBERNETES_SERVICE_HOST": "198.18.0.1",
        "KUBERNETES_SERVICE_PORT": "16443",
        "POD_NAME": "lab-n1-pod",
        "POD_NAMESPACE": "kube-flannel",
        "EVENT_QUEUE_DEPTH": "5000",
        "CONT_WHEN_CACHE_NOT_READY": "false",
    }


def test_capabilities_are_the_runtime_defaults_plus_the_manifests() -> None:
    flanneld = by_name(pod_run(shipped(), CTX).containers)["kube-flannel"]
    caps = [w.removeprefix("--cap-add=") for w in flanneld.argv if w.startswith("--cap-add=")]
    assert "--cap-drop=all" in flanneld.argv
    assert "NET_ADMIN" in caps and "NET_RAW" in caps
    assert "SYS_ADMIN" not in caps
    assert "--privileged" not in flanneld.argv


def test_volume_mounts_map_to_the_nodes_host_paths_and_the_token() -> None:
    runs = by_name(pod_run(shipped(), CTX).containers)
    token = "/s/n1/pod/serviceaccount:/var/run/secrets/kubernetes.io/serviceaccount:ro"
    assert volumes(runs["kube-flannel"]) == [
        "/s/n1/host/run/flannel:/run/flannel:rw",
        "/s/n1/pod/volumes/flannel-cfg:/etc/kube-flannel/:ro",
        "/s/n1/host/run/xtables.lock:/run/xtables.lock:rw",
        token,
    ]
    assert volumes(runs["install-cni-plugin"]) == ["/s/n1/host/opt/cni/bin:/opt/cni/bin:rw", token]
    assert volumes(runs["install-cni"])[:2] == [
        "/s/n1/host/etc/cni/net.d:/etc/cni/net.d:rw",
        "/s/n1/pod/volumes/flannel-cfg:/etc/kube-flannel/:ro",
    ]


def test_configmap_files_host_paths_and_probe() -> None:
    run = pod_run(shipped(), CTX)
    files = {f.path: f for f in run.files}
    cfg = files["/s/n1/pod/volumes/flannel-cfg/net-conf.json"]
    assert json.loads(cfg.text)["Backend"]["Type"] == "vxlan"
    assert cfg.mode == 0o644
    assert "/s/n1/pod/volumes/flannel-cfg/cni-conf.json" in files
    lock = [h for h in run.host_paths if h.path == "/s/n1/host/run/xtables.lock"]
    assert lock == [podspec.HostPath("/s/n1/host/run/xtables.lock", False, True)]
    assert run.readiness == podspec.HttpProbe("/readyz", 8081)
    assert run.token_dir == "/s/n1/pod/serviceaccount"
    assert (run.namespace, run.service_account) == ("kube-flannel", "flannel")


def test_fields_the_lab_does_not_honour_are_listed() -> None:
    assert pod_run(shipped(), CTX).ignored == (
        "spec.affinity", "spec.priorityClassName", "spec.tolerations",
        "spec.containers[kube-flannel].livenessProbe",
        "spec.containers[kube-flannel].resources",
    )


def test_backend_of_the_configmap() -> None:
    assert podspec.net_conf_backend(shipped()) == "vxlan"


# --- a wrong manifest breaks the pod, as on a cluster -------------------------------


def test_a_missing_run_mount_leaves_subnet_env_inside_the_container() -> None:
    def drop_run(objects: list[dict[str, Any]]) -> None:
        flanneld = container(objects, "kube-flannel")
        flanneld["volumeMounts"] = [m for m in flanneld["volumeMounts"] if m["name"] != "run"]

    flanneld = by_name(pod_run(edited(drop_run), CTX).containers)["kube-flannel"]
    assert not [v for v in volumes(flanneld) if ":/run/flannel:" in v]


def test_a_volume_mount_of_no_volume_is_refused() -> None:
    def rename(objects: list[dict[str, Any]]) -> None:
        container(objects, "kube-flannel")["volumeMounts"][0]["name"] = "runn"

    with pytest.raises(ConfigError, match='volumeMount "runn" refers to no volume'):
        pod_run(edited(rename), CTX)


def test_an_item_of_a_missing_configmap_key_is_refused() -> None:
    def items(objects: list[dict[str, Any]]) -> None:
        for volume in daemonset_pod(objects)["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["items"] = [{"key": "net-conf.jsn", "path": "net-conf.json"}]

    with pytest.raises(ConfigError, match='has no key "net-conf.jsn"'):
        pod_run(edited(items), CTX)


def test_a_renamed_configmap_key_is_a_missing_file_for_the_init_container() -> None:
    def rename(objects: list[dict[str, Any]]) -> None:
        (cm,) = [d for d in objects if d["kind"] == "ConfigMap"]
        cm["data"]["cni-conf.jsn"] = cm["data"].pop("cni-conf.json")

    run = pod_run(edited(rename), CTX)
    paths = {f.path.rsplit("/", 1)[1] for f in run.files}
    assert paths == {"cni-conf.jsn", "net-conf.json"}  # install-cni reads cni-conf.json


def test_a_missing_configmap_is_refused() -> None:
    def drop(objects: list[dict[str, Any]]) -> None:
        objects[:] = [d for d in objects if d["kind"] != "ConfigMap"]

    with pytest.raises(ConfigError, match='configmap "kube-flannel-cfg" not found'):
        pod_run(edited(drop), CTX)


def test_a_pod_without_host_network_is_refused() -> None:
    def drop(objects: list[dict[str, Any]]) -> None:
        del daemonset_pod(objects)["hostNetwork"]

    with pytest.raises(ConfigError, match="hostNetwork"):
        pod_run(edited(drop), CTX)


def test_an_unknown_env_source_is_refused() -> None:
    def secret(objects: list[dict[str, Any]]) -> None:
        container(objects, "kube-flannel")["env"].append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})

    with pytest.raises(ConfigError, match="env X"):
        pod_run(edited(secret), CTX)


def test_a_manifest_without_a_daemonset_is_refused() -> None:
    with pytest.raises(ConfigError, match="0 DaemonSets"):
        load_manifest("kind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(ConfigError, match="not YAML"):
        load_manifest("a: [")


# --- the small rules -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expanded"), [
    ("--iface=$(NODE_IP)", "--iface=198.18.0.11"),
    ("$$(NODE_IP)", "$(NODE_IP)"),
    ("$(UNSET)", "$(UNSET)"),
    ("plain", "plain"),
])
def test_dependent_variable_expansion(text: str, expanded: str) -> None:
    assert podspec.expand(text, {"NODE_IP": "198.18.0.11"}) == expanded


def test_capabilities_add_drop_and_drop_all() -> None:
    assert podspec.capabilities({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}) == (
        "NET_ADMIN",)
    caps = podspec.capabilities({"capabilities": {"drop": ["CAP_KILL"]}})
    assert "KILL" not in caps and "CHOWN" in caps


def test_privileged_container() -> None:
    def privileged(objects: list[dict[str, Any]]) -> None:
        container(objects, "kube-flannel")["securityContext"] = {"privileged": True}

    flanneld = by_name(pod_run(edited(privileged), CTX).containers)["kube-flannel"]
    assert "--privileged" in flanneld.argv
    assert not [w for w in flanneld.argv if w.startswith("--cap-")]


def test_the_runtime_takes_the_first_config_file_by_name() -> None:
    assert pick_config(["20-b.conflist", "10-flannel.conflist", ".10-x.conflist.tmp"]) == (
        "10-flannel.conflist")
    assert pick_config(["README", "x.tmp"]) is None


def test_each_plugin_of_a_conflist_gets_the_lists_name_and_version() -> None:
    doc = json.loads(shipped().configmap_text("kube-flannel-cfg", "cni-conf.json"))
    plugins = chain_plugins("10-flannel.conflist", doc)
    assert [p["type"] for p in plugins] == ["flannel", "portmap"]
    assert {(p["name"], p["cniVersion"]) for p in plugins} == {("cbr0", "0.3.1")}
    assert chain_plugins("10-x.conf", {"type": "bridge"}) == [{"type": "bridge"}]


def test_plugins_see_the_nodes_directories() -> None:
    argv = host_view_argv("/s/n1/host", ["nsenter", "--net=/var/run/netns/x", "/opt/cni/bin/f"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-5:] == ["sh", "/s/n1/host", "nsenter", "--net=/var/run/netns/x",
                         "/opt/cni/bin/f"]
