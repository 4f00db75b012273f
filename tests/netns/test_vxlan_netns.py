"""The vxlan backend and the netlink layer against a real kernel, inside namespaces.

Each test gets two fresh namespaces joined by a veth underlay (198.18.0.1/24 in
``a``, 198.18.0.2/24 in ``b``); kernel state is read back with ``ip -j`` and
``bridge -j``, never through the code under test.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from backends.base import ExternalInterface, ReconcileReport, RouteLookup
from backends.model import Route
from backends.netlink import Netlink
from backends.plan import Put
from backends.registry import BackendContext, lookup
from backends.vxlan import VxlanBackend, VxlanNetwork
from bench.fakes import FakeSubnetManager
from flanneld.lab import topology
from subnet.errors import DataplaneError
from subnet.lease import Lease, LeaseAttrs, encode_attrs
from subnet.netconf import BackendConfig, NetConfig

pytestmark = pytest.mark.netns

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
DEV = "flannel.1"


def backend_config(**options: object) -> BackendConfig:
    return BackendConfig("vxlan", {"Type": "vxlan", **options})


def net_config(**options: object) -> NetConfig:
    return NetConfig(network=CLUSTER, subnet_len=24, backend=backend_config(**options))


@dataclass
class Node:
    ns: str
    netlink: Netlink
    ext: ExternalInterface

    def register(
        self, subnet: str = "10.244.1.0/24", previous_mac: str | None = None, **options: object
    ) -> tuple[VxlanNetwork, FakeSubnetManager]:
        config = net_config(**options)
        manager = FakeSubnetManager(config, subnet)
        backend = VxlanBackend(self.ext, self.netlink, config.backend, previous_macs={4: previous_mac})
        return backend.register_network(manager, config), manager


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", *args)
    return json.loads(out) if out.strip() else []


@pytest.fixture
def pair(netns_factory: Callable[[str], str]) -> Iterator[tuple[Node, Node]]:
    a, b = netns_factory("vxa"), netns_factory("vxb")
    ul = [ipaddress.IPv4Interface(f"198.18.0.{host}/24") for host in (1, 2)]
    topology.veth_link(a, "ul0", ul[0], b, "ul0", ul[1])
    nodes = []
    for ns, iface in ((a, ul[0]), (b, ul[1])):
        index = topology.link_index(ns, "ul0")
        ext = ExternalInterface("ul0", index, 1500, iface.ip, iface.ip)
        nodes.append(Node(ns, Netlink(ns), ext))
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.netlink.close()


# --- reading the kernel back --------------------------------------------------------------


def peer_mac(third: int) -> str:
    return f"0a:00:00:00:01:{third:02x}"


def peer_ip(third: int) -> str:
    return f"198.18.0.{10 + third}"


def peer(third: int, mac: str = "", public_ip: str = "") -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        None,
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(public_ip or peer_ip(third)),
            backend_type="vxlan",
            backend_data=json.dumps({"VNI": 1, "VtepMAC": mac or peer_mac(third)}),
        ),
    )


Kernel = tuple[set[tuple[str, str, str, str]], set[tuple[str, str]], set[tuple[str, str]]]


def kernel(ns: str) -> Kernel:
    """(proto-44 routes, permanent neighbours on flannel.1, FDB remotes on flannel.1)."""
    routes = {
        (
            str(r["dst"]),
            str(r.get("gateway")),
            str(r["dev"]),
            "onlink" if "onlink" in r.get("flags", []) else "",
        )
        for r in ip_json(ns, "route", "show", "proto", "44")
    }
    neighbours = {
        (str(n["dst"]), str(n["lladdr"]))
        for n in ip_json(ns, "neigh", "show", "dev", DEV, "nud", "permanent")
    }
    out = sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", DEV)
    fdb = {
        (str(f["mac"]), str(f["dst"]))
        for f in (json.loads(out) if out.strip() else [])
        if "dst" in f and "self" in f.get("flags", [])
    }
    return routes, neighbours, fdb


def expected(*thirds: int, macs: dict[int, str] | None = None) -> Kernel:
    macs = macs or {}
    return (
        {(f"10.244.{t}.0/24", f"10.244.{t}.0", DEV, "onlink") for t in thirds},
        {(f"10.244.{t}.0", macs.get(t, peer_mac(t))) for t in thirds},
        {(macs.get(t, peer_mac(t)), peer_ip(t)) for t in thirds},
    )


def device(ns: str) -> dict[str, Any]:
    return ip_json(ns, "-d", "addr", "show", DEV)[0]


def device_addresses(ns: str) -> list[str]:
    info = device(ns)["addr_info"]
    return [f"{a['local']}/{a['prefixlen']}" for a in info if a["family"] == "inet"]


# --- registration -------------------------------------------------------------------------


def test_register_creates_the_device_and_advertises_its_mac(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, manager = a.register()
    info = device(a.ns)
    data = info["linkinfo"]["info_data"]
    assert data["id"] == 1 and data["port"] == 8472 and data["local"] == "198.18.0.1"
    assert data["link"] == "ul0" and data["learning"] is False
    assert info["mtu"] == 1450 == network.mtu
    assert "UP" in info["flags"]
    assert device_addresses(a.ns) == ["10.244.1.0/32"]
    mac = str(info["address"])
    assert int(mac[:2], 16) & 0x03 == 0x02  # locally administered unicast
    assert [encode_attrs(attrs) for attrs in manager.acquired] == [
        (
            '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
        )
    ]
    assert network.lease.subnet == ipaddress.IPv4Network("10.244.1.0/24")


def test_options_reach_the_device(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register(VNI=7, Port=4789, GBP=True, MTU=1400)
    info = ip_json(a.ns, "-d", "link", "show", "flannel.7")[0]
    data = info["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data.get("gbp")) == (7, 4789, True)
    assert info["mtu"] == 1350 == network.mtu


def test_previous_mac_is_used_and_an_incompatible_device_is_replaced(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    sh("ip", "-n", a.ns, "link", "add", DEV, "type", "vxlan", "id", "5", "dstport", "4789")
    old_index = device(a.ns)["ifindex"]
    a.register(previous_mac="0A:11:22:33:44:55")
    info = device(a.ns)
    assert info["linkinfo"]["info_data"]["id"] == 1
    assert info["ifindex"] != old_index
    assert info["address"] == "0a:11:22:33:44:55"


def test_device_is_reused_on_register_again_and_nothing_is_flushed(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    first, _ = a.register()
    first.reconcile([peer(2), peer(3)])
    before = device(a.ns)
    again, manager = a.register(previous_mac="0a:99:99:99:99:99")  # a live device wins
    after = device(a.ns)
    assert (after["ifindex"], after["address"]) == (before["ifindex"], before["address"])
    assert f'"VtepMAC":"{before["address"]}"' in str(manager.acquired[0].backend_data)
    assert kernel(a.ns) == expected(2, 3)
    report = again.reconcile([peer(2), peer(3)])
    assert (report.added, report.removed, report.device_recreated) == (0, 0, False)


def test_registry_builds_vxlan_with_the_previous_mac(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    config = net_config()
    context = BackendContext(
        a.ext, a.netlink, config.backend, previous_data='{"VNI":1,"VtepMAC":"0a:00:00:00:00:42"}'
    )
    backend = lookup("vxlan").build(context)
    backend.register_network(FakeSubnetManager(config, "10.244.1.0/24"), config)
    assert device(a.ns)["address"] == "0a:00:00:00:00:42"


# --- reconcile ----------------------------------------------------------------------------


def test_reconcile_programs_exactly_the_peers_and_then_is_a_noop(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    network, _ = a.register()
    report = network.reconcile([peer(2), peer(3), peer(4)])
    assert (report.added, report.removed, report.failed, report.peers) == (9, 0, (), 3)
    assert kernel(a.ns) == expected(2, 3, 4)
    assert all(r["protocol"] == "44" for r in ip_json(a.ns, "route", "show", "dev", DEV))
    with caplog.at_level(logging.INFO, logger="backends.netlink"):
        report = network.reconcile([peer(2), peer(3), peer(4)])
    assert (report.added, report.removed, report.device_recreated) == (0, 0, False)
    assert [r.getMessage() for r in caplog.records] == []  # one line per change: none
    assert kernel(a.ns) == expected(2, 3, 4)


def test_manual_deletions_are_restored_exactly(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = [peer(2), peer(3), peer(4)]
    network.reconcile(peers)
    sh("ip", "-n", a.ns, "route", "del", "10.244.2.0/24")
    sh("ip", "-n", a.ns, "neigh", "del", "10.244.3.0", "dev", DEV)
    sh("bridge", "-n", a.ns, "fdb", "del", peer_mac(4), "dev", DEV, "self", "dst", peer_ip(4))
    assert kernel(a.ns) != expected(2, 3, 4)
    report = network.reconcile(peers)
    assert (report.added, report.removed) == (3, 0)
    assert kernel(a.ns) == expected(2, 3, 4)


def test_removed_peer_loses_its_three_entries(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    network.reconcile([peer(2), peer(3), peer(4)])
    report = network.reconcile([peer(2), peer(4)])
    assert (report.added, report.removed) == (0, 3)
    assert kernel(a.ns) == expected(2, 4)


def test_changed_peer_mac_replaces_its_entries(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    network.reconcile([peer(2), peer(3)])
    new_mac = "0a:00:00:00:02:02"
    network.reconcile([peer(2, mac=new_mac), peer(3)])
    assert kernel(a.ns) == expected(2, 3, macs={2: new_mac})


def test_deleted_device_is_recreated_with_its_mac_and_peers(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = [peer(2), peer(3)]
    network.reconcile(peers)
    mac = device(a.ns)["address"]
    sh("ip", "-n", a.ns, "link", "del", DEV)
    report = network.reconcile(peers)
    assert report.device_recreated
    assert report.added == 6
    info = device(a.ns)
    assert (info["address"], info["mtu"]) == (mac, 1450)
    assert "UP" in info["flags"]
    assert device_addresses(a.ns) == ["10.244.1.0/32"]
    assert kernel(a.ns) == expected(2, 3)


def test_device_settings_and_address_are_repaired(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    sh("ip", "-n", a.ns, "link", "set", DEV, "down", "mtu", "1300")
    sh("ip", "-n", a.ns, "addr", "add", "10.244.77.0/32", "dev", DEV)  # stale, ours to remove
    sh("ip", "-n", a.ns, "addr", "add", "192.0.2.9/32", "dev", DEV)  # outside the network: kept
    sh("ip", "-n", a.ns, "addr", "del", "10.244.1.0/32", "dev", DEV)
    report = network.reconcile([])
    assert not report.device_recreated
    info = device(a.ns)
    assert info["mtu"] == 1450 and "UP" in info["flags"]
    assert sorted(device_addresses(a.ns)) == ["10.244.1.0/32", "192.0.2.9/32"]


def test_foreign_routes_are_never_touched(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    sh("ip", "-n", a.ns, "route", "add", "10.244.9.0/24", "via", "198.18.0.2", "proto", "static")
    sh("ip", "-n", a.ns, "route", "add", "10.244.8.0/24", "dev", DEV, "proto", "dhcp")
    network.reconcile([peer(2)])
    network.reconcile([])
    routes = {(r["dst"], r.get("protocol")) for r in ip_json(a.ns, "route", "show")}
    assert ("10.244.9.0/24", "static") in routes
    assert ("10.244.8.0/24", "dhcp") in routes
    assert kernel(a.ns) == (set(), set(), set())


def test_bad_peer_is_skipped_and_warned_about_once(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    network, _ = a.register()
    bad = peer(5, mac="ff:ff:ff:ff:ff:ff")
    with caplog.at_level(logging.WARNING, logger="backends.vxlan"):
        for _ in range(3):
            report = network.reconcile([peer(2), bad])
    assert [s.key for s in report.skipped] == ["10.244.5.0-24"]
    warnings = [r for r in caplog.records if "10.244.5.0-24" in r.getMessage()]
    assert len(warnings) == 1
    assert kernel(a.ns) == expected(2)


def test_direct_routing_uses_the_underlay_for_on_link_peers(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register(DirectRouting=True)
    near = peer(2, public_ip="198.18.0.2")
    far = peer(3, public_ip="192.0.2.3")  # no route to it at all: vxlan
    sh("ip", "-n", a.ns, "route", "add", "203.0.113.0/24", "via", "198.18.0.2")
    far_routed = peer(4, public_ip="203.0.113.4")  # reached through a gateway: vxlan too
    report = network.reconcile([near, far, far_routed])
    assert report.failed == ()
    routes, neighbours, fdb = kernel(a.ns)
    assert ("10.244.2.0/24", "198.18.0.2", "ul0", "") in routes
    assert ("10.244.3.0/24", "10.244.3.0", DEV, "onlink") in routes
    assert ("10.244.4.0/24", "10.244.4.0", DEV, "onlink") in routes
    assert {n[0] for n in neighbours} == {"10.244.3.0", "10.244.4.0"}
    assert {f[1] for f in fdb} == {"192.0.2.3", "203.0.113.4"}
    report = network.reconcile([near, far, far_routed])
    assert (report.added, report.removed) == (0, 0)


# --- the netlink layer ----------------------------------------------------------------------


def test_interface_queries(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    sh("ip", "-n", a.ns, "addr", "add", "198.18.0.77/24", "dev", "ul0")  # a secondary
    by_name = {i.name: i for i in a.netlink.interfaces()}
    ul0 = by_name["ul0"]
    assert (ul0.index, ul0.mtu, ul0.up) == (a.ext.index, 1500, True)
    v4 = [x for x in ul0.addresses if x.address.version == 4]
    assert [(str(x.address), x.prefixlen, x.permanent, x.temporary) for x in v4] == [
        ("198.18.0.1", 24, True, False),
        ("198.18.0.77", 24, True, False),
    ]
    assert not by_name["lo"].addresses or by_name["lo"].up
    assert a.netlink.default_route_ifindex(2) is None
    assert a.netlink.route_get(ipaddress.IPv4Address("203.0.113.1")) == []
    sh("ip", "-n", a.ns, "route", "add", "default", "via", "198.18.0.2")
    assert a.netlink.default_route_ifindex(2) == a.ext.index
    assert a.netlink.route_get(ipaddress.IPv4Address("198.18.0.2")) == [
        RouteLookup(a.ext.index, None, ipaddress.IPv4Address("198.18.0.1"))
    ]
    assert a.netlink.route_get(ipaddress.IPv4Address("203.0.113.1")) == [
        RouteLookup(
            a.ext.index, ipaddress.IPv4Address("198.18.0.2"), ipaddress.IPv4Address("198.18.0.1")
        )
    ]


def test_apply_continues_past_a_failure_and_reports_its_errno(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    a.register()
    index = int(device(a.ns)["ifindex"])
    gw = ipaddress.IPv4Address("10.244.50.0")
    bad = Put(Route(ipaddress.IPv4Network("10.244.50.0/24"), gw, index, onlink=False))
    good = Put(Route(ipaddress.IPv4Network("10.244.51.0/24"), gw, index, onlink=True))
    result = a.netlink.apply([bad, good])
    assert result.applied == (good,)
    assert [(f.change, f.errno) for f in result.failed] == [(bad, errno.ENETUNREACH)]
    assert "10.244.50.0/24" in str(result.failed[0])
    assert {r[0] for r in kernel(a.ns)[0]} == {"10.244.51.0/24"}


def test_kernel_errors_become_dataplane_errors_with_errno(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    with pytest.raises(DataplaneError) as caught:
        a.netlink.set_link(99999, mtu=1400)
    assert caught.value.errno == errno.ENODEV
    assert a.netlink.link("no-such-dev") is None
    with pytest.raises(DataplaneError):
        Netlink(a.ns + "-missing")  # never created by accident
    assert a.ns + "-missing" not in sh("ip", "netns", "list")


def test_disable_accept_ra_writes_inside_the_namespace(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    a.register()
    path = f"/proc/sys/net/ipv6/conf/{DEV}/accept_ra"
    assert sh("ip", "netns", "exec", a.ns, "cat", path).strip() == "1"
    a.netlink.disable_accept_ra(DEV)
    assert sh("ip", "netns", "exec", a.ns, "cat", path).strip() == "0"


# --- a real data path -----------------------------------------------------------------------


def test_two_nodes_reach_each_others_pods(
    pair: tuple[Node, Node], netns_factory: Callable[[str], str]
) -> None:
    a, b = pair
    net_a, _ = a.register("10.244.1.0/24")
    net_b, _ = b.register("10.244.2.0/24")
    # a "pod" 10.244.2.5 behind b, reached through a veth whose b end is 10.244.2.1/24
    pod = netns_factory("vxpod")
    sh(
        "ip",
        "-n",
        b.ns,
        "link",
        "add",
        "vpod",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod,
    )
    sh("ip", "-n", b.ns, "addr", "add", "10.244.2.1/24", "dev", "vpod")
    sh("ip", "-n", b.ns, "link", "set", "vpod", "up")
    sh("ip", "-n", pod, "addr", "add", "10.244.2.5/24", "dev", "eth0")
    sh("ip", "-n", pod, "link", "set", "eth0", "up")
    sh("ip", "-n", pod, "route", "add", "default", "via", "10.244.2.1")
    sh("ip", "netns", "exec", b.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert net_a.reconcile([net_b.lease]).failed == ()
    assert net_b.reconcile([net_a.lease]).failed == ()
    ping = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            a.ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            "10.244.1.0",
            "10.244.2.5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert " 0% packet loss" in ping.stdout
    # the path really is VXLAN: b's flannel.1 received the packets
    stats = ip_json(b.ns, "-s", "link", "show", DEV)[0]["stats64"]
    assert stats["rx"]["packets"] >= 3


# --- events: only the changed peers -----------------------------------------------------------


def apply_event(
    network: VxlanNetwork, peers: dict[str, Lease], changes: dict[str, Lease | None]
) -> ReconcileReport:
    """A watch event: ``peers`` (by key) updated by ``changes``, then the event's pass."""
    for key, lease in changes.items():
        if lease is None:
            peers.pop(key, None)
        else:
            peers[key] = lease
    return network.reconcile(list(peers.values()), full=False, changes=changes)


