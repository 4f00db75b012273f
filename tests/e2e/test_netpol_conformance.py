"""Conformance: cases of the Kubernetes e2e NetworkPolicy suite (test/e2e/network/netpol)
in the lab, with full 9x9 truth tables.

One lab for the module: two nodes, flanneld ``--network-policy`` in kube mode,
the e2e model (namespaces x, y, z labelled ``ns=...``; pods a, b, c labelled
``pod=...``; x/a on n1, x/b on n2 and so on, so every row mixes same-node and
cross-node pairs), each pod serving TCP and UDP on 80 and 81 with named ports.
Every case creates its policies (and label changes) through the official
client via ``flannelctl lab kubeconfig``, states the expected table as a
predicate (as upstream's ``Reachability`` builders do), checks that the
engine's pure oracle (:func:`flanneld.netpol.model.allowed`) agrees with it
for every cell, then probes until the lab shows exactly that table (upstream
probes, then probes once more before failing) and cleans up.  Loopback
cells are not probed (upstream's ``ignoreLoopback``).  SCTP cannot be probed
on this kernel (no SCTP sockets); the two SCTP cases below check that an
SCTP rule neither opens nor fails to isolate TCP, which needs no SCTP socket.
"""

# The kubernetes client carries no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from flanneld.lab.lab import Lab
from flanneld.lab.netprobe import ProbeResult, render, sctp_error
from flanneld.lab.topology import netns_argv
from flanneld.netpol.model import Cluster, allowed, parse_namespace, parse_pod, parse_policy
from flanneld.netpol.ruleset import LocalNode, desired_ruleset
from flanneld.netpol.script import Observed, expected, observe
from flanneld.netpol.table import FAMILY, TABLE
from tests.conftest import RUN_PREFIX
from tests.labs import module_lab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PREFIX = RUN_PREFIX + "np"
ENFORCE_TIMEOUT = 60.0  # a loaded machine: informer + nft apply, polled
KEYS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]
TCP80, TCP81, UDP80, UDP81 = (80, "tcp"), (81, "tcp"), (80, "udp"), (81, "udp")


@dataclass(frozen=True)
class P:
    """One end of a probe, as the expectation predicates see it."""

    ns: str
    pod: str

    @property
    def key(self) -> str:
        return f"{self.ns}/{self.pod}"


Expect = Callable[[P, P, int, str], bool]


class Env:
    """What a case may touch: the official clients, pod addresses, label bookkeeping."""

    def __init__(self, lab: Lab, api_client: Any) -> None:
        from kubernetes import client

        self.lab = lab
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)
        self.ips = {p.key: lab.pod_ip(p) for p in lab.model_pods}
        self.labelled: list[tuple[str, str, str]] = []  # (kind, ns/name, label) to remove

    def policy(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}
        self.net.create_namespaced_network_policy(ns, body)

    def replace_policy(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        old = self.net.read_namespaced_network_policy(name, ns)
        body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": ns,
                             "resourceVersion": old.metadata.resource_version}, "spec": spec}
        self.net.replace_namespaced_network_policy(name, ns, body)

    def label_namespace(self, ns: str, key: str, value: str) -> None:
        self.core.patch_namespace(ns, {"metadata": {"labels": {key: value}}})
        self.labelled.append(("namespace", ns, key))

    def label_pod(self, pod: str, key: str, value: str) -> None:
        ns, name = pod.split("/")
        self.core.patch_namespaced_pod(name, ns, {"metadata": {"labels": {key: value}}})
        self.labelled.append(("pod", pod, key))

    def cleanup(self) -> None:
        for ns in "xyz":
            self.net.delete_collection_namespaced_network_policy(ns)
        for kind, name, key in self.labelled:
            unset = {"metadata": {"labels": {key: None}}}
            if kind == "namespace":
                self.core.patch_namespace(name, unset)
            else:
                ns, pod = name.split("/")
                self.core.patch_namespaced_pod(pod, ns, unset)
        self.labelled.clear()

    def cluster(self) -> Cluster:
        """The oracle's view, parsed from what the API server holds now."""
        def raw(items: Any) -> list[dict[str, Any]]:
            return [self.api_client.sanitize_for_serialization(i) for i in items.items]

        namespaces = [parse_namespace(o)[0] for o in raw(self.core.list_namespace())]
        pods = [parse_pod(o)[0] for o in raw(self.core.list_pod_for_all_namespaces())]
        policies = [parse_policy(o)[0] for o in raw(
            self.net.list_network_policy_for_all_namespaces())]
        return Cluster(policies=tuple(p for p in policies if p is not None),
                       namespaces=tuple(n for n in namespaces if n is not None),
                       pods=tuple(p for p in pods if p is not None))


