"""The desired nftables ruleset for NetworkPolicy on one node (pure).

Interface: :func:`desired_ruleset` ``(cluster, node, cache=None) -> Desired`` where
``node`` is a :class:`LocalNode` (this node's name and pod CIDRs: a pod is
local when its ``nodeName`` is ours or one of its IPs lies in our CIDRs) and
``cache`` an optional :class:`PeerCache` kept across builds (same result,
less work: a pod change recomputes its own namespace only).
:func:`render` gives the ``nft -f -`` script that replaces our table in one
transaction; :func:`observe` + :func:`plan` give the smaller script that
moves a table from what it is to what it should be (set and map elements
only, when only pods changed); :func:`verdict` evaluates a ruleset for one
new packet, so tests can compare the structure with
:func:`flanneld.netpol.model.allowed` without a kernel.

Shape (``networkpolicy.md`` section 4), all in ``table inet pyflannel-policy``:

* ``egress_hook`` and ``ingress_hook`` on the forward hook (priority -10 and
  -5), policy accept: ``ct state established,related accept``, then a verdict
  map keyed by local pod address (``egress4``/``egress6`` on the source,
  ``ingress4``/``ingress6`` on the destination).  Host traffic to a local pod
  goes through ``output`` and pod-to-own-node traffic through ``input``: both
  are left alone, which is the "local node always allowed" rule.  Pods that
  no policy isolates in a direction have no map element: default allow.
* ``iso_{in,out}_<hash>``: one chain per distinct combination of applying
  policies (pods isolated by the same policies share it): ``ct state invalid
  drop``, one jump per policy chain, then ``counter reject``.  Its counter is
  the drop count of every policy in the combination.
* ``pol_<hash>_{in,out}``: one chain per policy direction; each rule of the
  policy becomes (peer alternatives x port alternatives) nft rules ending in
  ``accept``.  Selector peers of a rule share one address set per family
  ``peers_<hash>_{4,6}`` (content addressed: equal selectors in one namespace
  share a set); ipBlocks are written inline (``ip daddr 10.0.0.0/8 ip daddr
  != { ... }``); named ports use one set per (name, protocol) and family,
  ``np_<hash>_{4,6}`` of ``pod address . protocol . port`` over every pod, so
  the name is resolved on the destination pod.

The first rule of every chain carries a comment with a hash of the chain's
rules: reading the table back (``nft -j list table``) is enough to tell which
chains differ, without parsing rules.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flanneld.netpol.model import (
    Cluster,
    Direction,
    IPAddress,
    IPNetwork,
    Peer,
    Pod,
    Policy,
    Problem,
    Rule,
    Selector,
    applying,
    peer_scopes,
)

FAMILIES = (4, 6)
EGRESS_HOOK, INGRESS_HOOK = "egress_hook", "ingress_hook"
_ADDR = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_DIR = {Direction.INGRESS: "in", Direction.EGRESS: "out"}


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


# --- matches and verdicts -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet seen at the forward hook (for :func:`verdict`)."""

    src: IPAddress
    dst: IPAddress
    protocol: str  # TCP, UDP, SCTP
    dport: int
    state: str = "new"  # new, established, related, invalid

    def addr(self, which: str) -> IPAddress:
        return self.src if which == "saddr" else self.dst


@dataclass(frozen=True, slots=True)
class CtState:
    states: tuple[str, ...]

    def text(self) -> str:
        return f"ct state {','.join(self.states)}"

    def holds(self, pkt: Packet, sets: Mapping[str, NftSet]) -> bool:
        return pkt.state in self.states


@dataclass(frozen=True, slots=True)
class AddrInSet:
    family: int
    which: str  # saddr / daddr
    set_name: str

    def text(self) -> str:
        return f"{_ADDR[self.family]} {self.which} @{self.set_name}"

    def holds(self, pkt: Packet, sets: Mapping[str, NftSet]) -> bool:
        addr = pkt.addr(self.which)
        return addr.version == self.family and str(addr) in sets[self.set_name].elements


@dataclass(frozen=True, slots=True)
class AddrInBlock:
    family: int
    which: str
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def text(self) -> str:
        head = f"{_ADDR[self.family]} {self.which} {self.cidr}"
        if not self.excepts:
            return head
        inner = ", ".join(str(n) for n in self.excepts)
        return f"{head} {_ADDR[self.family]} {self.which} != {{ {inner} }}"

    def holds(self, pkt: Packet, sets: Mapping[str, NftSet]) -> bool:
        addr = pkt.addr(self.which)
        return (
            addr.version == self.family
            and addr in self.cidr
            and not any(addr in n for n in self.excepts)
        )


