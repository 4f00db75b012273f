"""NetworkPolicy, Namespace and Pod as typed values, parsed from API JSON (pure).

Interface for the informers and the lab (``i12-lab``):

* :func:`parse_policy`, :func:`parse_namespace`, :func:`parse_pod` take one
  API object (the JSON dict of ``networking.k8s.io/v1`` NetworkPolicy, ``v1``
  Namespace, ``v1`` Pod) and return ``(value, problems)``; value is None only
  when the object has no usable ``metadata.name``.
* :class:`Cluster` bundles the three collections; :func:`allowed` is the
  reference decision procedure (``networkpolicy.md`` section 1.8) used by the
  tests and by the lab's expected truth tables.

Parsing applies the API server's defaulting itself (the lab's API double does
not default): a port without ``protocol`` is TCP; empty ``policyTypes``
becomes ``[Ingress]`` plus ``Egress`` when ``egress`` has an element;
Namespaces always carry ``kubernetes.io/metadata.name``.

Fail closed: what cannot be expressed is reported as a :class:`Problem` (with
namespace/name and reason) and dropped from the OR-list it was in.  When a
peer list or port list loses every entry, the whole rule goes: it allows
nothing.  A podSelector that cannot be parsed selects every pod of the
namespace and keeps no rule (isolated, nothing allowed).  Nothing invalid
ever widens what is allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Labels = tuple[tuple[str, str], ...]

PROTOCOLS = ("TCP", "UDP", "SCTP")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


class Direction(Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


@dataclass(frozen=True, slots=True)
class Problem:
    """A part of an object that cannot be enforced as written."""

    kind: str
    namespace: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector; the empty selector matches everything."""

    match_labels: Labels = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.expressions
        )


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, addr: IPAddress) -> bool:
        return (
            addr.version == self.cidr.version
            and addr in self.cidr
            and not any(addr in e for e in self.excepts if e.version == addr.version)
        )


@dataclass(frozen=True, slots=True)
class Peer:
    """One ``from``/``to`` entry: selectors (None = not restricting) or an ipBlock."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port entry: protocol only, a number/range, or a name resolved on the destination."""

    protocol: str
    port: int | None = None
    end_port: int | None = None
    name: str | None = None

    @property
    def last(self) -> int | None:
        return self.end_port if self.end_port is not None else self.port


@dataclass(frozen=True, slots=True)
class Rule:
    """Peers ORed, ports ORed, the two ANDed; an empty tuple means "any"."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector
    types: frozenset[Direction]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Labels = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: Labels = ()
    ips: tuple[IPAddress, ...] = ()
    host_network: bool = False
    phase: str = "Running"
    node_name: str = ""
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def actionable(self) -> bool:
        """Whether policy sees this pod: it has an IP, is not hostNetwork, is not finished."""
        return bool(self.ips) and not self.host_network and self.phase not in FINISHED_PHASES

    def resolve(self, name: str, protocol: str) -> int | None:
        for cp in self.ports:
            if cp.name == name and cp.protocol == protocol:
                return cp.port
        return None


@dataclass(frozen=True, slots=True)
class Cluster:
    """Everything the policy decision depends on."""

    policies: tuple[Policy, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    _ns: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)
    _pods_by_ns: dict[str, list[Pod]] = field(default_factory=dict, compare=False, repr=False)
    _policies_by_ns: dict[str, list[Policy]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _labels: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for ns in self.namespaces:
            self._ns[ns.name] = ns.label_map
        for pod in self.pods:
            if pod.actionable:
                self._pods_by_ns.setdefault(pod.namespace, []).append(pod)
                self._labels[pod.key] = pod.label_map
        for policy in self.policies:
            self._policies_by_ns.setdefault(policy.namespace, []).append(policy)

    def labels_of(self, pod: Pod) -> dict[str, str]:
        """A pod's labels as a dict (built once per Cluster)."""
        found = self._labels.get(pod.key)
        return found if found is not None else pod.label_map

    def pod_namespaces(self) -> list[str]:
        """Namespaces that hold actionable pods."""
        return list(self._pods_by_ns)

    def pods_in(self, namespace: str) -> list[Pod]:
        """Actionable pods of one namespace."""
        return self._pods_by_ns.get(namespace, [])

    def policies_in(self, namespace: str) -> list[Policy]:
        return self._policies_by_ns.get(namespace, [])

    def namespaces_matching(self, selector: Selector) -> list[str]:
        """Namespaces with actionable pods whose labels ``selector`` matches."""
        return [ns for ns in self._pods_by_ns if selector.matches(self.namespace_labels(ns))]

    def namespace_labels(self, name: str) -> dict[str, str]:
        """Labels of a namespace; an unknown namespace still has its name label."""
        return self._ns.get(name, {NAMESPACE_NAME_LABEL: name})

    def actionable_pods(self) -> Iterable[Pod]:
        return (p for p in self.pods if p.actionable)

    def pod_by_ip(self, addr: IPAddress) -> Pod | None:
        for pod in self.actionable_pods():
            if addr in pod.ips:
                return pod
        return None


