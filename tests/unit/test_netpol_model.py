"""NetworkPolicy parsing (defaults, fail-closed problems) and the reference oracle."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flanneld.netpol.model import (
    Cluster,
    Direction,
    Namespace,
    Pod,
    Policy,
    allowed,
    parse_namespace,
    parse_pod,
    parse_policy,
)

IP = ipaddress.ip_address


def policy(spec: dict[str, Any], ns: str = "x", name: str = "p") -> Policy:
    parsed, problems = parse_policy({"metadata": {"name": name, "namespace": ns}, "spec": spec})
    assert parsed is not None and not problems, problems
    return parsed


def pod_obj(ns: str, name: str, ip: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": "n1",
        "containers": [{"ports": [{"name": "serve-81-tcp", "containerPort": 81}]}],
    }
    spec.update(extra.get("spec", {}))
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
        "status": {"podIP": ip, "phase": extra.get("phase", "Running")},
    }


def model(*policies: Policy) -> Cluster:
    """Namespaces x, y (labels ns=), pods a, b in each: 10.0.<ns>.<pod>."""
    namespaces, pods = [], []
    for ni, ns in enumerate("xy"):
        parsed_ns, _ = parse_namespace({"metadata": {"name": ns, "labels": {"ns": ns}}})
        assert parsed_ns is not None
        namespaces.append(parsed_ns)
        for pi, name in enumerate("ab"):
            parsed_pod, _ = parse_pod(pod_obj(ns, name, f"10.0.{ni}.{pi + 1}", {"pod": name}))
            assert parsed_pod is not None
            pods.append(parsed_pod)
    return Cluster(tuple(policies), tuple(namespaces), tuple(pods))


XA, XB, YA, YB = IP("10.0.0.1"), IP("10.0.0.2"), IP("10.0.1.1"), IP("10.0.1.2")
OUTSIDE = IP("192.0.2.9")


def test_defaults_protocol_tcp_and_policy_types() -> None:
    p = policy({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    assert p.types == {Direction.INGRESS}
    assert p.ingress[0].ports[0].protocol == "TCP"
    both = policy({"podSelector": {}, "egress": [{}]})
    assert both.types == {Direction.INGRESS, Direction.EGRESS}
    egress_only = policy({"podSelector": {}, "policyTypes": ["Egress"]})
    assert egress_only.types == {Direction.EGRESS}


def test_namespace_gets_its_name_label() -> None:
    ns, _ = parse_namespace({"metadata": {"name": "y"}})
    assert ns == Namespace("y", (("kubernetes.io/metadata.name", "y"),))


def test_default_deny_ingress_isolates_only_ingress() -> None:
    c = model(policy({"podSelector": {}}))
    assert not allowed(c, YA, XA, 80, "TCP")
    assert allowed(c, XA, YA, 80, "TCP")  # egress of x not isolated, y not isolated


def test_empty_rule_allows_everything_and_absent_peers_mean_any() -> None:
    c = model(policy({"podSelector": {}, "ingress": [{}]}))
    assert allowed(c, OUTSIDE, XA, 5, "UDP")


def test_pod_selector_peer_is_in_the_policy_namespace_only() -> None:
    c = model(policy({"podSelector": {"matchLabels": {"pod": "a"}},
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    assert allowed(c, XB, XA, 80, "TCP")
    assert not allowed(c, YB, XA, 80, "TCP")
    assert allowed(c, YB, XB, 80, "TCP")  # x/b not selected


def test_namespace_and_pod_selector_in_one_peer_is_and_in_two_is_or() -> None:
    and_peer = [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                 "podSelector": {"matchLabels": {"pod": "b"}}}]
    or_peers = [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                {"podSelector": {"matchLabels": {"pod": "b"}}}]
    c_and = model(policy({"podSelector": {}, "ingress": [{"from": and_peer}]}))
    c_or = model(policy({"podSelector": {}, "ingress": [{"from": or_peers}]}))
    assert [allowed(c_and, s, XA, 80, "TCP") for s in (XB, YA, YB)] == [False, False, True]
    assert [allowed(c_or, s, XA, 80, "TCP") for s in (XB, YA, YB)] == [True, True, True]


def test_match_expressions_notin_matches_absent_key() -> None:
    c = model(policy({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "other", "operator": "NotIn", "values": ["v"]}]}}]}]}))
    assert allowed(c, YA, XA, 80, "TCP")


def test_ip_block_with_except_on_egress() -> None:
    c = model(policy({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.2/32"]}}]}]}))
    assert allowed(c, XA, YA, 80, "TCP")
    assert not allowed(c, XA, YB, 80, "TCP")
    assert not allowed(c, XA, OUTSIDE, 80, "TCP")


def test_ports_ranges_named_and_protocol_only() -> None:
    c = model(policy({"podSelector": {}, "ingress": [{"ports": [
        {"port": 1000, "endPort": 1010}, {"port": "serve-81-tcp"}, {"protocol": "UDP"}]}]}))
    assert allowed(c, YA, XA, 1010, "TCP") and not allowed(c, YA, XA, 1011, "TCP")
    assert allowed(c, YA, XA, 81, "TCP") and not allowed(c, YA, XA, 80, "TCP")
    assert allowed(c, YA, XA, 4242, "UDP") and not allowed(c, YA, XA, 81, "SCTP")


def test_egress_and_ingress_both_must_allow() -> None:
    deny_egress = policy({"podSelector": {}, "policyTypes": ["Egress"]}, ns="y", name="e")
    allow_in = policy({"podSelector": {}, "ingress": [{}]})
    c = model(deny_egress, allow_in)
    assert not allowed(c, YA, XA, 80, "TCP")
    assert allowed(c, XB, XA, 80, "TCP")


def test_host_network_and_finished_pods_are_not_selected() -> None:
    host, _ = parse_pod(pod_obj("x", "h", "10.0.0.9", {}, spec={"hostNetwork": True}))
    done, _ = parse_pod(pod_obj("x", "d", "10.0.0.8", {}, phase="Succeeded"))
    assert host is not None and done is not None
    assert not host.actionable and not done.actionable
    c = Cluster((policy({"podSelector": {}}),), model().namespaces, (*model().pods, host, done))
    assert allowed(c, YA, IP("10.0.0.9"), 80, "TCP")


BAD_CASES = [
    ({"ingress": [{"ports": [{"port": "x", "endPort": 90}]}]}, "endPort with the named port"),
    ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "is not TCP, UDP or SCTP"),
    ({"ingress": [{"from": [{}]}]}, "names no podSelector"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "ipBlock combined"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "bogus"}}]}]}, "is not a network"),
    ({"ingress": [{"from": [{"podSelector": {"matchExpressions": [
        {"key": "k", "operator": "Gt", "values": ["1"]}]}}]}]}, "unsupported matchExpressions"),
    ({"ingress": [{"ports": [{"port": 70000}]}]}, "out of range"),
]


@pytest.mark.parametrize(("spec", "reason"), BAD_CASES)
def test_bad_rule_is_reported_and_allows_nothing(spec: dict[str, Any], reason: str) -> None:
    parsed, problems = parse_policy(
        {"metadata": {"name": "bad", "namespace": "x"}, "spec": {"podSelector": {}, **spec}}
    )
    assert parsed is not None
    assert any(reason in p.reason and p.namespace == "x" and p.name == "bad" for p in problems)
    assert parsed.ingress == ()  # the rule that cannot be expressed is gone
    c = model(parsed)
    assert not any(allowed(c, s, XA, port, proto) for s in (XB, YA, OUTSIDE)
                   for port, proto in ((80, "TCP"), (90, "TCP"), (80, "UDP")))


def test_one_bad_peer_among_good_ones_only_narrows() -> None:
    parsed, problems = parse_policy({"metadata": {"name": "p", "namespace": "x"}, "spec": {
        "podSelector": {}, "ingress": [{"from": [{}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}})
    assert parsed is not None and problems
    c = model(parsed)
    assert allowed(c, XB, XA, 80, "TCP") and not allowed(c, YA, XA, 80, "TCP")


def test_unusable_pod_selector_isolates_the_namespace() -> None:
    parsed, problems = parse_policy({"metadata": {"name": "p", "namespace": "x"}, "spec": {
        "podSelector": {"matchExpressions": [{"key": "k", "operator": "Bogus"}]},
        "ingress": [{}]}})
    assert parsed is not None and problems
    c = model(parsed)
    assert not allowed(c, YA, XA, 80, "TCP") and not allowed(c, YA, XB, 80, "TCP")


@pytest.mark.parametrize("obj", [{}, {"metadata": "x"}, {"metadata": {"namespace": "x"}}])
def test_object_without_name_is_a_problem_not_a_crash(obj: dict[str, Any]) -> None:
    for parse in (parse_policy, parse_pod, parse_namespace):
        value, problems = parse(obj)
        assert value is None and problems


def test_dual_stack_pod_ips_and_bad_ip_skipped() -> None:
    pod, problems = parse_pod({"metadata": {"name": "a", "namespace": "x"},
                               "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"},
                                                     {"ip": "nope"}]}})
    assert pod == Pod("x", "a", (), (IP("10.0.0.1"), IP("fd00::1")), phase="Pending")
    assert problems


def test_explain_per_direction_and_why_not() -> None:
    from flanneld.netpol.explain import explain

    c = model(policy({"podSelector": {}, "policyTypes": ["Egress"]}))
    text = explain(c, "x/a")
    assert "Ingress: not isolated" in text and "x/p: allows nothing" in text
    host, _ = parse_pod(pod_obj("x", "h", "10.0.0.9", {}, spec={"hostNetwork": True}))
    assert host is not None
    c2 = Cluster(c.policies, c.namespaces, (*c.pods, host))
    assert "hostNetwork" in explain(c2, "x/h")
    assert "no such pod" in explain(c, "x/zz")