@dataclass(frozen=True, slots=True)
class L4Proto:
    protocol: str

    def text(self) -> str:
        return f"meta l4proto {self.protocol.lower()}"

    def holds(self, pkt: Packet, sets: Mapping[str, NftSet]) -> bool:
        return pkt.protocol == self.protocol


@dataclass(frozen=True, slots=True)
class DPorts:
    protocol: str
    ranges: tuple[tuple[int, int], ...]

    def text(self) -> str:
        items = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges)
        return f"{self.protocol.lower()} dport {{ {items} }}"

    def holds(self, pkt: Packet, sets: Mapping[str, NftSet]) -> bool:
        return pkt.protocol == self.protocol and any(a <= pkt.dport <= b for a, b in self.ranges)


@dataclass(frozen=True, slots=True)
class NamedPorts:
    family: int
    set_name: str

    def text(self) -> str:
        return f"{_ADDR[self.family]} daddr . meta l4proto . th dport @{self.set_name}"

    def holds(self, pkt: Packet, sets: Mapping[str, NftSet]) -> bool:
        key = named_port_element(pkt.dst, pkt.protocol, pkt.dport)
        return pkt.dst.version == self.family and key in sets[self.set_name].elements


Match = CtState | AddrInSet | AddrInBlock | L4Proto | DPorts | NamedPorts


@dataclass(frozen=True, slots=True)
class Vmap:
    family: int
    which: str
    map_name: str

    def text(self) -> str:
        return f"{_ADDR[self.family]} {self.which} vmap @{self.map_name}"


@dataclass(frozen=True, slots=True)
class NftRule:
    matches: tuple[Match, ...]
    verdict: str | Vmap  # accept, drop, reject, "jump <chain>", or a verdict map

    def text(self) -> str:
        parts = [m.text() for m in self.matches]
        if isinstance(self.verdict, Vmap):
            parts.append(self.verdict.text())
        elif self.verdict == "reject":
            parts.append("counter reject with icmpx admin-prohibited")
        else:
            parts.append(self.verdict)
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class NftSet:
    name: str
    family: int
    named_ports: bool = False
    elements: frozenset[str] = frozenset()

    @property
    def type(self) -> str:
        base = _ADDR_TYPE[self.family]
        return f"{base} . inet_proto . inet_service" if self.named_ports else base


@dataclass(frozen=True, slots=True)
class NftMap:
    """A verdict map: local pod address -> ``jump <iso chain>``."""

    name: str
    family: int
    elements: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...] = ()
    hook: str | None = None
    priority: int = 0

    @property
    def fingerprint(self) -> str:
        return _hash(self.hook, self.priority, tuple(r.text() for r in self.rules))

    def rule_texts(self) -> list[str]:
        """Rules as nft text, the first one carrying the fingerprint comment."""
        texts = [r.text() for r in self.rules]
        if texts:
            texts[0] += f' comment "fp={self.fingerprint}"'
        return texts


@dataclass(frozen=True, slots=True)
class Ruleset:
    sets: tuple[NftSet, ...] = ()
    maps: tuple[NftMap, ...] = ()
    chains: tuple[NftChain, ...] = ()

    def set_map(self) -> dict[str, NftSet]:
        return {s.name: s for s in self.sets}

    def chain_map(self) -> dict[str, NftChain]:
        return {c.name: c for c in self.chains}

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains)


@dataclass(frozen=True, slots=True)
class LocalNode:
    name: str
    pod_cidrs: tuple[IPNetwork, ...] = ()

    def owns(self, pod: Pod) -> bool:
        if self.name and pod.node_name == self.name:
            return True
        return any(ip in net for ip in pod.ips for net in self.pod_cidrs if ip.version == net.version)


@dataclass(frozen=True, slots=True)
class Desired:
    ruleset: Ruleset
    problems: tuple[Problem, ...] = ()
    # iso chain name -> keys (ns/name) of the policies whose drops it counts
    drop_owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    policy_count: int = 0


def named_port_element(addr: IPAddress, protocol: str, port: int) -> str:
    return f"{addr} . {protocol.lower()} . {port}"


# --- building -------------------------------------------------------------------