@dataclass(frozen=True)
class Step:
    """Do ``act``, then the lab must show ``expect`` on every (port, protocol) of ``probes``."""

    act: Callable[[Env], None]
    expect: Expect
    probes: tuple[tuple[int, str], ...] = (TCP80,)


@dataclass(frozen=True)
class Case:
    name: str  # upstream's wording, shortened
    steps: tuple[Step, ...] = field(default_factory=tuple)


def one(name: str, act: Callable[[Env], None], expect: Expect,
        *probes: tuple[int, str]) -> Case:
    return Case(name, (Step(act, expect, probes or (TCP80,)),))


# --- policy bodies (camelCase, as kubectl would send them) -------------------------------


def sel(**labels: str) -> dict[str, Any]:
    return {"matchLabels": labels}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}


def ingress(target: dict[str, Any], *rules: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": target, "policyTypes": ["Ingress"], "ingress": list(rules)}


def egress(target: dict[str, Any], *rules: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": target, "policyTypes": ["Egress"], "egress": list(rules)}


def frm(*peers: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"from": list(peers)}
    if ports is not None:
        rule["ports"] = ports
    return rule


def to(*peers: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": list(peers)} if peers else {}
    if ports is not None:
        rule["ports"] = ports
    return rule


def port(number: int | str, protocol: str = "TCP", end: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"port": number, "protocol": protocol}
    if end is not None:
        entry["endPort"] = end
    return entry


A = sel(pod="a")
ALL: dict[str, Any] = {}
FROM_Y = {"namespaceSelector": sel(ns="y")}


def xa(p: P) -> bool:
    return p.key == "x/a"


def pols(*made: tuple[str, str, dict[str, Any]]) -> Callable[[Env], None]:
    def act(env: Env) -> None:
        for ns, name, spec in made:
            env.policy(ns, name, spec)
    return act


def nothing(env: Env) -> None:
    return None


def block_of(key: str, env: Env) -> str:
    return f"{env.ips[key]}/32"


# --- the cases ------------------------------------------------------------------------------

CASES: list[Case] = [
    one("default-deny-ingress", pols(("x", "deny", ingress(ALL))),
        lambda s, d, n, pr: d.ns != "x", TCP80, UDP80),
    one("default-deny-all", pols(("x", "deny", {"podSelector": {},
                                                "policyTypes": ["Ingress", "Egress"]})),
        lambda s, d, n, pr: s.ns != "x" and d.ns != "x", TCP80, UDP80),
    one("allow from pods within server namespace by PodSelector",
        pols(("x", "p", ingress(A, frm({"podSelector": sel(pod="b")})))),
        lambda s, d, n, pr: not xa(d) or s.key == "x/b", TCP80, UDP80),
    one("allow ingress for a target on top of deny-all",
        pols(("x", "deny", ingress(ALL)), ("x", "allow-a", ingress(A, {}))),
        lambda s, d, n, pr: d.ns != "x" or xa(d)),
    one("allow ingress from pods in all namespaces",
        pols(("x", "deny", ingress(ALL)), ("x", "p", ingress(A, frm({"namespaceSelector": {}})))),
        lambda s, d, n, pr: d.ns != "x" or xa(d)),
    one("allow only from a different namespace by NamespaceSelector",
        pols(("x", "p", ingress(A, frm(FROM_Y)))),
        lambda s, d, n, pr: not xa(d) or s.ns == "y", TCP80, UDP80),
    one("PodSelector with MatchExpressions",
        pols(("x", "p", ingress(A, frm({"podSelector": expr("pod", "In", "b")})))),
        lambda s, d, n, pr: not xa(d) or s.key == "x/b"),
    one("NamespaceSelector with MatchExpressions",
        pols(("x", "p", ingress(A, frm({"namespaceSelector": expr("ns", "In", "y")})))),
        lambda s, d, n, pr: not xa(d) or s.ns == "y"),
    one("PodSelector or NamespaceSelector",
        pols(("x", "p", ingress(A, frm({"namespaceSelector": expr("ns", "NotIn", "x")},
                                       {"podSelector": sel(pod="b")})))),
        lambda s, d, n, pr: not xa(d) or s.ns != "x" or s.key == "x/b", TCP80, UDP80),
    one("PodSelector and NamespaceSelector",
        pols(("x", "p", ingress(A, frm({"namespaceSelector": expr("ns", "NotIn", "x"),
                                        "podSelector": sel(pod="b")})))),
        lambda s, d, n, pr: not xa(d) or (s.ns != "x" and s.pod == "b"), TCP80, UDP80),
    one("multiple PodSelectors and NamespaceSelectors",
        pols(("x", "p", ingress(A, frm({"namespaceSelector": expr("ns", "NotIn", "x"),
                                        "podSelector": expr("pod", "In", "b", "c")})))),
        lambda s, d, n, pr: not xa(d) or (s.ns != "x" and s.pod in "bc")),
    one("any PodSelectors",
        pols(("x", "p", ingress(A, frm({"podSelector": sel(pod="b")},
                                       {"podSelector": sel(pod="c")})))),
        lambda s, d, n, pr: not xa(d) or s.key in ("x/b", "x/c")),
    one("only from a pod in a different namespace (PodSelector and NamespaceSelector)",
        pols(("x", "p", ingress(A, frm({"namespaceSelector": sel(ns="y"),
                                        "podSelector": sel(pod="a")})))),
        lambda s, d, n, pr: not xa(d) or s.key == "y/a", TCP80, UDP80),
    one("based on Ports",
        pols(("x", "p", ingress(A, frm(FROM_Y, ports=[port(81)])))),
        lambda s, d, n, pr: not xa(d) or (s.ns == "y" and n == 81 and pr == "tcp"),
        TCP80, TCP81, UDP81),
    Case("multiple, stacked policies with overlapping podSelectors", (
        Step(pols(("x", "p81", ingress(A, frm(FROM_Y, ports=[port(81)])))),
             lambda s, d, n, pr: not xa(d) or (s.ns == "y" and n == 81), (TCP80, TCP81)),
        Step(pols(("x", "p80", ingress(A, frm(FROM_Y, ports=[port(80)])))),
             lambda s, d, n, pr: not xa(d) or s.ns == "y", (TCP80, TCP81)),
    )),
    one("allow-all policy", pols(("x", "deny", ingress(ALL)), ("x", "all", ingress(ALL, {}))),
        lambda s, d, n, pr: True, TCP80, TCP81),
    one("ingress on one named port",
        pols(("x", "p", ingress(ALL, {"ports": [port("serve-81-tcp")]}))),
        lambda s, d, n, pr: d.ns != "x" or (n == 81 and pr == "tcp"), TCP80, TCP81, UDP81),
    one("ingress from namespace on one named port",
        pols(("x", "p", ingress(ALL, frm(FROM_Y, ports=[port("serve-80-tcp")])))),
        lambda s, d, n, pr: d.ns != "x" or (s.ns == "y" and n == 80), TCP80, TCP81),
    one("egress on one named port",
        pols(("x", "p", egress(ALL, to(ports=[port("serve-80-tcp")])))),
        lambda s, d, n, pr: s.ns != "x" or (n == 80 and pr == "tcp"), TCP80, TCP81, UDP80),
    Case("enforce updated policy (allow-all becomes deny-all)", (
        Step(pols(("x", "p", ingress(ALL, {}))), lambda s, d, n, pr: True, (TCP81,)),
        Step(lambda env: env.replace_policy("x", "p", ingress(ALL)),
             lambda s, d, n, pr: d.ns != "x", (TCP81,)),
    )),
    Case("allow ingress from updated namespace", (
        Step(pols(("x", "p", ingress(A, frm({"namespaceSelector": sel(ns2="updated")})))),
             lambda s, d, n, pr: not xa(d)),
        Step(lambda env: env.label_namespace("y", "ns2", "updated"),
             lambda s, d, n, pr: not xa(d) or s.ns == "y"),
    )),
    Case("allow ingress from updated pod", (
        Step(pols(("x", "p", ingress(A, frm({"podSelector": sel(pod2="updated")})))),
             lambda s, d, n, pr: not xa(d)),
        Step(lambda env: env.label_pod("x/b", "pod2", "updated"),
             lambda s, d, n, pr: not xa(d) or s.key == "x/b"),
    )),
    one("deny ingress from pods on other namespaces",
        pols(("x", "p", ingress(ALL, frm({"podSelector": {}})))),
        lambda s, d, n, pr: d.ns != "x" or s.ns == "x", TCP80, UDP80),
    Case("deny ingress to updated pod", (
        Step(pols(("x", "p", ingress(sel(target="isolated")))), lambda s, d, n, pr: True),
        Step(lambda env: env.label_pod("x/a", "target", "isolated"),
             lambda s, d, n, pr: not xa(d)),
    )),
    one("deny egress from pods based on PodSelector", pols(("x", "p", egress(A))),
        lambda s, d, n, pr: not xa(s), TCP80, UDP80),
    one("deny egress from all pods in a namespace", pols(("x", "p", egress(ALL))),
        lambda s, d, n, pr: s.ns != "x", TCP80, UDP80),
    one("Ingress and Egress specified together",
        pols(("x", "p", {"podSelector": A, "policyTypes": ["Ingress", "Egress"],
                         "ingress": [frm({"podSelector": sel(pod="b")})],
                         "egress": [{"ports": [port(80)]}]})),
        lambda s, d, n, pr: (not xa(d) or s.key == "x/b") and (not xa(s) or n == 80),
        TCP80, TCP81),
    one("deny egress on the client side even if the server allows it",
        pols(("y", "all", ingress(ALL, {})), ("x", "p", egress(A))),
        lambda s, d, n, pr: not xa(s)),
    one("egress to a server in a different namespace (PodSelector and NamespaceSelector)",
        pols(("x", "p", egress(A, to({"namespaceSelector": sel(ns="y"),
                                      "podSelector": sel(pod="a")})))),
        lambda s, d, n, pr: not xa(s) or d.key == "y/a", TCP80, UDP80),
    one("ingress allowing any port on a specific protocol",
        pols(("x", "p", ingress(A, {"ports": [{"protocol": "TCP"}]}))),
        lambda s, d, n, pr: not xa(d) or pr == "tcp", TCP80, UDP80),
    Case("multiple ingress policies, allow-all taking precedence", (
        Step(pols(("x", "p80", ingress(A, {"ports": [port(80)]}))),
             lambda s, d, n, pr: not xa(d), (TCP81,)),
        Step(pols(("x", "all", ingress(A, {}))), lambda s, d, n, pr: True, (TCP81,)),
    )),
    Case("multiple egress policies, allow-all taking precedence", (
        Step(pols(("x", "p80", egress(A, {"ports": [port(80)]}))),
             lambda s, d, n, pr: not xa(s), (TCP81,)),
        Step(pols(("x", "all", egress(A, {}))), lambda s, d, n, pr: True, (TCP81,)),
    )),
    Case("stop enforcing policies after they are deleted", (
        Step(pols(("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
             lambda s, d, n, pr: s.ns != "x" and d.ns != "x"),
        Step(lambda env: env.net.delete_namespaced_network_policy("deny", "x"),
             lambda s, d, n, pr: True),
    )),
    one("egress to a server in a CIDR block",
        lambda env: env.policy("x", "p", egress(A, to({"ipBlock": {
            "cidr": block_of("y/a", env)}}))),
        lambda s, d, n, pr: not xa(s) or d.key == "y/a", TCP80, UDP80),
    Case("except clause in an egress CIDR block, then an IP in both cidr and except", (
        Step(lambda env: env.policy("x", "p", egress(A, to({"ipBlock": {
            "cidr": "10.0.0.0/8", "except": [block_of("x/b", env)]}}))),
             lambda s, d, n, pr: not xa(s) or d.key != "x/b"),
        Step(lambda env: env.replace_policy("x", "p", egress(A, to({"ipBlock": {
            "cidr": block_of("x/b", env)}}))),
             lambda s, d, n, pr: not xa(s) or d.key == "x/b"),
    )),
    one("ingress and egress policies controlled independently",
        pols(("x", "in", ingress(A)), ("x", "out", egress(A, to({"podSelector": sel(pod="b")})))),
        lambda s, d, n, pr: not xa(d) and (not xa(s) or d.key == "x/b"), TCP80, UDP80),
    one("not treat protocol SCTP as TCP",
        pols(("x", "deny", ingress(ALL)), ("x", "sctp", ingress(A, {"ports": [port(81, "SCTP")]}))),
        lambda s, d, n, pr: d.ns != "x", TCP81),
    one("isolate pods selected by a policy allowing only SCTP",
        pols(("x", "sctp", ingress(A, {"ports": [port(80, "SCTP")]}))),
        lambda s, d, n, pr: not xa(d), TCP81),
    one("not allow TCP when a policy specifies only UDP",
        pols(("x", "udp", ingress(A, {"ports": [port(81, "UDP")]}))),
        lambda s, d, n, pr: not xa(d) or pr == "udp", TCP81, UDP81),
    one("NamespaceSelector with MatchLabels using the default namespace label",
        pols(("x", "p", ingress(A, frm({"namespaceSelector": sel(**{
            "kubernetes.io/metadata.name": "y"})})))),
        lambda s, d, n, pr: not xa(d) or s.ns == "y"),
    one("NamespaceSelector with MatchExpressions using the default namespace label",
        pols(("x", "p", egress(A, to({"namespaceSelector": expr(
            "kubernetes.io/metadata.name", "NotIn", "y")})))),
        lambda s, d, n, pr: not xa(s) or d.ns != "y"),
    one("UDP default-deny-ingress", pols(("x", "deny", ingress(ALL))),
        lambda s, d, n, pr: d.ns != "x", UDP80),
    one("UDP based on Ports",
        pols(("x", "p", ingress(A, frm(FROM_Y, ports=[port(81, "UDP")])))),
        lambda s, d, n, pr: not xa(d) or (s.ns == "y" and n == 81), UDP80, UDP81),
    one("endPort range (cyclonus-style: 79-80 opens 80, not 81)",
        pols(("x", "p", ingress(A, frm(FROM_Y, ports=[port(79, "TCP", end=80)])))),
        lambda s, d, n, pr: not xa(d) or (s.ns == "y" and n == 80), TCP80, TCP81),
]


# --- machinery -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with module_lab(PREFIX, nodes=2, backend="vxlan", subnet_mgr="kube",
                    network_policy=True, netpol_model=True) as made:
        yield made


@pytest.fixture(scope="module")
def env(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from kubernetes import config

    path = tmp_path_factory.mktemp("kube") / "kubeconfig"
    path.write_text(json.dumps(lab.kubeconfig()))
    api_client = config.new_client_from_config(str(path))
    made = Env(lab, api_client)
    yield made
    made.cleanup()
    api_client.close()


def table(expect: Expect, n: int, pr: str) -> dict[tuple[str, str], bool]:
    ends = {k: P(*k.split("/")) for k in KEYS}
    return {(s, d): expect(ends[s], ends[d], n, pr) for s in KEYS for d in KEYS if s != d}


def observed(results: list[ProbeResult]) -> dict[tuple[str, str], bool]:
    return {(r.src, r.dst): r.ok for r in results}


def oracle(env: Env, n: int, pr: str) -> dict[tuple[str, str], bool]:
    cluster = env.cluster()
    ip = {k: ipaddress.ip_address(v) for k, v in env.ips.items()}
    return {(s, d): allowed(cluster, ip[s], ip[d], n, pr.upper())
            for s in KEYS for d in KEYS if s != d}


def show(cells: dict[tuple[str, str], bool], n: int, pr: str) -> str:
    return render(KEYS, [ProbeResult(s, d, n, pr, ok, "") for (s, d), ok in cells.items()])


def run_step(env: Env, step: Step) -> None:
    step.act(env)
    for n, pr in step.probes:
        wanted = table(step.expect, n, pr)
        assert oracle(env, n, pr) == wanted, (
            f"the oracle disagrees with the case's table ({pr} {n}):\n"
            f"oracle:\n{show(oracle(env, n, pr), n, pr)}\nexpected:\n{show(wanted, n, pr)}")
    deadline = time.monotonic() + ENFORCE_TIMEOUT
    pending = list(step.probes)
    while pending:
        n, pr = pending[0]
        wanted = table(step.expect, n, pr)
        got = observed(env.lab.probe(n, pr))
        if got == wanted:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            wrong = sorted(k for k in wanted if wanted[k] != got.get(k))
            pytest.fail(f"{pr.upper()} {n}: {len(wrong)} cells differ after "
                        f"{ENFORCE_TIMEOUT:g}s, e.g. {wrong[:5]}\nexpected:\n"
                        f"{show(wanted, n, pr)}\nprobed:\n{show(got, n, pr)}")
        time.sleep(0.5)


def test_model_is_spread_over_two_nodes(lab: Lab) -> None:
    nodes = {p.key: p.node for p in lab.model_pods}
    assert sorted(nodes) == KEYS
    assert set(nodes.values()) == {"n1", "n2"}
    assert nodes["x/a"] != nodes["x/b"]


def test_without_policies_everything_is_reachable(env: Env) -> None:
    run_step(env, Step(nothing, lambda s, d, n, pr: True, (TCP80, TCP81, UDP80, UDP81)))


def test_flannelctl_lab_probe_prints_the_matrix_and_refuses_sctp(lab: Lab) -> None:
    ctl = [sys.executable, "-m", "flanneld.ctl", "lab", "probe", "--prefix", PREFIX]
    done = subprocess.run([*ctl, "--protocol", "udp", "--port", "81", "--json"],
                          capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(done.stdout)
    assert (doc["port"], doc["protocol"]) == (81, "udp")
    assert sorted((p["from"], p["to"]) for p in doc["probes"]) == sorted(
        (s, d) for s in KEYS for d in KEYS if s != d)
    assert all(p["ok"] and p["detail"] == p["to"] for p in doc["probes"])
    text = subprocess.run(ctl, capture_output=True, text=True, timeout=120, check=True).stdout
    assert text.splitlines()[2].split() == ["x/a", "-", *["."] * 8]
    refused = subprocess.run([*ctl, "--protocol", "sctp"], capture_output=True, text=True,
                             timeout=120, check=False)
    assert refused.returncode != 0 and "SCTP" in refused.stderr, refused
    if sctp_error() is not None:
        assert "cannot open SCTP sockets" in refused.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_e2e_case(env: Env, case: Case) -> None:
    try:
        for step in case.steps:
            run_step(env, step)
    finally:
        env.cleanup()


# --- a daemon killed while a policy is in force ---------------------------------------------


def kernel_table(lab: Lab, node: str) -> Observed | None:
    """``node``'s ``inet pyflannel-policy`` as the kernel holds it (None: no table)."""
    done = subprocess.run(netns_argv(lab.plan.node(node).netns,
                                     ["nft", "-j", "list", "table", FAMILY, TABLE]),
                          capture_output=True, text=True, timeout=60, check=False)
    return observe(json.loads(done.stdout)) if done.returncode == 0 else None


def engine_table(env: Env, node: str) -> Observed:
    """What reading back the pure function's ruleset for the API's objects gives on ``node``."""
    return expected(desired_ruleset(env.cluster(), LocalNode(node)).ruleset)


def matches_engine(env: Env, node: str) -> bool:
    return kernel_table(env.lab, node) == engine_table(env, node)


def test_sigkill_keeps_the_policy_enforced_and_restart_converges_on_the_engine(env: Env) -> None:
    """SIGKILL n1's flanneld with x isolated: our table stays in n1's kernel, so
    the x column stays blocked while the daemon is down; a policy created
    meanwhile (y isolated) is enforced after the restart, and then the table
    read back from the kernel equals the pure function's ruleset on both nodes."""
    lab = env.lab
    x_only: Expect = lambda s, d, n, pr: d.ns != "x"
    try:
        run_step(env, Step(pols(("x", "deny", ingress(ALL))), x_only))
        assert matches_engine(env, "n1") and matches_engine(env, "n2")
        pid = lab.flanneld_pid("n1")
        assert pid is not None
        lab.kill_flanneld("n1", signal.SIGKILL)
        assert lab.flanneld_pid("n1") is None
        assert kernel_table(lab, "n1") is not None, "the table went with the daemon"
        wanted = table(x_only, *TCP80)
        denied = {cell for cell, ok in wanted.items() if not ok}
        # Down: no denied cell may ever answer; allowed ones may time out under load, so
        # probe until they all answer too (three full tables at least).
        rounds, deadline = 0, time.monotonic() + ENFORCE_TIMEOUT
        while True:
            got = observed(lab.probe(*TCP80))
            leaked = sorted(c for c in denied if got.get(c))
            assert not leaked, f"reachable while n1's flanneld was down: {leaked}"
            rounds += 1
            if rounds >= 3 and got == wanted:
                break
            assert time.monotonic() < deadline, f"allowed cells unreachable:\n{show(got, *TCP80)}"
        assert lab.flanneld_pid("n1") is None, "something restarted n1's flanneld early"
        env.policy("y", "deny", ingress(ALL))  # while n1's daemon cannot see it
        lab.start_flanneld("n1")
        run_step(env, Step(nothing, lambda s, d, n, pr: d.ns not in ("x", "y")))
        wait_for(lambda: matches_engine(env, "n1"), "n1's table equals the engine's")
        wait_for(lambda: matches_engine(env, "n2"), "n2's table equals the engine's")
    finally:
        if lab.flanneld_pid("n1") is None:
            lab.start_flanneld("n1")
        env.cleanup()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + ENFORCE_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {ENFORCE_TIMEOUT:g}s: {what}"
        time.sleep(0.5)
