"""The masquerade and forward rules flanneld installs, rendered as text (pure).

Two renderings of the same policy:

* iptables: rule lists per family (``iptables``/``ip6tables``), the golden
  ``iptables -S`` listing, and ``iptables-restore --noflush`` scripts that
  create-or-flush our chains and (re)append the jump rules in one
  transaction;
* nftables: one ``nft -f -`` script per family that replaces our own table
  (``table ... {}`` / ``delete table`` / ``table ... {...}``) in a single
  atomic transaction, so applying it twice yields the same ruleset, and the
  ``nft list table`` text that results.

Deliberate difference from upstream's nftables mode: upstream's fourth
masquerade rule is ``saddr != <podCIDR> daddr <Network> return``, which
shadows the sixth rule (host/outside -> remote pods is never masqueraded),
and its kube-proxy mark test is an exact ``meta mark 0x4000``.  Masquerading
is node-local, so peers cannot tell; we render the iptables semantics in
both modes instead: ``saddr != <Network> daddr <podCIDR> return`` and
``meta mark & 0x4000 == 0x4000 return``.  The iptables rules are upstream's
byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from subnet.lease import IPNetwork

MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
KUBE_PROXY_MARK = "0x4000/0x4000"

NFT_POSTRTG = "postrtg"
NFT_FORWARD = "forward"
NFT_POSTRTG_COMMENT = "chain to manage traffic masquerading by flannel"
NFT_FORWARD_COMMENT = "chain to accept flannel traffic"


@dataclass(frozen=True, slots=True)
class FamilyNets:
    """One address family's cluster network and this node's subnet in it."""

    network: IPNetwork
    subnet: IPNetwork

    def __post_init__(self) -> None:
        if self.network.version != self.subnet.version:
            raise ValueError(f"{self.network} and {self.subnet} are of different address families")

    @property
    def version(self) -> int:
        return self.network.version


def family_nets(pairs: Iterable[tuple[IPNetwork | None, IPNetwork | None]]) -> list[FamilyNets]:
    """A FamilyNets for every (network, subnet) pair whose two halves are both known.

    E.g. ``family_nets([(cfg.network, lease.subnet), (cfg.ipv6_network, lease.ipv6_subnet)])``
    or, for ``previous``, the values read back from the old subnet.env.
    """
    return [FamilyNets(net, sub) for net, sub in pairs if net is not None and sub is not None]


@dataclass(frozen=True, slots=True)
class IptRule:
    """One rule as ``iptables -S`` prints it: ``-A <chain> <spec...>``."""

    table: str
    chain: str
    spec: tuple[str, ...]

    def text(self, action: str = "-A") -> str:
        return " ".join((action, self.chain, *(_quote(arg) for arg in self.spec)))


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def multicast(version: int) -> str:
    return "224.0.0.0/4" if version == 4 else "ff00::/8"


# --- iptables -----------------------------------------------------------------


def masq_rules(nets: FamilyNets, random_fully: bool) -> list[IptRule]:
    """Upstream's masquerade rules for one family, jump rule first."""
    net, pod = str(nets.network), str(nets.subnet)
    comment = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    ret = ("-j", "RETURN")

    def rule(*spec: str) -> IptRule:
        return IptRule("nat", MASQ_CHAIN, spec)

    return [
        IptRule("nat", "POSTROUTING", (*comment, "-j", MASQ_CHAIN)),
        rule("-m", "mark", "--mark", KUBE_PROXY_MARK, *comment, *ret),
        rule("-s", pod, "-d", net, *comment, *ret),
        rule("-s", net, "-d", pod, *comment, *ret),
        rule("!", "-s", net, "-d", pod, *comment, *ret),
        rule("-s", net, "!", "-d", multicast(nets.version), *comment, *masq),
        rule("!", "-s", net, "-d", net, *comment, *masq),
    ]


def forward_rules(network: IPNetwork) -> list[IptRule]:
    """Upstream's forward-accept rules for one family, jump rule first."""
    comment = ("-m", "comment", "--comment", FORWARD_COMMENT)
    return [
        IptRule("filter", "FORWARD", (*comment, "-j", FORWARD_CHAIN)),
        IptRule("filter", FORWARD_CHAIN, ("-s", str(network), *comment, "-j", "ACCEPT")),
        IptRule("filter", FORWARD_CHAIN, ("-d", str(network), *comment, "-j", "ACCEPT")),
    ]


def own_chain(rules: Sequence[IptRule]) -> str:
    """The flannel chain a rule list fills (the jump rules' target)."""
    chains = {r.chain for r in rules if r.chain in (MASQ_CHAIN, FORWARD_CHAIN)}
    if len(chains) != 1:
        raise ValueError(f"a rule list must fill exactly one flannel chain, not {sorted(chains)}")
    return chains.pop()


def split_jumps(rules: Sequence[IptRule]) -> tuple[list[IptRule], list[IptRule]]:
    """(jump rules in built-in chains, rules in our own chain)."""
    chain = own_chain(rules)
    return [r for r in rules if r.chain != chain], [r for r in rules if r.chain == chain]


def golden_listing(rules: Sequence[IptRule]) -> list[str]:
    """The listing flannel's e2e test expects: jumps, ``-N <chain>``, chain rules."""
    jumps, body = split_jumps(rules)
    return [*(r.text() for r in jumps), f"-N {own_chain(rules)}", *(r.text() for r in body)]


def chain_listing(rules: Sequence[IptRule]) -> list[str]:
    """What ``iptables -t <table> -S <our chain>`` prints when the chain is right."""
    _, body = split_jumps(rules)
    return [f"-N {own_chain(rules)}", *(r.text() for r in body)]


