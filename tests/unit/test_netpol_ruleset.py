"""The desired nftables ruleset: per rule kind, verdict == oracle (property), and plan()."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanneld.netpol.model import (
    Cluster,
    Direction,
    Pod,
    allowed,
    parse_namespace,
    parse_pod,
    parse_policy,
)
from flanneld.netpol.ruleset import LocalNode, Packet, desired_ruleset, verdict
from flanneld.netpol.script import expected, plan, render

IP = ipaddress.ip_address
NODE1, NODE2 = LocalNode("n1"), LocalNode("n2")
OUTSIDE = IP("192.0.2.9")
PORTS = ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "SCTP"), (1005, "TCP"))


def pods() -> tuple[Pod, ...]:
    """x/a, x/b, y/a, y/b (dual-stack); a on n1, b on n2; named port serve-81-tcp on b."""
    out = []
    for ni, ns in enumerate("xy"):
        for pi, name in enumerate("ab"):
            ports = [{"name": "serve", "containerPort": 80 + pi}]
            obj = {
                "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
                "spec": {"nodeName": f"n{pi + 1}", "containers": [{"ports": ports}]},
                "status": {"phase": "Running", "podIPs": [
                    {"ip": f"10.0.{ni}.{pi + 1}"}, {"ip": f"fd00::{ni}:{pi + 1}"}]},
            }
            pod, _ = parse_pod(obj)
            assert pod is not None
            out.append(pod)
    return tuple(out)


def cluster(*specs: dict[str, Any]) -> Cluster:
    policies = []
    for i, spec in enumerate(specs):
        p, _ = parse_policy({"metadata": {"name": f"p{i}", "namespace": "x"}, "spec": spec})
        assert p is not None
        policies.append(p)
    namespaces = []
    for ns in "xy":
        parsed, _ = parse_namespace({"metadata": {"name": ns, "labels": {"ns": ns}}})
        assert parsed is not None
        namespaces.append(parsed)
    return Cluster(tuple(policies), tuple(namespaces), pods())


def endpoints(c: Cluster) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ip for p in c.pods for ip in p.ips] + [OUTSIDE, IP("2001:db8::9")]


def enforced(c: Cluster, pkt: Packet) -> bool:
    """Both nodes' rulesets on the path (each enforces its own pods)."""
    return all(verdict(desired_ruleset(c, n).ruleset, pkt) for n in (NODE1, NODE2))


def assert_matches_oracle(c: Cluster) -> None:
    rulesets = [desired_ruleset(c, n).ruleset for n in (NODE1, NODE2)]
    for src in endpoints(c):
        for dst in endpoints(c):
            if src == dst or src.version != dst.version:
                continue
            for port, proto in PORTS:
                pkt = Packet(src, dst, proto, port)
                got = all(verdict(r, pkt) for r in rulesets)
                assert got == allowed(c, src, dst, port, proto), (src, dst, port, proto)


XA, XB, YA = IP("10.0.0.1"), IP("10.0.0.2"), IP("10.0.1.1")


def test_no_policy_allows_everything_and_has_no_map_elements() -> None:
    d = desired_ruleset(cluster(), NODE1)
    assert all(not m.elements for m in d.ruleset.maps)
    assert enforced(cluster(), Packet(YA, XA, "TCP", 80))


def test_default_deny_ingress_and_established_passes() -> None:
    c = cluster({"podSelector": {}})
    assert not enforced(c, Packet(YA, XA, "TCP", 80))
    assert enforced(c, Packet(YA, XA, "TCP", 80, state="established"))
    assert_matches_oracle(c)


def test_only_local_pods_get_map_elements() -> None:
    d = desired_ruleset(cluster({"podSelector": {}}), NODE1)
    keys = {k for m in d.ruleset.maps for k, _ in m.elements}
    assert keys == {"10.0.0.1", "fd00::1"}  # x/a only; x/b is on n2


def test_pod_cidr_makes_a_pod_local() -> None:
    node = LocalNode("", (ipaddress.ip_network("10.0.0.2/32"),))
    d = desired_ruleset(cluster({"podSelector": {}}), node)
    assert {k for m in d.ruleset.maps for k, _ in m.elements} == {"10.0.0.2", "fd00::2"}  # all its IPs


