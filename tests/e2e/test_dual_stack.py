"""Dual-stack labs (``--ip-family dual``, vxlan and host-gw, etcd and kube mode) and
IPv6-only ones (``--ip-family ipv6``, kube mode: upstream's etcd manager always leases
IPv4): every cell of every family's ping matrix OK, three nodes with two pods each."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from itertools import permutations

import pytest

from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import DEFAULT_NETWORK6, is_lab_netns
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root
from tests.e2e.test_ctl import flannelctl
from tests.waiting import wait_pinging, wait_until

ANNOTATION = "flannel.alpha.coreos.com"
PODS = [f"n{n}p{p}" for n in (1, 2, 3) for p in (1, 2)]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _lab_up(prefix: str, backend: str, family: str, subnet_mgr: str) -> dict[str, object]:
    """``flannelctl lab up --nodes 3 --pods-per-node 2 --json``: its document, every cell OK."""
    done = flannelctl("lab", "up", "--nodes", "3", "--pods-per-node", "2", "--backend", backend,
                      "--ip-family", family, "--subnet-mgr", subnet_mgr, "--prefix", prefix,
                      "--json")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    doc: dict[str, object] = json.loads(done.stdout)
    matrix = doc["matrix"]
    assert isinstance(matrix, list)
    families = ["ipv4", "ipv6"] if family == "dual" else ["ipv6"]
    # every ordered pair of distinct pods (same node or not), in each family
    assert sorted((c["src"], c["dst"], c["family"]) for c in matrix) == sorted(
        (src, dst, f) for src, dst in permutations(PODS, 2) for f in families)
    assert all(c["ok"] for c in matrix), [c for c in matrix if not c["ok"]]
    return doc


def _ip_json(netns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return json.loads(out) if out.strip() else []  # type: ignore[no-any-return]


def _has_link(netns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", netns, "link", "show", "dev", name], capture_output=True,
                          timeout=10, check=False).returncode == 0


def _v6_device(lab: Lab, node: str) -> dict[str, object]:
    return _ip_json(lab.plan.node(node).netns, "-d", "link", "show", "flannel-v6.1")[0]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
@pytest.mark.parametrize(("subnet_mgr", "suffix"), [("etcd", "ys"), ("kube", "yk")])
def test_dual_stack_lab_reaches_every_pod_in_both_families(
    backend: str, subnet_mgr: str, suffix: str
) -> None:
    needs_root()
    prefix = RUN_PREFIX + suffix + backend[0]
    try:
        _lab_up(prefix, backend, "dual", subnet_mgr)
        lab = Lab.attach(prefix)
        for node in lab.plan.nodes:
            env = lab.subnet_env(node.name)
            assert f"FLANNEL_IPV6_NETWORK={DEFAULT_NETWORK6}\n" in env, env
            line = next(x for x in env.splitlines() if x.startswith("FLANNEL_IPV6_SUBNET="))
            subnet6 = ipaddress.IPv6Interface(line.partition("=")[2])
            assert subnet6.network.subnet_of(DEFAULT_NETWORK6)
            assert subnet6.network.prefixlen == 64
            # vxlan: the pods' MTU leaves room for the IPv6 outer header (upstream's does not)
            assert f"FLANNEL_MTU={1430 if backend == 'vxlan' else 1500}\n" in env, env
        if subnet_mgr == "etcd":  # the lease key is upstream's dual form: <v4>-<len>&<v6>-<len>
            with lab.etcd_gateway() as gateway:
                leases = gateway.get_prefix(lab.plan.etcd_prefix + "/subnets/")
            assert len(leases) == 3
            assert all("&fd00:10:244:" in k and k.endswith("-64") for k in leases), leases
            v6_data = [json.loads(v).get("BackendV6Data") for v in leases.values()]
        else:  # the v6 annotations upstream writes for a public IPv6
            v6_data = []
            for node in lab.plan.nodes:
                annotations = lab.kube_api.node(node.name)["metadata"]["annotations"]
                assert annotations[f"{ANNOTATION}/public-ipv6"] == str(node.address6.ip)
                v6_data.append(json.loads(annotations[f"{ANNOTATION}/backend-v6-data"]))
        if backend == "vxlan":  # each node advertises flannel-v6.1's own MAC
            macs = sorted(str(_v6_device(lab, n.name)["address"]) for n in lab.plan.nodes)
            assert sorted(d["VtepMAC"] for d in v6_data) == macs, v6_data
        else:
            assert v6_data == [None] * 3
        if subnet_mgr == "kube":
            _restart_on_a_node_annotated_by_ipv4_runs(lab, "n1")
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]


def _restart_on_a_node_annotated_by_ipv4_runs(lab: Lab, node: str) -> None:
    """IPv4 -> dual stack: flanneld starts on a Node without the v6 annotations, which lists
    its lease under the IPv4 key alone; the first snapshot still holds the lease it acquires
    (no re-acquire, no warning that the lease was lost)."""
    lab.kill_flanneld(node)
    lab.kube_api.annotate_node(node, {f"{ANNOTATION}/public-ipv6": None,
                                      f"{ANNOTATION}/backend-v6-data": None})
    log_start = len(lab.logs(node))
    lab.start_flanneld(node)  # ready: its first pass, after the first snapshot, is done
    log = lab.logs(node)[log_start:]
    assert "made during start-up" in log, log[-3000:]  # the early list was used
    assert "re-acquir" not in log and "deleted or expired" not in log, log[-3000:]
    annotations = lab.kube_api.node(node)["metadata"]["annotations"]
    assert annotations[f"{ANNOTATION}/public-ipv6"] == str(lab.plan.node(node).address6.ip)


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_ipv6_only_kube_lab_reaches_every_pod(backend: str) -> None:
    needs_root()
    prefix = RUN_PREFIX + "y6" + backend[0]
    try:
        doc = _lab_up(prefix, backend, "ipv6", "kube")
        nodes = doc["nodes"]
        assert isinstance(nodes, list)
        assert [n["public_ip"] for n in nodes] == [
            "fd00:198:18::11", "fd00:198:18::12", "fd00:198:18::13"]
        lab = Lab.attach(prefix)
        for node in lab.plan.nodes:
            env = lab.subnet_env(node.name)
            assert "FLANNEL_NETWORK=" not in env and "FLANNEL_SUBNET=" not in env, env
            assert f"FLANNEL_IPV6_NETWORK={DEFAULT_NETWORK6}\n" in env, env
            annotations = lab.kube_api.node(node.name)["metadata"]["annotations"]
            # IPv6-only vxlan writes no v4 pair (upstream's rule); host-gw writes 0.0.0.0
            assert (f"{ANNOTATION}/backend-data" in annotations) == (backend == "host-gw")
        status = lab.status()  # what `flannelctl lab status` shows
        pod_ips = [ipaddress.ip_address(p.ip or "") for n in status.nodes for p in n.pods]
        assert all(ip in DEFAULT_NETWORK6 for ip in pod_ips), pod_ips
        assert [str(n.lease.public_ip) for n in status.nodes if n.lease] == [
            "fd00:198:18::11", "fd00:198:18::12", "fd00:198:18::13"]
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]


def _wait_ipv6(lab: Lab, src: str, dst: str) -> None:
    """Until ``src`` gets IPv6 replies from ``dst``.  A fresh pod's first IPv6 packets wait
    about a second (the bridge's gateway address is still in duplicate address detection):
    tests that count losses start from a working path."""
    wait_until(lambda: lab.ping(src, dst, 1, family=6, timeout=5).received == 1, 30.0,
               f"IPv6 pings from {src} to {dst}")


def _route_dsts(netns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", netns, "-6", "-j", "route", "show"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return {str(r["dst"]) for r in json.loads(out)}


def test_hand_deleted_ipv6_route_is_repaired_and_ipv4_keeps_working() -> None:
    needs_root()
    prefix = RUN_PREFIX + "yh"
    try:
        lab = up(nodes=2, backend="host-gw", pods_per_node=1, prefix=prefix, ip_family="dual")
        line = next(x for x in lab.subnet_env("n2").splitlines()
                    if x.startswith("FLANNEL_IPV6_SUBNET="))
        peer6 = str(ipaddress.IPv6Interface(line.partition("=")[2]).network)
        n1 = lab.plan.node("n1").netns
        _wait_ipv6(lab, "n1p1", "n2p1")
        assert peer6 in _route_dsts(n1)
        subprocess.run(["ip", "-n", n1, "-6", "route", "del", peer6], timeout=10, check=True)
        assert lab.ping("n1p1", "n2p1", 3, family=4).received == 3  # IPv4 untouched
        wait_until(lambda: peer6 in _route_dsts(n1), 60.0, f"the route to {peer6} on n1 again")
        assert lab.ping("n1p1", "n2p1", 3, family=6).received == 3
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]


def test_restart_in_dual_stack_loses_no_packet_of_either_family_and_keeps_both_subnets() -> None:
    needs_root()
    prefix = RUN_PREFIX + "yr"
    try:
        lab = up(nodes=2, backend="host-gw", pods_per_node=1, prefix=prefix, ip_family="dual")
        _wait_ipv6(lab, "n2p1", "n1p1")
        before = lab.subnet_env("n1")
        count = 300
        with ThreadPoolExecutor(max_workers=2) as pool:
            # 100 packets a second of each family into n1's pod, across n1's restart
            pings = [pool.submit(lab.ping, "n2p1", "n1p1", count, 0.01, 30.0, family)
                     for family in (4, 6)]
            wait_pinging(lab, "n2p1")
            lab.kill_flanneld("n1", signal.SIGKILL)
            lab.start_flanneld("n1")
            stats = [p.result(timeout=40) for p in pings]
        assert [(s.sent, s.lost) for s in stats] == [(count, 0), (count, 0)], stats
        assert lab.subnet_env("n1") == before  # the same /24 and /64 again (etcd reuse)
        cells = lab.matrix(count=3, timeout=10.0)
        assert {c.family for c in cells} == {4, 6} and all(c.ok for c in cells), cells
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]


def test_deleted_flannel_v6_device_and_entries_are_repaired_and_ipv4_keeps_working() -> None:
    """The daemon's kernel watch: flannel-v6.1 deleted by hand comes back with its MAC and
    every peer entry; a hand-deleted IPv6 neighbour too; IPv4 pings never stop."""
    needs_root()
    prefix = RUN_PREFIX + "yv"
    try:
        lab = up(nodes=2, backend="vxlan", pods_per_node=1, prefix=prefix, ip_family="dual")
        n1 = lab.plan.node("n1").netns
        _wait_ipv6(lab, "n1p1", "n2p1")
        mac = _v6_device(lab, "n1")["address"]

        def neighbours() -> list[dict[str, object]]:
            return _ip_json(n1, "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent")

        (entry,) = neighbours()
        subprocess.run(["ip", "-n", n1, "-6", "neigh", "del", str(entry["dst"]), "dev",
                        "flannel-v6.1"], timeout=10, check=True)
        wait_until(lambda: len(neighbours()) == 1, 60.0, "n1's IPv6 neighbour entry again")
        subprocess.run(["ip", "-n", n1, "link", "del", "flannel-v6.1"], timeout=10, check=True)
        assert lab.ping("n1p1", "n2p1", 3, family=4).received == 3  # IPv4 untouched
        wait_until(lambda: _has_link(n1, "flannel-v6.1"), 60.0,
                   "flannel-v6.1 to be recreated on n1")
        assert _v6_device(lab, "n1")["address"] == mac
        _wait_ipv6(lab, "n1p1", "n2p1")
        assert lab.ping("n1p1", "n2p1", 3, family=6).received == 3

        # etcd mode: both VTEP MACs survive a restart that finds no device (a reboot)
        mac4 = _ip_json(n1, "link", "show", "dev", "flannel.1")[0]["address"]
        lab.kill_flanneld("n1", signal.SIGKILL)
        for dev in ("flannel.1", "flannel-v6.1"):
            subprocess.run(["ip", "-n", n1, "link", "del", dev], timeout=10, check=True)
        lab.start_flanneld("n1")
        wait_until(lambda: _has_link(n1, "flannel-v6.1"), 60.0,
                   "flanneld to create flannel-v6.1 again on n1")
        assert _v6_device(lab, "n1")["address"] == mac
        assert _ip_json(n1, "link", "show", "dev", "flannel.1")[0]["address"] == mac4
        _wait_ipv6(lab, "n2p1", "n1p1")
        assert lab.ping("n2p1", "n1p1", 3, family=4).received == 3
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
