"""The lab in kube mode: three node namespaces, one Kubernetes API double in the
underlay namespace, a flanneld per node with ``--kube-subnet-mgr``, pods pinging
across the vxlan overlay.  The API double is steered through the lab's control
socket (Nodes, garbage annotations, compaction, an API server restart).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from flanneld.lab.lab import Lab, down
from flanneld.lab.layout import HEALTHZ_PORT, is_lab_netns, node_paths, pod_cidr
from flanneld.lab.topology import link_address, list_netns, run_in_netns
from subnet.errors import FlannelError
from tests.conftest import RUN_PREFIX, needs_root
from tests.labs import module_lab
from tests.waiting import assert_backs_off, klog_gaps, wait_pinging, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PREFIX = RUN_PREFIX + "q"
P = "flannel.alpha.coreos.com/"
NODES = ("n1", "n2", "n3")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with module_lab(PREFIX, nodes=3, backend="vxlan", pods_per_node=1, subnet_mgr="kube") as made:
        yield made


# --- helpers -----------------------------------------------------------------------------


def overlay_routes(lab: Lab, node: str) -> dict[str, str]:
    """``node``'s routes over flannel.1: destination -> gateway."""
    netns = lab.plan.node(node).netns
    out = subprocess.run(
        ["ip", "-j", "-n", netns, "route", "show", "dev", "flannel.1"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout
    return {r["dst"]: r.get("gateway", "") for r in json.loads(out or "[]")}


def routed_everywhere(lab: Lab, cidr: str, present: bool = True) -> Callable[[], bool]:
    return lambda: all((cidr in overlay_routes(lab, n)) == present for n in NODES)


def node_annotations(lab: Lab, node: str) -> dict[str, str]:
    found: dict[str, str] = lab.kube_api.node(node)["metadata"].get("annotations") or {}
    return found


def peer_annotations(ip: str, backend_data: str) -> dict[str, str]:
    return {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": backend_data,
        P + "public-ip": ip,
    }


def readyz(lab: Lab, node: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{HEALTHZ_PORT}/readyz"

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    return run_in_netns(lab.plan.node(node).netns, fetch)


def assert_full_matrix(lab: Lab) -> None:
    cells = lab.matrix(count=3, timeout=10.0)
    assert len(cells) == 6
    failed = [c for c in cells if not c.ok]
    assert not failed, failed


# --- tests -------------------------------------------------------------------------------


def test_pods_reach_each_other_over_pod_cidr_leases(lab: Lab) -> None:
    leases = lab.leases()
    for node, lease in zip(lab.plan.nodes, leases, strict=True):
        assert lease.subnet == pod_cidr(lab.plan, node) == ipaddress.IPv4Network(
            f"10.244.{node.index}.0/24"
        )
        assert lease.public_ip == node.public_ip
        (pod,) = node.pods
        (endpoint,) = [e for e in lab.endpoints() if e.name == pod.name]
        assert endpoint.ip in lease.subnet
    status = lab.status()
    assert status.subnet_mgr == "kube" and status.kubeapi_running and not status.etcd_running
    assert Lab.attach(PREFIX).plan.kube
    assert_full_matrix(lab)


def test_node_annotations_and_condition_are_upstreams(lab: Lab) -> None:
    for node in lab.plan.nodes:
        mac = link_address(node.netns, "flannel.1")
        assert mac is not None
        assert node_annotations(lab, node.name) == {
            P + "kube-subnet-manager": "true",
            P + "backend-type": "vxlan",
            P + "backend-data": '{"VNI":1,"VtepMAC":"' + mac + '"}',
            P + "public-ip": str(node.public_ip),
        }
        conditions = lab.kube_api.node(node.name)["status"]["conditions"]
        (cond,) = [c for c in conditions if c["type"] == "NetworkUnavailable"]
        assert (cond["status"], cond["reason"]) == ("False", "FlannelIsUp")
        assert cond["message"] == "Flannel is running on this node"
        # The kubelet's own condition is left alone.
        assert [c["type"] for c in conditions].count("Ready") == 1


def test_reboot_keeps_the_vtep_mac_from_the_annotation(lab: Lab) -> None:
    netns = lab.plan.node("n1").netns
    before = json.loads(node_annotations(lab, "n1")[P + "backend-data"])["VtepMAC"]
    lab.kill_flanneld("n1", signal.SIGKILL)
    subprocess.run(["ip", "-n", netns, "link", "del", "flannel.1"], check=True, timeout=10)
    assert link_address(netns, "flannel.1") is None
    lab.start_flanneld("n1")
    after = json.loads(node_annotations(lab, "n1")[P + "backend-data"])["VtepMAC"]
    assert after == before
    assert link_address(netns, "flannel.1") == before
    assert_full_matrix(lab)


def test_node_without_pod_cidr_explains_the_fix_and_retries_slowly(lab: Lab) -> None:
    seen = len(lab.logs("n3"))
    lab.kill_flanneld("n3", signal.SIGTERM)
    lab.kube_api.set_pod_cidr("n3", None)
    try:
        pid = lab.start_flanneld("n3", wait=False)

        def attempts() -> list[str]:
            lines = lab.logs("n3")[seen:].splitlines()
            return [line for line in lines if "pod cidr not assigned" in line]

        wait_until(lambda: len(attempts()) >= 3, 60.0, "3 'pod cidr not assigned' attempts")
        errors = attempts()[:3]
        assert 'node "n3" pod cidr not assigned' in errors[0]
        assert "--allocate-node-cidrs=true" in errors[0]
        assert "--pod-network-cidr" in errors[0]
        # Backing off (1 s, 2 s, 4 s ...) by the daemon's own clock, still running.
        assert_backs_off(klog_gaps(errors))
        lines = lab.logs("n3")[seen:].splitlines()
        assert lines.index(errors[-1]) < 30, lines  # a few lines per attempt, no spam
        assert lab.flanneld_pid("n3") == pid
    finally:
        if lab.flanneld_pid("n3") is not None:
            lab.kill_flanneld("n3", signal.SIGTERM)
        lab.kube_api.set_pod_cidr("n3", str(pod_cidr(lab.plan, lab.plan.node("n3"))))
    lab.start_flanneld("n3")
    assert_full_matrix(lab)


def test_garbage_annotation_is_skipped_and_valid_peers_stay_reachable(lab: Lab) -> None:
    seen = {n: len(lab.logs(n)) for n in NODES}
    cidr = "10.244.60.0/24"
    lab.kube_api.add_node("junk", pod_cidr=cidr,
                          annotations=peer_annotations("198.18.0.60", "not json{"))
    try:
        wait_until(
            lambda: all("'junk'" in lab.logs(n)[seen[n]:] for n in NODES),
            10.0,
            "every node to skip junk",
        )
        for node in NODES:
            skipped = [ln for ln in lab.logs(node)[seen[node]:].splitlines() if "'junk'" in ln]
            assert "Skipping node" in skipped[0] and "backend-data" in skipped[0], skipped
            assert cidr not in overlay_routes(lab, node)
            assert lab.flanneld_pid(node) is not None
        assert_full_matrix(lab)
        # Repaired, the same Node becomes a peer: the skip was per content, not forever.
        lab.kube_api.annotate_node(
            "junk", {P + "backend-data": '{"VNI":1,"VtepMAC":"0e:00:00:00:00:60"}'}
        )
        wait_until(routed_everywhere(lab, cidr), 5.0, "junk's route")
        assert overlay_routes(lab, "n1")[cidr] == "10.244.60.0"
    finally:
        lab.kube_api.delete_node("junk")
    wait_until(routed_everywhere(lab, cidr, present=False), 5.0, "junk's route to go")


def test_api_restart_loses_no_route_and_new_nodes_arrive_fast(lab: Lab) -> None:
    before = {n: overlay_routes(lab, n) for n in NODES}
    assert all(len(routes) == 2 for routes in before.values()), before
    count = 130  # 10 per second across the 10 s outage
    with ThreadPoolExecutor(max_workers=1) as pool:
        pinging = pool.submit(lab.ping, "n1p1", "n2p1", count, 0.1, 40.0)
        wait_pinging(lab, "n1p1")
        lab.kube_api.stop()
        try:
            time.sleep(10.0)  # the scenario: a 10 s API outage under traffic
            during = {n: overlay_routes(lab, n) for n in NODES}
            alive = [lab.flanneld_pid(n) is not None for n in NODES]
        finally:
            lab.kube_api.start()
        stats = pinging.result(timeout=60)
    assert during == before
    assert all(alive)
    assert stats.sent == count and stats.lost == 0, stats
    assert lab.kube_api.wait_for_watches(3, 20.0), "not every flanneld watches again"
    cidr = "10.244.70.0/24"
    lab.kube_api.add_node(
        "late", pod_cidr=cidr,
        annotations=peer_annotations("198.18.0.70", '{"VNI":1,"VtepMAC":"0e:00:00:00:00:70"}'),
    )
    try:
        elapsed = wait_until(routed_everywhere(lab, cidr), 5.0, "late's route")
        print(f"node added after the API restart programmed everywhere in {elapsed:.2f}s")
    finally:
        lab.kube_api.delete_node("late")
    wait_until(routed_everywhere(lab, cidr, present=False), 5.0, "late's route to go")
    assert {n: overlay_routes(lab, n) for n in NODES} == before


def test_expired_watch_relists_without_missed_or_stale_peers(lab: Lab) -> None:
    old, new = "10.244.80.0/24", "10.244.81.0/24"
    api = lab.kube_api

    def data(mac_tail: str) -> str:
        return '{"VNI":1,"VtepMAC":"0e:00:00:00:00:' + mac_tail + '"}'

    api.add_node("old", pod_cidr=old, annotations=peer_annotations("198.18.0.80", data("80")))
    try:
        wait_until(routed_everywhere(lab, old), 5.0, "old's route")
        seen = {n: len(lab.logs(n)) for n in NODES}
        api.pause_watches()  # nothing reaches the watchers from here on
        try:
            api.delete_node("old")
            api.add_node("new", pod_cidr=new,
                         annotations=peer_annotations("198.18.0.81", data("81")))
            api.drop_watches(clean=True)  # they come back from their last resourceVersion ...
            api.compact()  # ... which is gone now: 410
        finally:
            api.resume_watches()
        wait_until(
            lambda: routed_everywhere(lab, new)() and routed_everywhere(lab, old, False)(),
            15.0,
            "new routed and old gone",
        )
        for node in NODES:
            text = lab.logs(node)[seen[node]:]
            assert "Node watch expired" in text and "410" in text, text[-2000:]
            assert "Listed" in text
    finally:
        for name in ("old", "new"):
            with contextlib.suppress(FlannelError):  # already gone is fine
                api.delete_node(name)
    wait_until(routed_everywhere(lab, new, present=False), 5.0, "fake peers gone")
    assert_full_matrix(lab)


def test_daemon_notices_net_conf_edits(lab: Lab) -> None:
    path = node_paths(lab.plan, lab.plan.node("n2")).net_conf
    with open(path, encoding="utf-8") as fh:
        original = fh.read()
    pid = lab.flanneld_pid("n2")
    seen = len(lab.logs("n2"))

    def write(text: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    def ready_body_has(text: str) -> Callable[[], bool]:
        return lambda: text in readyz(lab, "n2")[1]

    try:
        write('{"Network": "10.244.0.0/16", "Backend": {"Type": "bogus"}}')
        wait_until(ready_body_has("edit rejected"), 15.0, "the rejection on /readyz")
        code, body = readyz(lab, "n2")
        assert "unknown backend type: bogus" in body and "running config is kept" in body
        assert code == 200  # still serving with the running config
        assert "net-conf.json edit rejected: unknown backend type: bogus" in lab.logs("n2")[seen:]
        assert lab.flanneld_pid("n2") == pid
        write('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}}')
        wait_until(ready_body_has("restart flanneld"), 15.0, "restart advice on /readyz")
        assert "edit rejected" not in readyz(lab, "n2")[1]
        assert lab.flanneld_pid("n2") == pid
    finally:
        write(original)
    wait_until(
        lambda: "net-conf.json" not in readyz(lab, "n2")[1],
        15.0,
        "the net-conf detail to clear",
    )
    assert lab.flanneld_pid("n2") == pid
    assert_full_matrix(lab)


def test_flannelctl_lab_up_in_kube_mode() -> None:
    needs_root()
    prefix = RUN_PREFIX + "v"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flanneld.ctl", "lab", "up", "--subnet-mgr", "kube",
             "--nodes", "2", "--prefix", prefix, "--json", "--down-after"],
            capture_output=True, text=True, timeout=180, check=False,
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert [(n["name"], n["subnet"]) for n in doc["nodes"]] == [
            ("n1", "10.244.1.0/24"), ("n2", "10.244.2.0/24")
        ]
        assert len(doc["matrix"]) == 2 and all(c["ok"] for c in doc["matrix"]), doc["matrix"]
        assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
    finally:
        down(prefix)


def test_lab_kubeconfig_reaches_the_api_double_from_the_root_namespace(
        lab: Lab, tmp_path: pathlib.Path) -> None:
    """``flannelctl lab kubeconfig``: the official client lists the lab's Nodes through it."""
    from kubernetes import client, config

    done = subprocess.run(
        [sys.executable, "-m", "flanneld.ctl", "lab", "kubeconfig", "--prefix", PREFIX],
        capture_output=True, text=True, timeout=60, check=True)
    path = tmp_path / "kubeconfig"
    path.write_text(done.stdout)
    server = json.loads(done.stdout)["clusters"][0]["cluster"]["server"]
    assert server.startswith("http://127.0.0.1:")
    api_client = config.new_client_from_config(str(path))
    try:
        names = [n.metadata.name for n in client.CoreV1Api(api_client).list_node().items]
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    assert names == list(NODES)
