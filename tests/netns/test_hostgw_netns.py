"""The host-gw backend in a real kernel: two node namespaces on a veth underlay.

Node ``a`` (198.18.0.1) owns 10.244.1.0/24, node ``b`` (198.18.0.2) owns
10.244.2.0/24; each has its subnet's .1 on ``lo`` as a stand-in pod.  Each
runs its own HostGwNetwork with the other as its only peer.  Routes are read
back with ``ip -j``, never through the code under test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from backends.base import ExternalInterface
from backends.hostgw import HostGwBackend, HostGwNetwork
from backends.netlink import Netlink
from bench.fakes import FakeSubnetManager
from subnet.errors import ConfigError
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import BackendConfig, NetConfig
from tests.underlay import ip_json, sh, veth_hosts

pytestmark = pytest.mark.netns

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
CONFIG = NetConfig(
    network=CLUSTER, subnet_len=24, backend=BackendConfig("host-gw", {"Type": "host-gw"})
)


@dataclass
class Node:
    ns: str
    third: int
    netlink: Netlink
    ext: ExternalInterface

    def register(self) -> tuple[HostGwNetwork, FakeSubnetManager]:
        manager = FakeSubnetManager(CONFIG, f"10.244.{self.third}.0/24")
        return HostGwBackend(self.ext, self.netlink).register_network(manager, CONFIG), manager


def routes(ns: str) -> set[tuple[str, str, str]]:
    """(dst, gateway, dev) of the proto-44 routes."""
    return {
        (r["dst"], r.get("gateway", ""), r["dev"])
        for r in ip_json(ns, "route", "show", "proto", "44")
    }


def ping(ns: str, src: str, dst: str) -> bool:
    done = sh(
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        src,
        dst,
        check=False,
    )
    return done.returncode == 0


def lease_of(node: Node, backend_type: str = "host-gw") -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{node.third}.0/24"),
        None,
        LeaseAttrs(
            public_ip=node.ext.ext_addr or ipaddress.IPv4Address(0), backend_type=backend_type
        ),
    )


@pytest.fixture
def pair(netns_factory: Callable[[str], str]) -> Iterator[tuple[Node, Node]]:
    nodes = [
        Node(ns, third, Netlink(ns), ext) for ns, third, ext in veth_hosts(netns_factory, "hg")
    ]
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.netlink.close()


def test_lease_and_mtu(pair: tuple[Node, Node]) -> None:
    network, manager = pair[0].register()
    assert manager.acquired == [
        LeaseAttrs(public_ip=ipaddress.IPv4Address("198.18.0.1"), backend_type="host-gw")
    ]
    assert network.lease.attrs.backend_data is None
    assert network.mtu == 1500


def test_nat_is_refused(pair: tuple[Node, Node]) -> None:
    a = pair[0]
    natted = ExternalInterface(
        "ul0", a.ext.index, 1500, a.ext.iface_addr, ipaddress.IPv4Address("203.0.113.7")
    )
    manager = FakeSubnetManager(CONFIG, "10.244.1.0/24")
    with pytest.raises(ConfigError, match="NAT, which is not supported by host-gw backend"):
        HostGwBackend(natted, a.netlink).register_network(manager, CONFIG)
    assert manager.acquired == []


def test_routes_ping_repair_and_removal(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = a.register()
    net_b, _ = b.register()
    assert not ping(a.ns, "10.244.1.1", "10.244.2.1")

    report = net_a.reconcile([lease_of(b)])
    assert (report.added, report.removed, report.peers) == (1, 0, 1)
    assert net_b.reconcile([lease_of(a)]).added == 1
    assert routes(a.ns) == {("10.244.2.0/24", "198.18.0.2", "ul0")}
    assert routes(b.ns) == {("10.244.1.0/24", "198.18.0.1", "ul0")}
    assert ping(a.ns, "10.244.1.1", "10.244.2.1")
    assert ping(b.ns, "10.244.2.1", "10.244.1.1")

    again = net_a.reconcile([lease_of(b)])
    assert (again.added, again.removed) == (0, 0)

    sh("ip", "-n", a.ns, "route", "add", "10.244.9.0/24", "via", "198.18.0.2")  # not ours
    sh("ip", "-n", a.ns, "route", "del", "10.244.2.0/24")
    assert not ping(a.ns, "10.244.1.1", "10.244.2.1")
    repaired = net_a.reconcile([lease_of(b)])
    assert (repaired.added, repaired.removed) == (1, 0)
    assert routes(a.ns) == {("10.244.2.0/24", "198.18.0.2", "ul0")}
    assert ping(a.ns, "10.244.1.1", "10.244.2.1")

    gone = net_a.reconcile([])
    assert (gone.added, gone.removed) == (0, 1)
    assert routes(a.ns) == set()
    foreign = {r["dst"] for r in ip_json(a.ns, "route", "show")}
    assert "10.244.9.0/24" in foreign


def test_changed_public_ip_replaces_the_route(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = a.register()
    net_a.reconcile([lease_of(b)])
    moved = Lease(
        lease_of(b).subnet, None, LeaseAttrs(ipaddress.IPv4Address("198.18.0.3"), None, "host-gw")
    )
    report = net_a.reconcile([moved])
    assert (report.added, report.removed) == (1, 0)
    assert routes(a.ns) == {("10.244.2.0/24", "198.18.0.3", "ul0")}


def test_peers_of_other_backends_are_skipped(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = a.register()
    report = net_a.reconcile([lease_of(b, backend_type="vxlan")])
    assert report.added == 0 and [s.key for s in report.skipped] == ["10.244.2.0-24"]
    assert routes(a.ns) == set()


def test_dual_stack_routes_and_ping6(pair: tuple[Node, Node]) -> None:
    v6_net = ipaddress.IPv6Network("fd00:42::/56")
    config = NetConfig(
        network=CLUSTER,
        ipv6_network=v6_net,
        enable_ipv6=True,
        backend=BackendConfig("host-gw", {"Type": "host-gw"}),
    )
    networks = []
    for node in pair:
        sh("ip", "-n", node.ns, "addr", "add", f"fd99::{node.third}/64", "dev", "ul0", "nodad")
        sh("ip", "-n", node.ns, "addr", "add", f"fd00:42:0:{node.third}::1/128", "dev", "lo")
        v6 = ipaddress.IPv6Address(f"fd99::{node.third}")
        node.ext = ExternalInterface(
            "ul0", node.ext.index, 1500, node.ext.iface_addr, node.ext.ext_addr, v6, v6
        )

        manager = FakeSubnetManager(CONFIG, f"10.244.{node.third}.0/24", f"fd00:42:0:{node.third}::/64")
        networks.append(HostGwBackend(node.ext, node.netlink).register_network(manager, config))
        assert manager.acquired[0].public_ipv6 == v6
    net_a, net_b = networks
    assert net_a.reconcile([net_b.lease]).added == 2
    assert net_b.reconcile([net_a.lease]).added == 2
    v6_routes = {
        (r["dst"], r.get("gateway", ""), r["dev"])
        for r in ip_json(pair[0].ns, "-6", "route", "show", "proto", "44")
    }
    assert v6_routes == {("fd00:42:0:2::/64", "fd99::2", "ul0")}
    assert ping(pair[0].ns, "fd00:42:0:1::1", "fd00:42:0:2::1")
    assert ping(pair[0].ns, "10.244.1.1", "10.244.2.1")
    assert net_a.reconcile([net_b.lease]).added == 0
