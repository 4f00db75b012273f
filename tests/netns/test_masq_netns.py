"""Masquerade/forward rules in a real kernel: golden listings, idempotency, resync, traffic.

Every command runs inside a namespace of this test (``ip netns exec``); the
rules are read back with ``iptables -S`` / ``nft list table``, not through
the code under test.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Callable

import pytest

from flanneld.lab import topology
from flanneld.trafficmgr import rules as R
from flanneld.trafficmgr.ipt import IptablesManager
from flanneld.trafficmgr.manager import traffic_manager
from flanneld.trafficmgr.nft import NftablesManager
from flanneld.trafficmgr.runner import CommandRunner

pytestmark = pytest.mark.netns

V4 = R.FamilyNets(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.1.0/24"))
V6 = R.FamilyNets(ipaddress.IPv6Network("fd00:42::/56"), ipaddress.IPv6Network("fd00:42:0:1::/64"))
POLICIES = {
    "nat": ["-P PREROUTING ACCEPT", "-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P POSTROUTING ACCEPT"],
    "filter": ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"],
}


def sh(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        args, check=True, capture_output=True, text=True, input=stdin, timeout=30
    ).stdout


def listing(ns: str, table: str, binary: str = "iptables") -> list[str]:
    return sh("ip", "netns", "exec", ns, binary, "-w", "-t", table, "-S").splitlines()


def expected_listing(table: str, rules: list[R.IptRule]) -> list[str]:
    jumps, body = R.split_jumps(rules)
    return [
        *POLICIES[table],
        f"-N {R.own_chain(rules)}",
        *(j.text() for j in jumps),
        *(r.text() for r in body),
    ]


def nft_table(ns: str, version: int) -> str:
    fam = R.nft_family(version)
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "table", fam, R.nft_table(version)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout if done.returncode == 0 else ""


def runner(ns: str) -> CommandRunner:
    return CommandRunner(prefix=("ip", "netns", "exec", ns))


def test_iptables_golden_idempotent_and_resynced(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("ipt")
    mgr = IptablesManager(runner(ns))
    mgr.setup(masq=True, forward=True, nets=[V4, V6])
    masq4 = R.masq_rules(V4, mgr.random_fully(4))
    want_nat = expected_listing("nat", masq4)
    want_filter = expected_listing("filter", R.forward_rules(V4.network))
    assert mgr.random_fully(4)  # iptables 1.8.9
    assert listing(ns, "nat") == want_nat
    assert listing(ns, "filter") == want_filter
    assert listing(ns, "nat", "ip6tables") == expected_listing("nat", R.masq_rules(V6, True))

    mgr.setup(masq=True, forward=True, nets=[V4, V6])
    assert listing(ns, "nat") == want_nat
    assert listing(ns, "filter") == want_filter
    assert mgr.resync() == 0

    sh("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
    sh("ip", "netns", "exec", ns, "iptables", "-t", "filter", "-D", "FORWARD", "1")
    sh("ip", "netns", "exec", ns, "ip6tables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    assert listing(ns, "nat") != want_nat
    assert mgr.resync() == 3
    assert listing(ns, "nat") == want_nat
    assert listing(ns, "filter") == want_filter
    assert listing(ns, "nat", "ip6tables") == expected_listing("nat", R.masq_rules(V6, True))
    assert mgr.resync() == 0


def test_iptables_stale_rules_of_previous_subnet_go(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("iptprev")
    old = R.FamilyNets(ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.7.0/24"))
    IptablesManager(runner(ns)).setup(masq=True, forward=False, nets=[old])
    assert any("10.5.7.0/24" in line for line in listing(ns, "nat"))
    fresh = IptablesManager(runner(ns))
    fresh.setup(masq=True, forward=False, nets=[V4], previous=[old])
    assert listing(ns, "nat") == expected_listing("nat", R.masq_rules(V4, True))


def test_iptables_random_fully_can_be_disabled(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("iptnorand")
    IptablesManager(runner(ns), random_fully_disabled=True).setup(True, False, [V4])
    assert listing(ns, "nat") == expected_listing("nat", R.masq_rules(V4, False))
    assert not any("random" in line for line in listing(ns, "nat"))


def test_nft_golden_idempotent_and_resynced(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("nft")
    mgr = NftablesManager(runner(ns))
    mgr.setup(masq=True, forward=True, nets=[V4])
    want4 = R.nft_listing(4, R.nft_chains(4, V4, True, True, random_fully=True))
    want6 = R.nft_listing(6, [])
    assert nft_table(ns, 4) == want4
    assert nft_table(ns, 6) == want6
    mgr.setup(masq=True, forward=True, nets=[V4])
    assert nft_table(ns, 4) == want4
    assert mgr.resync() == 0

    sh("ip", "netns", "exec", ns, "nft", "flush", "chain", "ip", "flannel-ipv4", "forward")
    assert nft_table(ns, 4) != want4
    assert mgr.resync() == 1
    assert nft_table(ns, 4) == want4
    sh("ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "flannel-ipv4")
    assert mgr.resync() == 1
    assert nft_table(ns, 4) == want4


def test_nft_new_subnet_replaces_old_rules(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("nftprev")
    old = R.FamilyNets(ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.7.0/24"))
    NftablesManager(runner(ns)).setup(True, True, [old])
    NftablesManager(runner(ns)).setup(True, True, [V4, V6], previous=[old])
    assert "10.5." not in nft_table(ns, 4)
    assert nft_table(ns, 6) == R.nft_listing(6, R.nft_chains(6, V6, True, True, True))


def test_mode_switch_cleans_the_other_mode(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("switch")
    traffic_manager(nftables=False, runner=runner(ns)).setup(True, True, [V4, V6])
    assert any("FLANNEL" in line for line in listing(ns, "nat"))
    traffic_manager(nftables=True, runner=runner(ns)).setup(True, True, [V4, V6])
    assert listing(ns, "nat") == POLICIES["nat"]
    assert listing(ns, "filter") == POLICIES["filter"]
    assert listing(ns, "nat", "ip6tables") == POLICIES["nat"]
    assert listing(ns, "filter", "ip6tables") == POLICIES["filter"]
    assert "postrtg" in nft_table(ns, 4)
    traffic_manager(nftables=False, runner=runner(ns)).setup(True, True, [V4])
    assert nft_table(ns, 4) == "" and nft_table(ns, 6) == ""
    assert listing(ns, "nat") == expected_listing("nat", R.masq_rules(V4, True))


# --- traffic -------------------------------------------------------------------------------

RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5555))
s.settimeout(10)
print("ready", flush=True)
for _ in range(int(sys.argv[1])):
    data, addr = s.recvfrom(100)
    print(data.decode(), addr[0], flush=True)
"""

SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[2].encode(), (sys.argv[1], 5555))
"""


@pytest.mark.parametrize("nftables", [False, True], ids=["iptables", "nftables"])
def test_pod_to_outside_is_masqueraded_pod_to_pod_is_not(
    netns_factory: Callable[[str], str], nftables: bool
) -> None:
    pod, node, out = netns_factory("pod"), netns_factory("node"), netns_factory("out")
    v4 = ipaddress.IPv4Interface
    topology.veth_link(pod, "eth0", v4("10.244.1.2/24"), node, "podveth", v4("10.244.1.1/24"))
    topology.veth_link(node, "uplink", v4("203.0.113.1/24"), out, "eth0", v4("203.0.113.2/24"))
    topology.add_address(out, "lo", v4("10.244.2.5/32"))  # a "remote pod" beyond the uplink
    topology.add_default_route(pod, v4("10.244.1.1/24").ip)
    topology.add_route(node, ipaddress.IPv4Network("10.244.2.0/24"), v4("203.0.113.2/24").ip)
    topology.add_route(out, ipaddress.IPv4Network("10.244.1.0/24"), v4("203.0.113.1/24").ip)
    topology.write_sysctl(node, "net.ipv4.ip_forward", "1")

    traffic_manager(nftables, runner=runner(node)).setup(True, True, [V4])

    receiver = subprocess.Popen(
        ["ip", "netns", "exec", out, sys.executable, "-c", RECEIVER, "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        for dst, tag in (("203.0.113.2", "outside"), ("10.244.2.5", "inpod")):
            sh("ip", "netns", "exec", pod, sys.executable, "-c", SENDER, dst, tag)
        out_text, err_text = receiver.communicate(timeout=15)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(5)
    seen = dict(line.split() for line in out_text.splitlines())
    assert seen == {"outside": "203.0.113.1", "inpod": "10.244.1.2"}, err_text
