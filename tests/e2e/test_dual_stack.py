"""Dual-stack labs (``--ip-family dual``, host-gw in etcd and kube mode) and an IPv6-only
one (``--ip-family ipv6``, kube mode): every cell of every family's ping matrix OK."""

from __future__ import annotations

import ipaddress
import json

import pytest

from flanneld.lab.lab import Lab, down
from flanneld.lab.layout import DEFAULT_NETWORK6, is_lab_netns
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root
from tests.e2e.test_ctl import flannelctl

ANNOTATION = "flannel.alpha.coreos.com"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]



@pytest.mark.parametrize(("subnet_mgr", "suffix"), [("etcd", "ds"), ("kube", "dk")])
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
    prefix = RUN_PREFIX + "d6"
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
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