def test_events_program_only_the_changed_peers_and_agree_with_a_full_pass(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = {p.key: p for p in (peer(t) for t in (2, 3, 4))}
    network.reconcile(list(peers.values()))
    assert kernel(a.ns) == expected(2, 3, 4)

    def event(changes: dict[str, Lease | None]) -> ReconcileReport:
        return apply_event(network, peers, changes)

    added = event({peer(5).key: peer(5)})
    assert (added.added, added.removed) == (3, 0)  # one peer's objects, nothing else
    assert kernel(a.ns) == expected(2, 3, 4, 5)
    moved = event({peer(3).key: peer(3, mac="0a:00:00:00:09:03")})
    assert (moved.added, moved.removed) == (2, 1)  # neighbour replaced, FDB entry moved to the MAC
    assert kernel(a.ns) == expected(2, 3, 4, 5, macs={3: "0a:00:00:00:09:03"})
    gone = event({peer(4).key: None})
    assert (gone.added, gone.removed) == (0, 3)
    assert kernel(a.ns) == expected(2, 3, 5, macs={3: "0a:00:00:00:09:03"})
    # a peer with a taken VTEP MAC: the full computation decides (the younger one is skipped)
    clash = event({peer(6).key: peer(6, mac=peer_mac(2))})
    assert [s.key for s in clash.skipped] == [peer(6).key]
    assert kernel(a.ns) == expected(2, 3, 5, macs={3: "0a:00:00:00:09:03"})
    # and a full pass afterwards finds nothing to do
    again = network.reconcile(list(peers.values()))
    assert (again.added, again.removed) == (0, 0)
