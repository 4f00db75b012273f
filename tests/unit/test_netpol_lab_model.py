"""The e2e NetworkPolicy model laid over the lab's pods (pure parts)."""

from __future__ import annotations

import pytest

from flanneld.lab.layout import flanneld_argv, make_plan
from flanneld.lab.netpolmodel import lab_pods, namespace_object, pod_object, pods_per_node
from flanneld.lab.netprobe import ProbeResult, render
from subnet.errors import ConfigError


def test_model_pods_alternate_over_the_nodes() -> None:
    plan = make_plan("t", 2, pods_per_node(2), subnet_mgr="kube", netpol_model=True)
    pods = lab_pods(plan, model=True)
    assert [p.key for p in pods] == [
        "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c", "default/n2p5"]
    assert [p.node for p in pods[:4]] == ["n1", "n2", "n1", "n2"]
    assert {p.node for p in pods if p.namespace == "x"} == {"n1", "n2"}
    assert [p.lab_pod for p in pods[:3]] == ["n1p1", "n2p1", "n1p2"]
    assert [p.key for p in lab_pods(plan, model=False)][:2] == ["default/n1p1", "default/n2p1"]


def test_pod_object_declares_named_ports_and_is_running() -> None:
    plan = make_plan("t", 3, 3, subnet_mgr="kube", netpol_model=True)
    xa = lab_pods(plan, model=True)[0]
    pod = pod_object(xa, "10.244.1.2", "198.18.0.11", ("TCP", "UDP"))
    assert pod["metadata"] == {"name": "a", "namespace": "x", "labels": {"pod": "a"}}
    assert pod["spec"]["nodeName"] == "n1"
    ports = [c["ports"][0] for c in pod["spec"]["containers"]]
    assert [(p["name"], p["containerPort"], p["protocol"]) for p in ports] == [
        ("serve-80-tcp", 80, "TCP"), ("serve-81-tcp", 81, "TCP"),
        ("serve-80-udp", 80, "UDP"), ("serve-81-udp", 81, "UDP")]
    assert pod["status"] == {"phase": "Running", "hostIP": "198.18.0.11", "podIP": "10.244.1.2",
                             "podIPs": [{"ip": "10.244.1.2"}]}
    assert namespace_object("y")["metadata"]["labels"] == {"ns": "y"}


def test_network_policy_flag_and_its_preconditions() -> None:
    plan = make_plan("t", 2, 1, subnet_mgr="kube", network_policy=True)
    assert "--network-policy" in flanneld_argv(["flanneld"], plan, plan.nodes[0])
    plain = make_plan("t", 2, 1, subnet_mgr="kube")
    assert "--network-policy" not in flanneld_argv(["flanneld"], plain, plain.nodes[0])
    with pytest.raises(ConfigError, match="need --subnet-mgr kube"):
        make_plan("t", 2, 1, network_policy=True)
    with pytest.raises(ConfigError, match="needs 9 pods"):
        make_plan("t", 2, 4, subnet_mgr="kube", netpol_model=True)


def test_render_marks_reachable_blocked_and_loopback() -> None:
    results = [ProbeResult("x/a", "x/b", 80, "tcp", True, "x/b"),
               ProbeResult("x/b", "x/a", 80, "tcp", False, "ECONNREFUSED")]
    assert render(["x/a", "x/b"], results).splitlines() == [
        "    x/a x/b", "x/a   -   .", "x/b   X   -"]
