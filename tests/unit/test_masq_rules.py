"""Golden texts of the masquerade/forward rules (flannel.md §6.1, §6.2)."""

from __future__ import annotations

import ipaddress

import pytest

from flanneld.trafficmgr import rules as R

V4 = R.FamilyNets(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24"))
V6 = R.FamilyNets(
    ipaddress.IPv6Network("2001:cafe:42::/56"), ipaddress.IPv6Network("2001:cafe:42:1::/64")
)

GOLDEN_V4 = """\
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
"""

GOLDEN_V6 = """\
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 2001:cafe:42:1::/64 -d 2001:cafe:42::/56 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 2001:cafe:42::/56 -d 2001:cafe:42:1::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 2001:cafe:42::/56 -d 2001:cafe:42:1::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 2001:cafe:42::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 2001:cafe:42::/56 -d 2001:cafe:42::/56 -m comment --comment "flanneld masq" -j MASQUERADE
"""

GOLDEN_FWD = """\
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-N FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
"""

# §6.2's listing with the two documented deviations (masked mark, iptables rule 4).
GOLDEN_NFT_V4 = """\
table ip flannel-ipv4 {
	comment "rules for flannel-ipv4"
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return
		ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
		ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
		ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
		ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
		ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
	}

	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 10.244.0.0/16 accept
		ip daddr 10.244.0.0/16 accept
	}
}
"""

GOLDEN_NFT_V6_MASQ_ONLY = """\
table ip6 flannel-ipv6 {
	comment "rules for flannel-ipv6"
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return
		ip6 saddr 2001:cafe:42:1::/64 ip6 daddr 2001:cafe:42::/56 return
		ip6 saddr 2001:cafe:42::/56 ip6 daddr 2001:cafe:42:1::/64 return
		ip6 saddr != 2001:cafe:42::/56 ip6 daddr 2001:cafe:42:1::/64 return
		ip6 saddr 2001:cafe:42::/56 ip6 daddr != ff00::/8 masquerade
		ip6 saddr != 2001:cafe:42::/56 ip6 daddr 2001:cafe:42::/56 masquerade
	}
}
"""


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_iptables_v4_golden_with_random_fully() -> None:
    assert R.golden_listing(R.masq_rules(V4, random_fully=True)) == lines(GOLDEN_V4)


def test_iptables_v6_golden_without_random_fully() -> None:
    assert R.golden_listing(R.masq_rules(V6, random_fully=False)) == lines(GOLDEN_V6)


def test_iptables_v4_without_random_fully_drops_only_the_flag() -> None:
    with_flag = R.golden_listing(R.masq_rules(V4, random_fully=True))
    without = R.golden_listing(R.masq_rules(V4, random_fully=False))
    assert without == [line.removesuffix(" --random-fully") for line in with_flag]
    assert not any("random" in line for line in without)


def test_forward_golden() -> None:
    assert R.golden_listing(R.forward_rules(V4.network)) == lines(GOLDEN_FWD)


def test_chain_listing_is_what_iptables_S_chain_prints() -> None:
    assert R.chain_listing(R.masq_rules(V4, True)) == lines(GOLDEN_V4)[1:]


def test_restore_script_creates_chain_and_moves_jump_to_the_end() -> None:
    rules = R.forward_rules(V4.network)
    script = R.restore_script(rules, present_jumps=1)
    assert script == (
        "*filter\n"
        ":FLANNEL-FWD - [0:0]\n"
        '-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n'
        '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT\n'
        '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT\n'
        "COMMIT\n"
    )
    assert "-D" not in R.restore_script(rules, present_jumps=0)


def test_previous_rule_removal_text() -> None:
    previous = R.FamilyNets(
        ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.7.0/24")
    )
    current = R.masq_rules(V4, True)
    stale = [r for r in R.masq_rules(previous, True) if r not in current]
    assert R.delete_script("nat", stale) == (
        "*nat\n"
        '-D FLANNEL-POSTRTG -s 10.5.7.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN\n'
        '-D FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.7.0/24 -m comment --comment "flanneld masq" -j RETURN\n'
        '-D FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.7.0/24 -m comment --comment "flanneld masq" -j RETURN\n'
        '-D FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq"'
        " -j MASQUERADE --random-fully\n"
        '-D FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq"'
        " -j MASQUERADE --random-fully\n"
        "COMMIT\n"
    )


def test_remove_chain_script() -> None:
    jump = R.jump_rule("nat", R.MASQ_CHAIN)
    assert R.remove_chain_script("nat", R.MASQ_CHAIN, [jump]) == (
        "*nat\n"
        '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG\n'
        ":FLANNEL-POSTRTG - [0:0]\n"
        "-X FLANNEL-POSTRTG\n"
        "COMMIT\n"
    )
    assert jump == R.masq_rules(V4, True)[0]
    assert R.jump_rule("filter", R.FORWARD_CHAIN) == R.forward_rules(V4.network)[0]


def test_nft_v4_listing() -> None:
    chains = R.nft_chains(4, V4, masq=True, forward=True, random_fully=True)
    assert R.nft_listing(4, chains) == GOLDEN_NFT_V4


def test_nft_v6_masq_only_without_fully_random() -> None:
    chains = R.nft_chains(6, V6, masq=True, forward=False, random_fully=False)
    assert R.nft_listing(6, chains) == GOLDEN_NFT_V6_MASQ_ONLY


def test_nft_family_without_network_is_an_empty_table() -> None:
    chains = R.nft_chains(6, None, masq=True, forward=True, random_fully=True)
    assert (
        R.nft_listing(6, chains)
        == 'table ip6 flannel-ipv6 {\n\tcomment "rules for flannel-ipv6"\n}\n'
    )


def test_nft_replace_script_deletes_then_recreates_the_table() -> None:
    chains = R.nft_chains(4, V4, masq=True, forward=True, random_fully=True)
    script = R.nft_replace_script(4, chains)
    assert script == "table ip flannel-ipv4 {}\ndelete table ip flannel-ipv4\n" + GOLDEN_NFT_V4


def test_nft_delete_script_covers_both_tables() -> None:
    assert R.nft_delete_script() == (
        "table ip flannel-ipv4 {}\ndelete table ip flannel-ipv4\n"
        "table ip6 flannel-ipv6 {}\ndelete table ip6 flannel-ipv6\n"
    )


def test_family_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError):
        R.FamilyNets(V4.network, V6.subnet)


def test_family_nets_pairs_only_complete_families() -> None:
    assert R.family_nets([(V4.network, V4.subnet), (V6.network, None), (None, V6.subnet)]) == [V4]
    assert R.family_nets([(None, None), (V6.network, V6.subnet)]) == [V6]