# --- selection (shared by the oracle and the ruleset builder) -----------------


def selects(policy: Policy, pod: Pod) -> bool:
    return pod.namespace == policy.namespace and policy.pod_selector.matches(pod.label_map)


def applying(cluster: Cluster, pod: Pod, direction: Direction) -> list[Policy]:
    """Policies that isolate ``pod`` in ``direction`` (empty: not isolated)."""
    if not pod.actionable:
        return []
    labels = pod.label_map
    return [
        p for p in cluster.policies_in(pod.namespace)
        if direction in p.types and p.pod_selector.matches(labels)
    ]


def peer_scopes(cluster: Cluster, policy: Policy, peers: Iterable[Peer]) -> tuple[
    tuple[str, ...], ...
]:
    """Per selector peer, the namespaces whose pods it may select."""
    return tuple(
        (policy.namespace,) if peer.namespace_selector is None
        else tuple(cluster.namespaces_matching(peer.namespace_selector))
        for peer in peers if peer.ip_block is None
    )


def peer_selects_pod(cluster: Cluster, policy: Policy, peer: Peer, pod: Pod) -> bool:
    """Whether a selector peer matches ``pod`` (ipBlock peers are matched by address)."""
    if peer.ip_block is not None or not pod.actionable:
        return False
    if peer.namespace_selector is None:
        if pod.namespace != policy.namespace:
            return False
    elif not peer.namespace_selector.matches(cluster.namespace_labels(pod.namespace)):
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(pod.label_map)


# --- the oracle ---------------------------------------------------------------


def allowed(cluster: Cluster, src: IPAddress, dst: IPAddress, port: int, protocol: str) -> bool:
    """Decision procedure of section 1.8 for a new connection src -> dst:port/protocol.

    Addresses that are no actionable pod's are not isolated (and never match a
    selector).  Node-to-local-pod traffic and replies are outside this function.
    """
    src_pod, dst_pod = cluster.pod_by_ip(src), cluster.pod_by_ip(dst)
    return _side_ok(cluster, src_pod, Direction.EGRESS, dst, dst_pod, port, protocol) and (
        _side_ok(cluster, dst_pod, Direction.INGRESS, src, src_pod, port, protocol)
    )


def _side_ok(
    cluster: Cluster,
    pod: Pod | None,
    direction: Direction,
    other: IPAddress,
    other_pod: Pod | None,
    port: int,
    protocol: str,
) -> bool:
    if pod is None:
        return True
    policies = applying(cluster, pod, direction)
    if not policies:
        return True
    dst_pod = pod if direction is Direction.INGRESS else other_pod
    return any(
        _peers_ok(cluster, p, r, other, other_pod) and _ports_ok(r, dst_pod, port, protocol)
        for p in policies
        for r in p.rules(direction)
    )


def _peers_ok(
    cluster: Cluster, policy: Policy, rule: Rule, other: IPAddress, other_pod: Pod | None
) -> bool:
    if not rule.peers:
        return True
    for peer in rule.peers:
        if peer.ip_block is not None:
            if peer.ip_block.contains(other):
                return True
        elif other_pod is not None and peer_selects_pod(cluster, policy, peer, other_pod):
            return True
    return False


def _ports_ok(rule: Rule, dst_pod: Pod | None, port: int, protocol: str) -> bool:
    if not rule.ports:
        return True
    for spec in rule.ports:
        if spec.protocol != protocol:
            continue
        if spec.name is not None:
            if dst_pod is not None and dst_pod.resolve(spec.name, protocol) == port:
                return True
        elif spec.port is None or spec.port <= port <= (spec.last or spec.port):
            return True
    return False


# --- parsing --------------------------------------------------------------------


class _Reporter:
    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.problems: list[Problem] = []

    def __call__(self, reason: str) -> None:
        self.problems.append(Problem(self.kind, self.namespace, self.name, reason))


def _meta(obj: Mapping[str, Any]) -> tuple[str, str, Labels] | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, namespace = meta.get("name"), meta.get("namespace") or ""
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return namespace, name, _labels(meta.get("labels"))


def _labels(raw: object) -> Labels:
    if not isinstance(raw, Mapping):
        return ()
    return tuple(sorted((k, v) for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)))


