"""The lab's kube mode as pure data: pod CIDRs, kubeconfig, flanneld's flags, state, leases."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flanneld.lab.kubeapi import double_argv
from flanneld.lab.layout import flanneld_argv, flanneld_env, kubeconfig, make_plan, pod_cidr
from flanneld.lab.leases import node_lease_from_annotations
from flanneld.lab.state import LabState
from subnet.errors import ConfigError, PeerDataError

P = "flannel.alpha.coreos.com/"


def test_kube_plan_gives_each_node_its_own_pod_cidr_inside_the_network() -> None:
    plan = make_plan("lk", nodes=3, subnet_mgr="kube")
    cidrs = [pod_cidr(plan, node) for node in plan.nodes]
    assert [str(c) for c in cidrs] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert all(c.subnet_of(plan.network) for c in cidrs)
    assert plan.kube and plan.kube_api_url == "http://198.18.0.1:16443"


def test_unknown_subnet_manager_is_refused() -> None:
    with pytest.raises(ConfigError, match="subnet manager must be one of etcd, kube"):
        make_plan("lk", subnet_mgr="zookeeper")


def test_flanneld_flags_and_env_per_mode() -> None:
    kube = make_plan("lk", nodes=2, subnet_mgr="kube")
    argv = flanneld_argv(["flanneld"], kube, kube.nodes[1])
    assert argv[1:4] == [
        "--kube-subnet-mgr",
        "--kubeconfig-file=/run/pyflannel-lab/lk/n2/kubeconfig",
        "--net-config-path=/run/pyflannel-lab/lk/n2/net-conf.json",
    ]
    assert not any(a.startswith("-etcd") for a in argv)
    assert flanneld_env(kube, kube.nodes[1]) == {"NODE_NAME": "n2"}
    etcd = make_plan("lk", nodes=2)
    assert not any("kube" in a for a in flanneld_argv(["flanneld"], etcd, etcd.nodes[0]))
    assert flanneld_env(etcd, etcd.nodes[0]) == {}


def test_kubeconfig_points_at_the_double_without_credentials() -> None:
    doc: dict[str, Any] = kubeconfig(make_plan("lk", subnet_mgr="kube"))
    assert [c["cluster"] for c in doc["clusters"]] == [{"server": "http://198.18.0.1:16443"}]
    assert doc["current-context"] == "lk"
    assert [u["user"] for u in doc["users"]] == [{}]


def test_double_command_line_carries_the_state_dir_marker() -> None:
    plan = make_plan("lk", subnet_mgr="kube")
    argv = double_argv("/usr/bin/python3", plan)
    assert argv[:3] == ["/usr/bin/python3", "-m", "flanneld.lab.apiserver.serve"]
    assert "--control=/run/pyflannel-lab/lk/kubeapi.sock" in argv
    assert "--host=198.18.0.1" in argv


def test_state_round_trip_keeps_the_mode_and_old_files_mean_etcd() -> None:
    state = LabState("lk", 2, 1, "vxlan", subnet_mgr="kube")
    again = LabState.from_json(state.to_json())
    assert again == state and again.plan().kube
    legacy = state.to_json()
    del legacy["subnet_mgr"]
    assert LabState.from_json(legacy).plan().subnet_mgr == "etcd"


def test_lease_from_annotations() -> None:
    subnet = ipaddress.IPv4Network("10.244.1.0/24")
    found = node_lease_from_annotations("n1", subnet, {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": '{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}',
        P + "public-ip": "198.18.0.11",
    })
    assert (found.public_ip, found.backend_type, found.vtep_mac) == (
        ipaddress.IPv4Address("198.18.0.11"), "vxlan", "0e:00:00:00:00:01"
    )
    garbage = node_lease_from_annotations("n1", subnet, {
        P + "kube-subnet-manager": "true", P + "backend-data": "{no", P + "public-ip": "1.2.3.4",
    })
    assert garbage.vtep_mac is None
    with pytest.raises(PeerDataError, match="no flannel annotations"):
        node_lease_from_annotations("n1", subnet, {P + "public-ip": "1.2.3.4"})
    with pytest.raises(PeerDataError, match="bad public-ip"):
        node_lease_from_annotations("n1", subnet, {
            P + "kube-subnet-manager": "true", P + "public-ip": "x",
        })
