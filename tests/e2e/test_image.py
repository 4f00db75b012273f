"""The image and the manifest's pod spec, built and run for real.

``scripts/build-image.sh`` builds the image offline (a Debian base made with
mmdebstrap, cached in podman's storage between runs); then a two-node lab runs
``manifests/kube-flannel.yml``'s DaemonSet pod on each node with podman: init
containers, flanneld with the manifest's arguments, environment, capabilities
and mounts, the service-account token from the API double.  The lab's pods are
attached with the plugin and conflist the init containers installed.  A renamed
ConfigMap key and a missing volumeMount make the lab fail, as they would make a
cluster fail.  Figures are printed with a ``FIGURE`` tag (``pytest -s``).
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML installed

from flanneld.lab import podrun
from flanneld.lab.lab import DEFAULT_MANIFEST, Lab, down, up
from flanneld.lab.layout import KUBE_API_PORT, node_paths
from flanneld.lab.state import ProcessRecord
from flanneld.lab.topology import run_in_netns
from subnet.errors import FlannelError
from tests.conftest import RUN_PREFIX, needs_root
from tests.labs import assert_nothing_left

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = RUN_PREFIX + "i"
BROKEN = RUN_PREFIX + "j"
TAG = f"localhost/pyflannel:{RUN_PREFIX}"
BUILD_TIMEOUT = 1400.0
TOOLS = ("podman", "runc", "mmdebstrap", "openssl")


def figure(name: str, value: str) -> None:
    print(f"FIGURE {name}: {value}")


def podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(podrun.podman_argv(args), capture_output=True, text=True,
                          timeout=timeout, check=False)


def in_image(entrypoint: str, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    """Run ``entrypoint args`` in a throw-away container of the image (it must exit 0)."""
    limits = [f"--ulimit={kind}={value}:{value}" for kind, value in podrun.ulimits()]
    envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
    done = subprocess.run(
        podrun.podman_argv(["run", "--rm", "-i", "--pull=never", "--network=none", *limits,
                            *envs, f"--entrypoint={json.dumps([entrypoint])}", TAG, *args]),
        input=stdin, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    needs_root()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run bash scripts/install.sh --image")
    root_links = _root_links()
    started = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), TAG],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        pytest.fail(f"build-image.sh failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    figure("image build", f"{time.monotonic() - started:.0f} s; {done.stdout.strip()}")
    try:
        yield TAG
    finally:
        podman("rmi", TAG)  # the tag only: the cached base and layers stay for the next run
    # podman's default bridge network (cni-podman0) must never appear: every container of
    # ours runs with --network=none, --network=host (build) or in a lab node's namespace
    added = _root_links() - root_links
    assert not added, f"devices added to the root network namespace: {sorted(added)}"


def _root_links() -> set[str]:
    """The names of the links in the root network namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def no_leftovers(prefix: str, records: list[ProcessRecord]) -> None:
    assert_nothing_left(prefix, records)
    names = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not [n for n in names if podrun.is_lab_container(prefix, n)]


@pytest.fixture(scope="module")
def lab(image: str) -> Iterator[Lab]:
    made: Lab | None = None
    try:
        made = up(nodes=2, prefix=PREFIX, subnet_mgr="kube", image=image)
        yield made
    finally:
        records = list(made.processes.values()) if made is not None else []
        down(PREFIX)
        no_leftovers(PREFIX, records)


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


# --- the lab of DaemonSet pods ------------------------------------------------------------


def test_matrix_is_full(lab: Lab) -> None:
    cells = lab.matrix(count=3, timeout=15.0)
    assert len(cells) == 2
    assert all(cell.ok for cell in cells), [c.to_json() for c in cells]
    assert {lease.backend_type for lease in lab.leases()} == {"vxlan"}


def test_nodes_hold_what_the_init_containers_installed(lab: Lab) -> None:
    cm = next(d for d in yaml.safe_load_all(Path(DEFAULT_MANIFEST).read_text()) if d
              and d["kind"] == "ConfigMap")
    plugin = in_image("cat", "/opt/bin/flannel-cni").stdout
    for node in lab.plan.nodes:
        host = Path(node_paths(lab.plan, node).host_root)
        conflist = host / "etc/cni/net.d/10-flannel.conflist"
        assert conflist.read_text() == cm["data"]["cni-conf.json"]
        assert conflist.stat().st_mode & 0o777 == 0o644
        installed = host / "opt/cni/bin/flannel"
        assert installed.read_bytes() == plugin
        assert installed.stat().st_mode & 0o777 == 0o755
        assert (host / "run/flannel/subnet.env").read_text().startswith("FLANNEL_NETWORK=")


def test_flanneld_and_the_plugin_in_the_image_report_this_version() -> None:
    needs_root()
    # as upstream's, --version prints to stderr
    assert in_image("/opt/bin/flanneld", "--version").stderr.decode().strip() == (
        version("pyflannel"))
    reply = json.loads(in_image("/opt/bin/flannel-cni", stdin=b'{"cniVersion":"1.0.0"}',
                                env={"CNI_COMMAND": "VERSION"}).stdout)
    host = subprocess.run(
        [sys.executable, "-m", "cni.plugin"], input='{"cniVersion":"1.0.0"}', cwd=ROOT,
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True)
    assert reply == json.loads(host.stdout)
    assert "0.3.1" in reply["supportedVersions"]  # the manifest's conflist version