def parse_selector(raw: object, where: str, report: _Reporter) -> Selector | None:
    """A label selector; None (with a problem) when it cannot be read."""
    if raw is None:
        return Selector()
    if not isinstance(raw, Mapping):
        report(f"{where}: selector is not an object")
        return None
    labels = raw.get("matchLabels") or {}
    exprs = raw.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(exprs, list):
        report(f"{where}: malformed matchLabels/matchExpressions")
        return None
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in labels.items()):
        report(f"{where}: matchLabels values must be strings")
        return None
    reqs = []
    for expr in exprs:
        req = _requirement(expr)
        if req is None:
            report(f"{where}: unsupported matchExpressions entry {expr!r}")
            return None
        reqs.append(req)
    return Selector(tuple(sorted(labels.items())), tuple(reqs))


def _requirement(expr: object) -> Requirement | None:
    if not isinstance(expr, Mapping):
        return None
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if not isinstance(key, str) or not isinstance(values, list):
        return None
    if any(not isinstance(v, str) for v in values):
        return None
    if op in ("In", "NotIn") and values:
        return Requirement(key, op, frozenset(values))
    if op in ("Exists", "DoesNotExist") and not values:
        return Requirement(key, op)
    return None


def _network(raw: object) -> IPNetwork | None:
    if not isinstance(raw, str):
        return None
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        return None


def _peer(raw: object, where: str, report: _Reporter) -> Peer | None:
    if not isinstance(raw, Mapping):
        report(f"{where}: peer is not an object")
        return None
    block = raw.get("ipBlock")
    has_sel = raw.get("podSelector") is not None or raw.get("namespaceSelector") is not None
    if block is not None:
        if has_sel:
            report(f"{where}: ipBlock combined with a selector")
            return None
        return _ip_block(block, where, report)
    if not has_sel:
        report(f"{where}: peer names no podSelector, namespaceSelector or ipBlock")
        return None
    pod_sel = ns_sel = None
    if raw.get("podSelector") is not None:
        pod_sel = parse_selector(raw["podSelector"], f"{where}.podSelector", report)
        if pod_sel is None:
            return None
    if raw.get("namespaceSelector") is not None:
        ns_sel = parse_selector(raw["namespaceSelector"], f"{where}.namespaceSelector", report)
        if ns_sel is None:
            return None
    return Peer(pod_selector=pod_sel, namespace_selector=ns_sel)


def _ip_block(raw: object, where: str, report: _Reporter) -> Peer | None:
    if not isinstance(raw, Mapping):
        report(f"{where}: ipBlock is not an object")
        return None
    cidr = _network(raw.get("cidr"))
    if cidr is None:
        report(f"{where}: ipBlock cidr {raw.get('cidr')!r} is not a network")
        return None
    excepts_raw = raw.get("except") or []
    if not isinstance(excepts_raw, list):
        report(f"{where}: ipBlock except is not a list")
        return None
    excepts = []
    for e in excepts_raw:
        net = _network(e)
        if net is None or net.version != cidr.version:
            # an except that cannot be read would widen the block: drop the peer
            report(f"{where}: ipBlock except {e!r} is not a network of the cidr's family")
            return None
        excepts.append(net)
    return Peer(ip_block=IPBlock(cidr, tuple(excepts)))


def _port(raw: object, where: str, report: _Reporter) -> PortSpec | None:
    if not isinstance(raw, Mapping):
        report(f"{where}: port entry is not an object")
        return None
    proto = raw.get("protocol") or "TCP"
    if proto not in PROTOCOLS:
        report(f"{where}: protocol {proto!r} is not TCP, UDP or SCTP")
        return None
    port, end = raw.get("port"), raw.get("endPort")
    if port is None:
        if end is not None:
            report(f"{where}: endPort without port")
            return None
        return PortSpec(proto)
    if isinstance(port, str) and not port.isdigit():
        if end is not None:
            report(f"{where}: endPort with the named port {port!r}")
            return None
        return PortSpec(proto, name=port)
    number = int(port) if isinstance(port, (int, str)) and not isinstance(port, bool) else -1
    if not 1 <= number <= 65535:
        report(f"{where}: port {port!r} out of range")
        return None
    if end is None:
        return PortSpec(proto, number)
    if isinstance(end, bool) or not isinstance(end, int) or not number <= end <= 65535:
        report(f"{where}: endPort {end!r} is not in [{number}, 65535]")
        return None
    return PortSpec(proto, number, end)