def test_peer_kinds_ports_and_families_match_the_oracle() -> None:
    for spec in (
        {"podSelector": {"matchLabels": {"pod": "a"}},
         "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]},
        {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
            "matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]},
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
            "cidr": "10.0.0.0/16", "except": ["10.0.1.0/30", "10.0.1.1/32"]}}]}]},
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
            "cidr": "fd00::/64"}}], "ports": [{"port": 80}, {"port": 1000, "endPort": 1010}]}]},
        {"podSelector": {}, "ingress": [{"ports": [{"port": "serve"}, {"protocol": "SCTP"}]}]},
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve"}]}]},
        {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 80}]}]},
    ):
        assert_matches_oracle(cluster(spec))


def test_named_port_nowhere_is_reported() -> None:
    d = desired_ruleset(cluster({"podSelector": {}, "ingress": [{"ports": [{"port": "nope"}]}]}),
                        NODE1)
    assert any("resolves on no pod" in p.reason for p in d.problems)


def test_render_then_plan_is_empty_and_relabel_touches_only_elements() -> None:
    spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    c = cluster(spec)
    d = desired_ruleset(c, NODE1).ruleset
    assert render(d).startswith("add table inet pyflannel-policy\ndelete table")
    assert plan(expected(d), d) == ""
    relabelled = tuple(
        Pod(p.namespace, p.name, (("pod", "z"),), p.ips, node_name=p.node_name, ports=p.ports)
        if p.key == "x/b" else p for p in c.pods
    )
    d2 = desired_ruleset(Cluster(c.policies, c.namespaces, relabelled), NODE1).ruleset
    script = plan(expected(d), d2)
    lines = script.splitlines()
    assert lines and all(line.startswith(("add element", "delete element")) for line in lines)
    assert "10.0.0.2" in script


def test_plan_without_table_is_full_render() -> None:
    d = desired_ruleset(cluster({"podSelector": {}}), NODE1).ruleset
    assert plan(None, d) == render(d)


def test_deleting_the_policy_removes_chains_and_sets_after_elements() -> None:
    c = cluster({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]})
    d = desired_ruleset(c, NODE1).ruleset
    empty = desired_ruleset(Cluster((), c.namespaces, c.pods), NODE1).ruleset
    lines = plan(expected(d), empty).splitlines()
    first_delete_chain = next(i for i, s in enumerate(lines) if s.startswith("delete chain"))
    assert all(not s.startswith("delete element") for s in lines[first_delete_chain:])
    assert any(s.startswith("delete set") for s in lines)
    assert plan(expected(empty), empty) == ""


def test_shared_combination_chain_and_drop_owners() -> None:
    c = cluster({"podSelector": {}}, {"podSelector": {}, "ingress": [{"ports": [{"port": 9}]}]})
    d = desired_ruleset(c, NODE1)
    assert set(d.drop_owners.values()) == {("x/p0", "x/p1")}


# --- property: the ruleset's verdict equals the oracle ---------------------------

