"""Dual-stack labs (``--ip-family dual``, host-gw in etcd and kube mode) and an IPv6-only
one (``--ip-family ipv6``, kube mode): every cell of every family's ping matrix OK."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import DEFAULT_NETWORK6, is_lab_netns
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root
from tests.e2e.test_ctl import flannelctl
from tests.waiting import wait_pinging, wait_until

ANNOTATION = "flannel.alpha.coreos.com"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]



@pytest.mark.parametrize(("subnet_mgr", "suffix"), [("etcd", "ys"), ("kube", "yk")])
def test_dual_stack_host_gw_lab_reaches_every_pod_in_both_families(
    subnet_mgr: str, suffix: str
) -> None:
    needs_root()
    prefix = RUN_PREFIX + suffix
    try:
        done = flannelctl("lab", "up", "--nodes", "2", "--backend", "host-gw", "--ip-family",
                          "dual", "--subnet-mgr", subnet_mgr, "--prefix", prefix, "--json")
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        matrix = json.loads(done.stdout)["matrix"]
        assert sorted((c["src"], c["dst"], c["family"]) for c in matrix) == [
            ("n1p1", "n2p1", "ipv4"), ("n1p1", "n2p1", "ipv6"),
            ("n2p1", "n1p1", "ipv4"), ("n2p1", "n1p1", "ipv6"),
        ]
        assert all(c["ok"] for c in matrix), matrix

        lab = Lab.attach(prefix)
        for node in lab.plan.nodes:
            env = lab.subnet_env(node.name)
            assert f"FLANNEL_IPV6_NETWORK={DEFAULT_NETWORK6}\n" in env, env
            line = next(x for x in env.splitlines() if x.startswith("FLANNEL_IPV6_SUBNET="))
            subnet6 = ipaddress.IPv6Interface(line.partition("=")[2])
            assert subnet6.network.subnet_of(DEFAULT_NETWORK6)
            assert subnet6.network.prefixlen == 64
        if subnet_mgr == "etcd":  # the lease key is upstream's dual form: <v4>-<len>&<v6>-<len>
            with lab.etcd_gateway() as gateway:
                keys = sorted(gateway.get_prefix(lab.plan.etcd_prefix + "/subnets/"))
            assert len(keys) == 2
            assert all("&fd00:10:244:" in k and k.endswith("-64") for k in keys), keys
        else:  # the v6 annotations upstream writes for host-gw with a public IPv6
            for node in lab.plan.nodes:
                annotations = lab.kube_api.node(node.name)["metadata"]["annotations"]
                assert annotations[f"{ANNOTATION}/public-ipv6"] == str(node.address6.ip)
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]


def test_ipv6_only_host_gw_kube_lab_reaches_every_pod() -> None:
    needs_root()
    prefix = RUN_PREFIX + "y6"
    try:
        done = flannelctl("lab", "up", "--nodes", "2", "--backend", "host-gw", "--ip-family",
                          "ipv6", "--subnet-mgr", "kube", "--prefix", prefix, "--json")
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        doc = json.loads(done.stdout)
        assert sorted((c["src"], c["dst"], c["family"]) for c in doc["matrix"]) == [
            ("n1p1", "n2p1", "ipv6"), ("n2p1", "n1p1", "ipv6"),
        ]
        assert all(c["ok"] for c in doc["matrix"]), doc["matrix"]
        assert [n["public_ip"] for n in doc["nodes"]] == ["fd00:198:18::11", "fd00:198:18::12"]
        lab = Lab.attach(prefix)
        for node in lab.plan.nodes:
            env = lab.subnet_env(node.name)
            assert "FLANNEL_NETWORK=" not in env and "FLANNEL_SUBNET=" not in env, env
            assert f"FLANNEL_IPV6_NETWORK={DEFAULT_NETWORK6}\n" in env, env
        status = lab.status()  # what `flannelctl lab status` shows
        pod_ips = [ipaddress.ip_address(p.ip or "") for n in status.nodes for p in n.pods]
        assert all(ip in DEFAULT_NETWORK6 for ip in pod_ips), pod_ips
        assert [str(n.lease.public_ip) for n in status.nodes if n.lease] == [
            "fd00:198:18::11", "fd00:198:18::12"]
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
