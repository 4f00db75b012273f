"""nft scripts for the policy table: full replace, and a diff from what the kernel holds (pure).

* :func:`render` is the full script: ``add table`` + ``delete table`` + the
  whole table, one transaction, so the old rules stay until the new ones are
  in (no open window, also across a restart).
* :func:`observe` turns ``nft -j list table inet pyflannel-policy`` output
  into an :class:`Observed`; :func:`expected` gives the :class:`Observed` a
  ruleset should read back as.  :func:`plan` (observed, desired) is the
  script that makes the kernel equal to desired, "" when it already is: set
  and map elements added/deleted, chains added, changed chains flushed and
  refilled, unused chains and sets deleted, in an order the kernel accepts in
  one transaction.  A different base chain or set type falls back to
  :func:`render`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flanneld.netpol.ruleset import NftChain, NftSet, Ruleset
from flanneld.netpol.table import FAMILY, TABLE

_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
_T = f"{FAMILY} {TABLE}"


@dataclass(frozen=True, slots=True)
class ObservedChain:
    rule_count: int
    fingerprint: str  # from the first rule's comment, "" when none
    hook: str | None = None


@dataclass(frozen=True, slots=True)
class Observed:
    sets: Mapping[str, tuple[str, frozenset[str]]] = field(default_factory=dict)  # type, elems
    maps: Mapping[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    chains: Mapping[str, ObservedChain] = field(default_factory=dict)
    # chain -> packets counted by its counter (the reject rule of an iso chain)
    counters: Mapping[str, int] = field(default_factory=dict, compare=False)


def _elements(items: Iterable[str]) -> str:
    return "{ " + ", ".join(sorted(items)) + " }"


def _map_elements(items: Iterable[tuple[str, str]]) -> str:
    return "{ " + ", ".join(f"{k} : jump {v}" for k, v in sorted(items)) + " }"


def _set_decl(s: NftSet) -> str:
    body = f"type {s.type};"
    if s.elements:
        body += f" elements = {_elements(s.elements)};"
    return f"set {s.name} {{ {body} }}"


def _chain_decl(c: NftChain) -> str:
    lines = [f"chain {c.name} {{"]
    if c.hook:
        lines.append(f"  type filter hook {c.hook} priority {c.priority}; policy accept;")
    lines += [f"  {t}" for t in c.rule_texts()]
    lines.append("}")
    return "\n".join(lines)


def render(ruleset: Ruleset) -> str:
    """The full replace script for ``nft -f -``."""
    out = [f"add table {_T}", f"delete table {_T}", f"table {_T} {{"]
    out += [f"  {_set_decl(s)}" for s in ruleset.sets]
    out += [f"  map {m.name} {{ type {_addr_type(m.family)} : verdict; }}" for m in ruleset.maps]
    out += ["  " + line for c in ruleset.chains for line in _chain_decl(c).splitlines()]
    out.append("}")
    out += [
        f"add element {_T} {m.name} {_map_elements(m.elements)}"
        for m in ruleset.maps
        if m.elements
    ]
    return "\n".join(out) + "\n"


def _addr_type(family: int) -> str:
    return "ipv4_addr" if family == 4 else "ipv6_addr"


def expected(ruleset: Ruleset) -> Observed:
    """What reading ``ruleset`` back from the kernel gives."""
    return Observed(
        sets={s.name: (s.type, s.elements) for s in ruleset.sets},
        maps={m.name: m.elements for m in ruleset.maps},
        chains={
            c.name: ObservedChain(len(c.rules), c.fingerprint if c.rules else "", c.hook)
            for c in ruleset.chains
        },
    )


def plan(observed: Observed | None, desired: Ruleset) -> str:
    """The script moving the table from ``observed`` to ``desired``; "" when in sync."""
    want = expected(desired)
    if observed is None or _structure_differs(observed, want, desired):
        return render(desired)
    chains = desired.chain_map()
    out: list[str] = []
    for s in desired.sets:
        if s.name not in observed.sets:
            out.append(f"add {_set_decl(s).replace('set ', f'set {_T} ', 1)}")
    new_chains = [c for c in desired.chains if c.name not in observed.chains]
    changed = [
        c for c in desired.chains
        if c.name in observed.chains and observed.chains[c.name] != want.chains[c.name]
    ]
    out += [f"add chain {_T} {c.name}" for c in new_chains]
    for c in changed:
        out.append(f"flush chain {_T} {c.name}")
    for c in (*new_chains, *changed):
        out += [f"add rule {_T} {c.name} {t}" for t in c.rule_texts()]
    for s in desired.sets:
        if s.name in observed.sets:
            have = observed.sets[s.name][1]
            if have - s.elements:
                out.append(f"delete element {_T} {s.name} {_elements(have - s.elements)}")
            if s.elements - have:
                out.append(f"add element {_T} {s.name} {_elements(s.elements - have)}")
    for m in desired.maps:
        have_m = observed.maps.get(m.name, frozenset())
        if have_m - m.elements:
            gone = {k for k, _ in have_m - m.elements}
            out.append(f"delete element {_T} {m.name} {_elements(gone)}")
        if m.elements - have_m:
            out.append(f"add element {_T} {m.name} {_map_elements(m.elements - have_m)}")
    # referencing chains (iso_*) before the policy chains they jump to
    removed = sorted((n for n in observed.chains if n not in chains), key=lambda n: not n.startswith("iso_"))
    for name in removed:
        out.append(f"flush chain {_T} {name}")
    out += [f"delete chain {_T} {name}" for name in removed]
    names = {s.name for s in desired.sets}
    out += [f"delete set {_T} {n}" for n in sorted(observed.sets) if n not in names]
    return "".join(line + "\n" for line in out)


def _structure_differs(observed: Observed, want: Observed, desired: Ruleset) -> bool:
    if any(n in observed.sets and observed.sets[n][0] != t for n, (t, _) in want.sets.items()):
        return True
    if set(observed.maps) != set(want.maps):
        return True
    hooked = [c for c in desired.chains if c.hook]
    if any(observed.chains.get(c.name) != want.chains[c.name] for c in hooked):
        return True
    return any(c.hook for n, c in observed.chains.items() if n not in want.chains)


# --- reading nft -j output --------------------------------------------------------


def observe(listing: Mapping[str, Any]) -> Observed:
    """Parse ``nft -j list table inet pyflannel-policy`` output."""
    sets: dict[str, tuple[str, frozenset[str]]] = {}
    maps: dict[str, frozenset[tuple[str, str]]] = {}
    chains: dict[str, ObservedChain] = {}
    rules: dict[str, list[Mapping[str, Any]]] = {}
    hooks: dict[str, str | None] = {}
    for item in listing.get("nftables", []):
        if "set" in item:
            s = item["set"]
            type_ = s.get("type")
            type_text = " . ".join(type_) if isinstance(type_, list) else str(type_)
            sets[s["name"]] = (type_text, frozenset(_element(e) for e in s.get("elem", [])))
        elif "map" in item:
            m = item["map"]
            maps[m["name"]] = frozenset(_map_element(e) for e in m.get("elem", []))
        elif "chain" in item:
            hooks[item["chain"]["name"]] = item["chain"].get("hook")
            rules.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"])
    counters: dict[str, int] = {}
    for name, chain_rules in rules.items():
        first = chain_rules[0].get("comment", "") if chain_rules else ""
        fp = first.removeprefix("fp=") if isinstance(first, str) and first.startswith("fp=") else ""
        chains[name] = ObservedChain(len(chain_rules), fp, hooks.get(name))
        for rule in chain_rules:
            for expr in rule.get("expr", []):
                if isinstance(expr, Mapping) and isinstance(expr.get("counter"), Mapping):
                    counters[name] = counters.get(name, 0) + int(expr["counter"].get("packets", 0))
    return Observed(sets, maps, chains, counters)


def _element(raw: Any) -> str:
    if isinstance(raw, Mapping) and "elem" in raw:
        raw = raw["elem"].get("val")
    if isinstance(raw, Mapping) and "concat" in raw:
        addr, proto, port = raw["concat"]
        proto_name = _PROTO_NAMES.get(proto, proto) if isinstance(proto, int) else proto
        return f"{ipaddress.ip_address(addr)} . {proto_name} . {port}"
    return str(ipaddress.ip_address(raw))


def _map_element(raw: Any) -> tuple[str, str]:
    key, value = raw
    return _element(key), value["jump"]["target"]