def api_status(lab: Lab, token: str | None) -> int:
    """HTTP status of GET /api/v1/nodes on the double, verified against its ca.crt."""
    node = lab.plan.nodes[0]
    sa = Path(node_paths(lab.plan, node).pod_dir) / "serviceaccount"
    context = ssl.create_default_context(cafile=str(sa / "ca.crt"))
    request = urllib.request.Request(f"https://{lab.plan.gateway.ip}:{KUBE_API_PORT}"
                                     "/api/v1/nodes")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")

    def get() -> int:
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    return run_in_netns(node.netns, get)


def test_flanneld_authenticates_with_the_mounted_token(lab: Lab) -> None:
    sa = Path(node_paths(lab.plan, lab.plan.nodes[0]).pod_dir) / "serviceaccount"
    assert (sa / "namespace").read_text() == "kube-flannel"
    assert api_status(lab, None) == 401
    assert api_status(lab, "not-the-token") == 401
    assert api_status(lab, (sa / "token").read_text()) == 200


def container_caps(name: str) -> set[str]:
    pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        line = next(x for x in fh if x.startswith("CapEff:"))
    effective = int(line.split()[1], 16)
    bits = {"NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21, "SYS_MODULE": 16}
    return {cap for cap, bit in bits.items() if effective >> bit & 1}


def test_flanneld_runs_unprivileged_with_the_manifests_capabilities(lab: Lab) -> None:
    name = lab.pod_run("n1").containers[-1].podman_name
    assert container_caps(name) == {"NET_ADMIN", "NET_RAW"}
    spec = podman("inspect", "--format", "{{json .Config.Env}}", name).stdout
    assert '"NODE_NAME=' not in spec  # the node name comes from the pod, via POD_NAME
    assert '"POD_NAME=' in spec


def test_restart_of_the_container_until_readyz(lab: Lab) -> None:
    lab.kill_flanneld("n2", signal.SIGTERM)
    started = time.monotonic()
    lab.start_flanneld("n2")
    figure("podman run -> /readyz 200 (n2, restart)", f"{time.monotonic() - started:.1f} s")
    assert all(cell.ok for cell in lab.matrix(count=2, timeout=15.0))


# --- a wrong manifest breaks the lab, as it would break a cluster -------------------------


def write_manifest(tmp_path: Path, change: Callable[[list[dict[str, Any]]], None]) -> str:
    docs = [d for d in yaml.safe_load_all(Path(DEFAULT_MANIFEST).read_text()) if d]
    docs = copy.deepcopy(docs)
    change(docs)
    path = tmp_path / "kube-flannel.yml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def broken_lab(image: str, manifest: str) -> str:
    """Bring up a one-node lab from ``manifest``; the error it fails with."""
    made: Lab | None = None
    try:
        with pytest.raises(FlannelError) as failed:
            made = up(nodes=1, prefix=BROKEN, subnet_mgr="kube", image=image, manifest=manifest)
        return str(failed.value)
    finally:
        down(BROKEN)
        no_leftovers(BROKEN, list(made.processes.values()) if made is not None else [])


def test_a_renamed_configmap_key_fails_the_init_container(image: str, tmp_path: Path) -> None:
    def rename(docs: list[dict[str, Any]]) -> None:
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        cm["data"]["cni-conf.jsn"] = cm["data"].pop("cni-conf.json")

    error = broken_lab(image, write_manifest(tmp_path, rename))
    assert "init container install-cni exited 1" in error
    assert "/etc/kube-flannel/cni-conf.json" in error  # install-conf's message, in the log


def test_a_missing_cni_mount_fails_the_conflist_install(image: str, tmp_path: Path) -> None:
    def unmount(docs: list[dict[str, Any]]) -> None:
        ds = next(d for d in docs if d["kind"] == "DaemonSet")
        init = ds["spec"]["template"]["spec"]["initContainers"]
        install = next(c for c in init if c["name"] == "install-cni")
        install["volumeMounts"] = [m for m in install["volumeMounts"] if m["name"] != "cni"]

    error = broken_lab(image, write_manifest(tmp_path, unmount))
    # the image has no /etc/cni/net.d of its own: only the hostPath mount provides it
    assert "init container install-cni exited 1" in error
    assert "No such file or directory: '/etc/cni/net.d/" in error


def test_a_missing_config_mount_stops_flanneld(image: str, tmp_path: Path) -> None:
    def unmount(docs: list[dict[str, Any]]) -> None:
        ds = next(d for d in docs if d["kind"] == "DaemonSet")
        flanneld = ds["spec"]["template"]["spec"]["containers"][0]
        flanneld["volumeMounts"] = [m for m in flanneld["volumeMounts"]
                                    if m["name"] != "flannel-cfg"]

    error = broken_lab(image, write_manifest(tmp_path, unmount))
    assert "flanneld on n1 is not running" in error
    assert "/etc/kube-flannel/net-conf.json" in error