def _rule(raw: object, peer_key: str, where: str, report: _Reporter) -> Rule | None:
    if not isinstance(raw, Mapping):
        report(f"{where}: rule is not an object; it allows nothing")
        return None
    peers_raw, ports_raw = raw.get(peer_key) or [], raw.get("ports") or []
    if not isinstance(peers_raw, list) or not isinstance(ports_raw, list):
        report(f"{where}: {peer_key}/ports is not a list; the rule allows nothing")
        return None
    peers = [_peer(p, f"{where}.{peer_key}[{i}]", report) for i, p in enumerate(peers_raw)]
    ports = [_port(p, f"{where}.ports[{i}]", report) for i, p in enumerate(ports_raw)]
    kept_peers = tuple(p for p in peers if p is not None)
    kept_ports = tuple(p for p in ports if p is not None)
    if (peers_raw and not kept_peers) or (ports_raw and not kept_ports):
        report(f"{where}: no usable {peer_key if peers_raw and not kept_peers else 'ports'} entry; "
               "the rule allows nothing")
        return None
    return Rule(kept_peers, kept_ports)


def parse_policy(obj: Mapping[str, Any]) -> tuple[Policy | None, list[Problem]]:
    """A NetworkPolicy object as a :class:`Policy`, defaulted; problems alongside."""
    meta = _meta(obj)
    if meta is None:
        return None, [Problem("NetworkPolicy", "", "", "no metadata.name")]
    namespace, name, _ = meta
    report = _Reporter("NetworkPolicy", namespace, name)
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        report("spec is not an object; the policy isolates its namespace and allows nothing")
        spec = {"policyTypes": ["Ingress", "Egress"]}
    ingress_raw, egress_raw = spec.get("ingress") or [], spec.get("egress") or []
    types_raw = spec.get("policyTypes") or ["Ingress"] + (["Egress"] if egress_raw else [])
    types = frozenset(Direction(t) for t in types_raw if t in ("Ingress", "Egress"))
    if not isinstance(types_raw, list) or len(types) != len(set(types_raw)):
        report(f"policyTypes {types_raw!r} holds unknown entries; isolating both directions")
        types = frozenset(Direction)
    selector = parse_selector(spec.get("podSelector"), "podSelector", report)
    if selector is None:
        report("unusable podSelector: isolating every pod of the namespace, allowing nothing")
        return Policy(namespace, name, Selector(), types), report.problems
    rules: dict[Direction, tuple[Rule, ...]] = {}
    for direction, raw, key in (
        (Direction.INGRESS, ingress_raw, "from"),
        (Direction.EGRESS, egress_raw, "to"),
    ):
        field_name = direction.value.lower()
        if not isinstance(raw, list):
            report(f"{field_name} is not a list; it allows nothing")
            raw = []
        parsed = (_rule(r, key, f"{field_name}[{i}]", report) for i, r in enumerate(raw))
        rules[direction] = tuple(r for r in parsed if r is not None)
    policy = Policy(
        namespace, name, selector, types, rules[Direction.INGRESS], rules[Direction.EGRESS]
    )
    return policy, report.problems


def parse_namespace(obj: Mapping[str, Any]) -> tuple[Namespace | None, list[Problem]]:
    meta = _meta(obj)
    if meta is None:
        return None, [Problem("Namespace", "", "", "no metadata.name")]
    _, name, labels = meta
    merged = dict(labels)
    merged[NAMESPACE_NAME_LABEL] = name
    return Namespace(name, tuple(sorted(merged.items()))), []


def parse_pod(obj: Mapping[str, Any]) -> tuple[Pod | None, list[Problem]]:
    meta = _meta(obj)
    if meta is None:
        return None, [Problem("Pod", "", "", "no metadata.name")]
    namespace, name, labels = meta
    report = _Reporter("Pod", namespace, name)
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    assert isinstance(spec, Mapping) and isinstance(status, Mapping)
    raw_ips = [e.get("ip") for e in status.get("podIPs") or [] if isinstance(e, Mapping)]
    if not raw_ips and status.get("podIP"):
        raw_ips = [status.get("podIP")]
    ips: list[IPAddress] = []
    for raw in raw_ips:
        try:
            ips.append(ipaddress.ip_address(raw) if isinstance(raw, str) else _bad(raw))
        except ValueError:
            report(f"pod IP {raw!r} is not an address; skipped")
    ports = []
    for container in spec.get("containers") or []:
        for cp in (container.get("ports") or []) if isinstance(container, Mapping) else []:
            if not isinstance(cp, Mapping) or not cp.get("name"):
                continue
            number, proto = cp.get("containerPort"), cp.get("protocol") or "TCP"
            if isinstance(number, int) and 1 <= number <= 65535 and proto in PROTOCOLS:
                ports.append(ContainerPort(str(cp["name"]), number, proto))
            else:
                report(f"containerPort {cp!r} unusable; its name resolves nowhere")
    pod = Pod(
        namespace,
        name,
        labels,
        tuple(ips),
        host_network=bool(spec.get("hostNetwork")),
        phase=str(status.get("phase") or "Pending"),
        node_name=str(spec.get("nodeName") or ""),
        ports=tuple(ports),
    )
    return pod, report.problems


def _bad(raw: object) -> IPAddress:
    raise ValueError(raw)