def restore_script(rules: Sequence[IptRule], present_jumps: int) -> str:
    """An ``iptables-restore --noflush`` transaction that installs ``rules``.

    Declaring our chain creates it or flushes it; ``present_jumps`` copies
    of the jump rule are deleted and one is appended, so the final order
    is the same whatever was there before.
    """
    jumps, body = split_jumps(rules)
    lines = [f"*{rules[0].table}", f":{own_chain(rules)} - [0:0]"]
    for jump in jumps:
        lines.extend(jump.text("-D") for _ in range(present_jumps))
        lines.append(jump.text("-A"))
    lines.extend(r.text("-A") for r in body)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def delete_script(table: str, present: Sequence[IptRule]) -> str:
    """An ``iptables-restore --noflush`` transaction deleting the rules in ``present``."""
    lines = [f"*{table}", *(r.text("-D") for r in present), "COMMIT"]
    return "\n".join(lines) + "\n"


def remove_chain_script(table: str, chain: str, jumps: Sequence[IptRule]) -> str:
    """Delete the given jump rules, then flush and delete our chain."""
    lines = [
        f"*{table}",
        *(j.text("-D") for j in jumps),
        f":{chain} - [0:0]",
        f"-X {chain}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def jump_rule(table: str, chain: str) -> IptRule:
    """The jump from the built-in chain into our ``chain``."""
    if chain == MASQ_CHAIN:
        return IptRule(
            table, "POSTROUTING", ("-m", "comment", "--comment", MASQ_COMMENT, "-j", chain)
        )
    return IptRule(table, "FORWARD", ("-m", "comment", "--comment", FORWARD_COMMENT, "-j", chain))


# --- nftables -----------------------------------------------------------------


def nft_family(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def nft_table(version: int) -> str:
    return "flannel-ipv4" if version == 4 else "flannel-ipv6"


def nft_masq_rules(nets: FamilyNets, random_fully: bool) -> list[str]:
    fam = nft_family(nets.version)
    net, pod = str(nets.network), str(nets.subnet)
    masq = "masquerade fully-random" if random_fully else "masquerade"
    return [
        "meta mark & 0x00004000 == 0x00004000 return",
        f"{fam} saddr {pod} {fam} daddr {net} return",
        f"{fam} saddr {net} {fam} daddr {pod} return",
        f"{fam} saddr != {net} {fam} daddr {pod} return",
        f"{fam} saddr {net} {fam} daddr != {multicast(nets.version)} {masq}",
        f"{fam} saddr != {net} {fam} daddr {net} {masq}",
    ]


def nft_forward_rules(network: IPNetwork) -> list[str]:
    fam = nft_family(network.version)
    return [f"{fam} saddr {network} accept", f"{fam} daddr {network} accept"]


@dataclass(frozen=True, slots=True)
class NftChain:
    """One base chain of our nftables table: its hook and its rules."""

    name: str
    comment: str
    hook: str
    rules: tuple[str, ...]

    def lines(self) -> list[str]:
        kind, priority = ("nat", "srcnat") if self.hook == "postrouting" else ("filter", "filter")
        return [
            f"\tchain {self.name} {{",
            f'\t\tcomment "{self.comment}"',
            f"\t\ttype {kind} hook {self.hook} priority {priority}; policy accept;",
            *(f"\t\t{rule}" for rule in self.rules),
            "\t}",
        ]


def nft_chains(
    version: int, nets: FamilyNets | None, masq: bool, forward: bool, random_fully: bool
) -> list[NftChain]:
    """The chains our table of family ``version`` holds (none without ``nets``)."""
    if nets is None:
        return []
    chains = []
    if masq:
        rules = tuple(nft_masq_rules(nets, random_fully))
        chains.append(NftChain(NFT_POSTRTG, NFT_POSTRTG_COMMENT, "postrouting", rules))
    if forward:
        rules = tuple(nft_forward_rules(nets.network))
        chains.append(NftChain(NFT_FORWARD, NFT_FORWARD_COMMENT, "forward", rules))
    return chains


def nft_listing(version: int, chains: Sequence[NftChain]) -> str:
    """What ``nft list table <family> <table>`` prints for our table."""
    table = nft_table(version)
    lines = [f"table {nft_family(version)} {table} {{", f'\tcomment "rules for {table}"']
    for i, chain in enumerate(chains):
        if i:
            lines.append("")
        lines.extend(chain.lines())
    lines.append("}")
    return "\n".join(lines) + "\n"


def nft_replace_script(version: int, chains: Sequence[NftChain]) -> str:
    """One atomic transaction that makes our table exactly ``chains``.

    The empty ``table`` line makes the ``delete`` valid when the table does
    not exist yet, so the script is idempotent.
    """
    fam, table = nft_family(version), nft_table(version)
    return f"table {fam} {table} {{}}\ndelete table {fam} {table}\n" + nft_listing(version, chains)


def nft_delete_script(versions: Sequence[int] = (4, 6)) -> str:
    """Remove our tables (the iptables-mode start-up cleanup); idempotent."""
    lines = []
    for version in versions:
        fam, table = nft_family(version), nft_table(version)
        lines.extend([f"table {fam} {table} {{}}", f"delete table {fam} {table}"])
    return "\n".join(lines) + "\n"


NFT_RANDOM_FULLY_PROBE = (
    "table ip flannel-probe {\n\tchain masqueradeTest {\n"
    "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
    "\t\tmasquerade fully-random\n\t}\n}\n"
)