class PeerCache:
    """Per-namespace work remembered across builds (the controller keeps one).

    Entries are keyed by (pod selector, namespace) for peer pods, by (port
    name, protocol, namespace) for named ports and by (pod, direction) for the
    policies isolating a local pod.  One is reused while its namespace holds
    the very same Pod (and, for the last kind, Policy) objects as at the last
    build: the policy store replaces a value only when the object changes, so
    a pod relabel recomputes the entries of its own namespace and that pod's
    own isolation only.  Each namespace is compared once per build, with the
    objects the last build saw (kept here, so their ids cannot be reused).
    Entries no build used are dropped after each build, so every entry left
    was computed or confirmed by the last build.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._entries: dict[tuple[object, ...], Any] = {}
        self._used: set[tuple[object, ...]] = set()
        # (pod key, direction) -> (that Pod object, the policies isolating it, sorted)
        self._isolating: dict[tuple[str, Direction], tuple[Pod, tuple[Policy, ...]]] = {}
        self._isolating_used: set[tuple[str, Direction]] = set()
        self._seen: dict[tuple[str, str], tuple[object, ...]] = {}  # as of the last build
        self._same: dict[tuple[str, str], bool] = {}  # compared in this build
        self._building = False

    def begin_build(self) -> None:
        """Start a build; forget everything when the last one did not end (it raised)."""
        if self._building:
            self._reset()
        self._building = True

    def _unchanged(self, kind: str, ns: str, current: Sequence[object]) -> bool:
        """Whether ``ns`` holds the very ``kind`` objects ("pods", "policies") of the
        last build; records ``current`` for the next one."""
        key = (kind, ns)
        same = self._same.get(key)
        if same is None:
            before = self._seen.get(key)
            same = before is not None and len(before) == len(current) and all(
                a is b for a, b in zip(before, current, strict=True)
            )
            self._seen[key] = tuple(current)
            self._same[key] = same
        return same

    def isolating(self, cluster: Cluster, pod: Pod, direction: Direction) -> tuple[Policy, ...]:
        """:func:`applying`, sorted by policy key."""
        key = (pod.key, direction)
        self._isolating_used.add(key)
        same = self._unchanged("policies", pod.namespace, cluster.policies_in(pod.namespace))
        hit = self._isolating.get(key)
        if same and hit is not None and hit[0] is pod:
            return hit[1]
        value = tuple(sorted(applying(cluster, pod, direction), key=lambda p: p.key))
        self._isolating[key] = (pod, value)
        return value

    def _per_namespace(
        self, cluster: Cluster, key: tuple[object, ...], ns: str, compute: Callable[[], Any]
    ) -> Any:
        self._used.add(key)
        if self._unchanged("pods", ns, cluster.pods_in(ns)) and key in self._entries:
            return self._entries[key]
        value = compute()
        self._entries[key] = value
        return value

    def pods(self, cluster: Cluster, policy: Policy, peers: Sequence[Peer]) -> list[Pod]:
        """Actionable pods any selector peer of ``policy`` matches."""
        selector_peers = [p for p in peers if p.ip_block is None]
        found: dict[str, Pod] = {}
        for peer, namespaces in zip(selector_peers, peer_scopes(cluster, policy, selector_peers),
                                    strict=True):
            selector = peer.pod_selector
            for ns in namespaces:
                def match(ns: str = ns, selector: Selector | None = selector) -> list[Pod]:
                    return [p for p in cluster.pods_in(ns)
                            if selector is None or selector.matches(cluster.labels_of(p))]
                for pod in self._per_namespace(cluster, ("sel", selector, ns), ns, match):
                    found[pod.key] = pod
        return list(found.values())

    def named(self, cluster: Cluster, name: str, protocol: str) -> dict[int, set[str]]:
        """Named-port set elements per family: every pod with ``name``/``protocol``."""
        elements: dict[int, set[str]] = {4: set(), 6: set()}
        for ns in cluster.pod_namespaces():
            def resolve(ns: str = ns) -> list[tuple[int, str]]:
                out: list[tuple[int, str]] = []
                for pod in cluster.pods_in(ns):
                    number = pod.resolve(name, protocol)
                    if number is not None:
                        out += [(ip.version, named_port_element(ip, protocol, number))
                                for ip in pod.ips]
                return out
            for version, element in self._per_namespace(
                cluster, ("np", name, protocol, ns), ns, resolve
            ):
                elements[version].add(element)
        return elements

    def end_build(self) -> None:
        for key in set(self._entries) - self._used:
            del self._entries[key]
        self._used = set()
        for pod_key in set(self._isolating) - self._isolating_used:
            del self._isolating[pod_key]
        self._isolating_used = set()
        self._seen = {key: self._seen[key] for key in self._same}
        self._same = {}
        self._building = False


class _Builder:
    def __init__(self, cluster: Cluster, cache: PeerCache) -> None:
        self.cluster = cluster
        self.cache = cache
        self.sets: dict[str, NftSet] = {}
        self.problems: list[Problem] = []

    def peer_set(self, policy: Policy, peers: Sequence[Peer]) -> str:
        base = "peers_" + _hash(policy.namespace, peers)
        if base + "_4" not in self.sets:
            pods = self.cache.pods(self.cluster, policy, peers)
            self._add_address_sets(base, (ip for pod in pods for ip in pod.ips))
        return base

    def named_set(self, policy: Policy, name: str, protocol: str) -> str:
        base = "np_" + _hash(name, protocol)
        if base + "_4" not in self.sets:
            elements = self.cache.named(self.cluster, name, protocol)
            for fam in FAMILIES:
                self.sets[f"{base}_{fam}"] = NftSet(
                    f"{base}_{fam}", fam, True, frozenset(elements[fam])
                )
        if not any(self.sets[f"{base}_{fam}"].elements for fam in FAMILIES):
            self.problems.append(
                Problem(
                    "NetworkPolicy", policy.namespace, policy.name,
                    f"named port {name!r}/{protocol} resolves on no pod; it matches nothing",
                )
            )
        return base

    def _add_address_sets(self, base: str, ips: Iterable[IPAddress]) -> None:
        by_family: dict[int, set[str]] = {4: set(), 6: set()}
        for ip in ips:
            by_family[ip.version].add(str(ip))
        for fam in FAMILIES:
            self.sets[f"{base}_{fam}"] = NftSet(f"{base}_{fam}", fam, False, frozenset(by_family[fam]))

    def policy_chain(self, policy: Policy, direction: Direction) -> NftChain:
        which = "saddr" if direction is Direction.INGRESS else "daddr"
        rules: list[NftRule] = []
        for rule in policy.rules(direction):
            peer_alts = self._peer_alternatives(policy, rule, which)
            port_alts = self._port_alternatives(policy, rule)
            for peer_fam, peer_matches in peer_alts:
                for port_fam, port_matches in port_alts:
                    if peer_fam and port_fam and peer_fam != port_fam:
                        continue
                    rules.append(NftRule((*peer_matches, *port_matches), "accept"))
        return NftChain(policy_chain_name(policy, direction), tuple(_unique(rules)))

    def _peer_alternatives(
        self, policy: Policy, rule: Rule, which: str
    ) -> list[tuple[int, tuple[Match, ...]]]:
        """(family or 0 for both, matches): ORed ways the other end can match."""
        if not rule.peers:
            return [(0, ())]
        alts: list[tuple[int, tuple[Match, ...]]] = []
        selector_peers = [p for p in rule.peers if p.ip_block is None]
        if selector_peers:
            base = self.peer_set(policy, selector_peers)
            alts += [(fam, (AddrInSet(fam, which, f"{base}_{fam}"),)) for fam in FAMILIES]
        for peer in rule.peers:
            if peer.ip_block is not None:
                block = peer.ip_block
                excepts = tuple(ipaddress.collapse_addresses(block.excepts))  # type: ignore[type-var]
                inside = tuple(n for n in excepts if n.overlaps(block.cidr))
                fam = block.cidr.version
                alts.append((fam, (AddrInBlock(fam, which, block.cidr, inside),)))
        return alts

    def _port_alternatives(
        self, policy: Policy, rule: Rule
    ) -> list[tuple[int, tuple[Match, ...]]]:
        if not rule.ports:
            return [(0, ())]
        alts: list[tuple[int, tuple[Match, ...]]] = []
        whole = {p.protocol for p in rule.ports if p.port is None and p.name is None}
        ranges: dict[str, set[tuple[int, int]]] = {}
        named: set[tuple[str, str]] = set()
        for spec in rule.ports:
            if spec.protocol in whole:
                continue
            if spec.name is not None:
                named.add((spec.name, spec.protocol))
            elif spec.port is not None:
                ranges.setdefault(spec.protocol, set()).add((spec.port, spec.last or spec.port))
        alts += [(0, (L4Proto(proto),)) for proto in sorted(whole)]
        alts += [(0, (DPorts(proto, _merge(r)),)) for proto, r in sorted(ranges.items())]
        for name, proto in sorted(named):
            base = self.named_set(policy, name, proto)
            alts += [(fam, (NamedPorts(fam, f"{base}_{fam}"),)) for fam in FAMILIES]
        return alts


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, non-overlapping port ranges (nft rejects overlapping set intervals)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _unique(rules: Iterable[NftRule]) -> list[NftRule]:
    return list(dict.fromkeys(rules))


def policy_chain_name(policy: Policy, direction: Direction) -> str:
    return f"pol_{_hash(policy.namespace, policy.name)}_{_DIR[direction]}"


def map_name(direction: Direction, family: int) -> str:
    return f"{'ingress' if direction is Direction.INGRESS else 'egress'}{family}"


def base_chains() -> tuple[NftChain, ...]:
    chains = []
    for name, direction, which, prio in (
        (EGRESS_HOOK, Direction.EGRESS, "saddr", -10),
        (INGRESS_HOOK, Direction.INGRESS, "daddr", -5),
    ):
        rules = [NftRule((CtState(("established", "related")),), "accept")]
        rules += [NftRule((), Vmap(fam, which, map_name(direction, fam))) for fam in FAMILIES]
        chains.append(NftChain(name, tuple(rules), "forward", prio))
    return tuple(chains)


def desired_ruleset(cluster: Cluster, node: LocalNode, cache: PeerCache | None = None) -> Desired:
    """The whole ruleset this node should hold for ``cluster``.

    ``cache`` (kept by the caller across builds) only saves work: the result
    is the same with or without it.
    """
    peer_cache = cache if cache is not None else PeerCache()
    peer_cache.begin_build()
    builder = _Builder(cluster, peer_cache)
    policy_chains: dict[str, NftChain] = {}
    iso_chains: dict[str, NftChain] = {}
    owners: dict[str, tuple[str, ...]] = {}
    map_elements: dict[str, set[tuple[str, str]]] = {
        map_name(d, f): set() for d in Direction for f in FAMILIES
    }
    for pod in sorted(cluster.actionable_pods(), key=lambda p: p.key):
        if not node.owns(pod):
            continue
        for direction in Direction:
            policies = peer_cache.isolating(cluster, pod, direction)
            if not policies:
                continue
            names = []
            for policy in policies:
                name = policy_chain_name(policy, direction)
                if name not in policy_chains:
                    policy_chains[name] = builder.policy_chain(policy, direction)
                names.append(name)
            iso = f"iso_{_DIR[direction]}_{_hash(names)}"
            if iso not in iso_chains:
                rules = [NftRule((CtState(("invalid",)),), "drop")]
                rules += [NftRule((), f"jump {n}") for n in names]
                rules.append(NftRule((), "reject"))
                iso_chains[iso] = NftChain(iso, tuple(rules))
                owners[iso] = tuple(p.key for p in policies)
            for ip in pod.ips:
                map_elements[map_name(direction, ip.version)].add((str(ip), iso))
    maps = tuple(
        NftMap(name, int(name[-1]), frozenset(elems)) for name, elems in sorted(map_elements.items())
    )
    chains = (
        *sorted(policy_chains.values(), key=lambda c: c.name),
        *sorted(iso_chains.values(), key=lambda c: c.name),
        *base_chains(),
    )
    ruleset = Ruleset(tuple(sorted(builder.sets.values(), key=lambda s: s.name)), maps, chains)
    peer_cache.end_build()
    return Desired(ruleset, tuple(dict.fromkeys(builder.problems)), owners, len(cluster.policies))


# --- evaluation (for tests: the structure's verdict, no kernel) -----------------


def verdict(ruleset: Ruleset, pkt: Packet) -> bool:
    """Whether the forward hook accepts ``pkt`` under ``ruleset``."""
    sets, chains = ruleset.set_map(), ruleset.chain_map()
    maps = {m.name: dict(m.elements) for m in ruleset.maps}
    hooks = sorted((c for c in ruleset.chains if c.hook == "forward"), key=lambda c: c.priority)
    return all(_run(chains[c.name], pkt, sets, chains, maps) != "drop" for c in hooks)


def _run(
    chain: NftChain,
    pkt: Packet,
    sets: Mapping[str, NftSet],
    chains: Mapping[str, NftChain],
    maps: Mapping[str, Mapping[str, str]],
) -> str | None:
    for rule in chain.rules:
        if not all(m.holds(pkt, sets) for m in rule.matches):
            continue
        target: str | None = None
        if isinstance(rule.verdict, Vmap):
            addr = pkt.addr(rule.verdict.which)
            if addr.version == rule.verdict.family:
                target = maps[rule.verdict.map_name].get(str(addr))
            if target is None:
                continue
        elif rule.verdict.startswith("jump "):
            target = rule.verdict.removeprefix("jump ")
        elif rule.verdict == "accept":
            return "accept"
        else:
            return "drop"
        result = _run(chains[target], pkt, sets, chains, maps)
        if result is not None:
            return result
    return None