labels = st.sampled_from([{}, {"pod": "a"}, {"pod": "b"}])
selector = st.one_of(
    st.builds(lambda m: {"matchLabels": m}, labels),
    st.just({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}),
    st.just({"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]}),
)
peer = st.one_of(
    st.builds(lambda s: {"podSelector": s}, selector),
    st.builds(lambda s: {"namespaceSelector": s}, selector),
    st.builds(lambda a, b: {"podSelector": a, "namespaceSelector": b}, selector, selector),
    st.sampled_from([
        {"ipBlock": {"cidr": "10.0.0.0/23", "except": ["10.0.0.2/32"]}},
        {"ipBlock": {"cidr": "0.0.0.0/0"}},
        {"ipBlock": {"cidr": "fd00::/16", "except": ["fd00::1:0/112"]}},
        {"ipBlock": {"cidr": "192.0.2.0/24"}},
    ]),
)
port = st.sampled_from([
    {"port": 80}, {"port": 81, "protocol": "UDP"}, {"protocol": "SCTP"}, {"port": "serve"},
    {"port": "serve", "protocol": "UDP"}, {"port": 1000, "endPort": 1010}, {"protocol": "TCP"},
])
rule = st.fixed_dictionaries({}, optional={"peers": st.lists(peer, max_size=2),
                                           "ports": st.lists(port, max_size=2)})


def as_spec(pod_sel: dict[str, Any], types: list[str], ingress: list[Any],
            egress: list[Any]) -> dict[str, Any]:
    def convert(rules: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        return [{key: r.get("peers", []), "ports": r.get("ports", [])} for r in rules]
    return {"podSelector": pod_sel, "policyTypes": types,
            "ingress": convert(ingress, "from"), "egress": convert(egress, "to")}


spec = st.builds(
    as_spec, selector,
    st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]),
    st.lists(rule, max_size=2), st.lists(rule, max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spec, min_size=1, max_size=3))
def test_ruleset_verdict_equals_oracle(specs: list[dict[str, Any]]) -> None:
    assert_matches_oracle(cluster(*specs))



@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spec, min_size=1, max_size=3),
       st.lists(st.tuples(st.sampled_from(["relabel", "ns", "drop", "add", "policy", "unpolicy"]),
                          st.integers(0, 3), labels), min_size=1, max_size=8))
def test_cached_build_equals_fresh_build(
    specs: list[dict[str, Any]], steps: list[tuple[str, int, dict[str, str]]],
) -> None:
    from flanneld.netpol.model import Namespace
    from flanneld.netpol.ruleset import PeerCache

    c = cluster(*specs)
    cache = PeerCache()
    assert desired_ruleset(c, NODE1, cache) == desired_ruleset(c, NODE1)
    for op, index, new_labels in steps:
        pods_list, namespaces, policies = list(c.pods), list(c.namespaces), list(c.policies)
        if op == "relabel" and index < len(pods_list):
            p = pods_list[index]
            pods_list[index] = Pod(p.namespace, p.name, tuple(sorted(new_labels.items())), p.ips,
                                   node_name=p.node_name, ports=p.ports)
        elif op == "ns":
            ns = namespaces[index % len(namespaces)]
            namespaces[index % len(namespaces)] = Namespace(
                ns.name, tuple(sorted({**dict(ns.labels), **new_labels, "ns": ns.name}.items())))
        elif op == "drop" and index < len(pods_list):
            del pods_list[index]
        elif op == "policy":  # a new policy isolating pods whose labels it names
            made, _ = parse_policy({"metadata": {"name": f"q{len(policies)}", "namespace": "x"},
                                    "spec": {"podSelector": {"matchLabels": new_labels}}})
            assert made is not None
            policies.append(made)
        elif op == "unpolicy":
            if policies:
                del policies[index % len(policies)]
        else:
            pods_list.append(Pod("z", f"new{index}", tuple(sorted(new_labels.items())),
                                 (IP(f"10.0.9.{index + 1}"),), node_name="n1"))
        c = Cluster(tuple(policies), tuple(namespaces), tuple(pods_list))
        assert desired_ruleset(c, NODE1, cache) == desired_ruleset(c, NODE1)


def test_a_build_that_did_not_end_leaves_no_stale_cache_entry() -> None:
    from flanneld.netpol.ruleset import PeerCache

    deny = {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}
    allow_b = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {
        "pod": "b"}}}]}]}
    first = cluster(deny, allow_b)
    cache = PeerCache()
    desired_ruleset(first, NODE1, cache)
    cache.begin_build()  # a build of the same objects that raised half way
    for pod in first.pods:
        for direction in Direction:
            cache.isolating(first, pod, direction)
    allowing = next(p for p in first.policies if p.ingress)
    cache.pods(first, allowing, allowing.ingress[0].peers)
    moved = Cluster(first.policies, first.namespaces, tuple(
        Pod(p.namespace, p.name, (("pod", "b" if p.label_map.get("pod") == "a" else "a"),),
            p.ips, node_name=p.node_name, ports=p.ports) for p in first.pods))
    assert desired_ruleset(moved, NODE1, cache) == desired_ruleset(moved, NODE1)
