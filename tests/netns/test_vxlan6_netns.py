"""The vxlan backend over IPv6 against a real kernel: ``flannel-v6.1`` beside ``flannel.1``.

Two fresh namespaces joined by a veth underlay with both families (198.18.0.1/24 and
fd00:198:18::1/64 in ``a``, .2 and ::2 in ``b``).  Kernel state is read back with
``ip -j`` and ``bridge -j``, never through the code under test.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from backends.base import ExternalInterface, ReconcileReport
from backends.netlink import Netlink
from backends.registry import BackendContext, lookup
from backends.vxlan import VxlanBackend, VxlanNetwork
from bench.fakes import FakeSubnetManager
from flanneld.lab import topology
from subnet.errors import InterfaceError
from subnet.lease import UNSPECIFIED_V4, Lease, LeaseAttrs, encode_attrs
from subnet.netconf import BackendConfig, NetConfig
from tests.netns.test_vxlan_netns import apply_event

pytestmark = pytest.mark.netns

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
CLUSTER6 = ipaddress.IPv6Network("fd00:10:244::/56")
DEV4, DEV6 = "flannel.1", "flannel-v6.1"


def net_config(ipv4: bool = True, **options: object) -> NetConfig:
    return NetConfig(
        network=CLUSTER if ipv4 else None, ipv6_network=CLUSTER6, enable_ipv4=ipv4,
        enable_ipv6=True, backend=BackendConfig("vxlan", {"Type": "vxlan", **options}),
    )


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", *args)
    return json.loads(out) if out.strip() else []


@dataclass
class Node:
    ns: str
    netlink: Netlink
    ext: ExternalInterface
    host: int

    def register(
        self, ipv4: bool = True, macs: dict[int, str | None] | None = None, **options: object
    ) -> tuple[VxlanNetwork, FakeSubnetManager]:
        config = net_config(ipv4, **options)
        manager = FakeSubnetManager(config, f"10.244.{self.host}.0/24" if ipv4 else None,
                                    f"fd00:10:244:{self.host}::/64")
        backend = VxlanBackend(self.ext, self.netlink, config.backend, previous_macs=macs)
        return backend.register_network(manager, config), manager


@pytest.fixture
def pair(netns_factory: Callable[[str], str]) -> Iterator[tuple[Node, Node]]:
    a, b = netns_factory("v6a"), netns_factory("v6b")
    topology.veth_link(a, "ul0", ipaddress.IPv4Interface("198.18.0.1/24"),
                       b, "ul0", ipaddress.IPv4Interface("198.18.0.2/24"))
    nodes = []
    for host, ns in ((1, a), (2, b)):
        v6 = ipaddress.IPv6Interface(f"fd00:198:18::{host}/64")
        topology.add_address(ns, "ul0", v6)
        index = topology.link_index(ns, "ul0")
        v4 = ipaddress.IPv4Address(f"198.18.0.{host}")
        ext = ExternalInterface("ul0", index, 1500, v4, v4, v6.ip, v6.ip)
        nodes.append(Node(ns, Netlink(ns), ext, host))
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.netlink.close()


# --- peers and what the kernel should hold -------------------------------------------------


def mac(version: int, host: int) -> str:
    return f"0a:00:00:00:{version:02x}:{host:02x}"


def public6(host: int) -> str:
    return f"fd00:198:18::{host + 10:x}"


def peer(host: int, *, v4: bool = True, v6: bool = True, v6_data: str | None = None,
         v6_public: str | None = None) -> Lease:
    """A vxlan peer lease of either or both families (VTEP MACs per family, apart)."""
    data6 = v6_data or json.dumps({"VNI": 1, "VtepMAC": mac(6, host)})
    return Lease(
        ipaddress.IPv4Network(f"10.244.{host}.0/24") if v4 else None,
        ipaddress.IPv6Network(f"fd00:10:244:{host:x}::/64") if v6 else None,
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(f"198.18.0.{10 + host}") if v4 else UNSPECIFIED_V4,
            public_ipv6=ipaddress.IPv6Address(v6_public or public6(host)) if v6 else None,
            backend_type="vxlan",
            backend_data=json.dumps({"VNI": 1, "VtepMAC": mac(4, host)}) if v4 else None,
            backend_v6_data=data6 if v6 else None,
        ),
    )


Kernel = tuple[set[tuple[str, str, str, str]], set[tuple[str, str]], set[tuple[str, str]]]


def kernel(ns: str, dev: str = DEV6) -> Kernel:
    """(proto-44 routes of dev's family, permanent neighbours on dev, FDB remotes on dev)."""
    family = "-6" if dev == DEV6 else "-4"
    routes = {
        (str(r["dst"]), str(r.get("gateway")), str(r["dev"]),
         "onlink" if "onlink" in r.get("flags", []) else "")
        for r in ip_json(ns, family, "route", "show", "proto", "44")
    }
    neighbours = {(str(n["dst"]), str(n["lladdr"]))
                  for n in ip_json(ns, "neigh", "show", "dev", dev, "nud", "permanent")}
    out = sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", dev)
    fdb = {(str(f["mac"]), str(f["dst"])) for f in (json.loads(out) if out.strip() else [])
           if "dst" in f and "self" in f.get("flags", [])}
    return routes, neighbours, fdb


def expected6(*hosts: int) -> Kernel:
    return (
        {(f"fd00:10:244:{h:x}::/64", f"fd00:10:244:{h:x}::", DEV6, "onlink") for h in hosts},
        {(f"fd00:10:244:{h:x}::", mac(6, h)) for h in hosts},
        {(mac(6, h), public6(h)) for h in hosts},
    )


def expected4(*hosts: int) -> Kernel:
    return (
        {(f"10.244.{h}.0/24", f"10.244.{h}.0", DEV4, "onlink") for h in hosts},
        {(f"10.244.{h}.0", mac(4, h)) for h in hosts},
        {(mac(4, h), f"198.18.0.{10 + h}") for h in hosts},
    )


def device(ns: str, dev: str = DEV6) -> dict[str, Any]:
    return ip_json(ns, "-d", "addr", "show", dev)[0]


def addresses6(ns: str) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in device(ns)["addr_info"]
            if a["family"] == "inet6" and not a["local"].startswith("fe80:")]


# --- registration -------------------------------------------------------------------------------


def test_dual_stack_register_makes_a_device_per_family_and_advertises_both_macs(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    network, manager = a.register()
    info4, info6 = device(a.ns, DEV4), device(a.ns, DEV6)
    data6 = info6["linkinfo"]["info_data"]
    assert (data6["id"], data6["port"], data6.get("local", data6.get("local6")), data6["link"]) == (
        1, 8472, "fd00:198:18::1", "ul0")
    assert info4["linkinfo"]["info_data"]["local"] == "198.18.0.1"
    # the IPv6 outer header is 20 bytes longer: the device and FLANNEL_MTU leave room for it
    assert (info4["mtu"], info6["mtu"], network.mtu) == (1450, 1430, 1430)
    assert "UP" in info6["flags"]
    assert addresses6(a.ns) == ["fd00:10:244:1::/128"]
    accept_ra = f"/proc/sys/net/ipv6/conf/{DEV6}/accept_ra"
    assert sh("ip", "netns", "exec", a.ns, "cat", accept_ra).strip() == "0"
    mac4, mac6 = str(info4["address"]), str(info6["address"])
    assert mac4 != mac6 and int(mac6[:2], 16) & 0x03 == 0x02
    assert [encode_attrs(attrs) for attrs in manager.acquired] == [
        ('{"PublicIP":"198.18.0.1","PublicIPv6":"fd00:198:18::1","BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},'
        f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}')
    ]


def test_ipv6_only_register_makes_only_the_v6_device_and_leaves_publicip_unset(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    network, manager = a.register(ipv4=False)
    assert ip_json(a.ns, "link", "show") and not [
        link for link in ip_json(a.ns, "link", "show") if link["ifname"] == DEV4]
    mac6 = str(device(a.ns)["address"])
    assert [encode_attrs(attrs) for attrs in manager.acquired] == [
        ('{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::1","BackendType":"vxlan",'
        f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}')
    ]
    assert network.mtu == 1430
    assert network.reconcile([peer(2, v4=False)]).failed == ()
    assert kernel(a.ns) == expected6(2)


def test_previous_v6_mac_is_kept_from_the_registry_context(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    config = net_config()
    context = BackendContext(
        a.ext, a.netlink, config.backend,
        previous_data='{"VNI":1,"VtepMAC":"0a:00:00:00:00:42"}',
        previous_v6_data='{"VNI":1,"VtepMAC":"0a:00:00:00:00:66"}',
    )
    lookup("vxlan").build(context).register_network(
        FakeSubnetManager(config, "10.244.1.0/24", "fd00:10:244:1::/64"), config)
    assert device(a.ns, DEV4)["address"] == "0a:00:00:00:00:42"
    assert device(a.ns, DEV6)["address"] == "0a:00:00:00:00:66"


def test_no_ipv6_underlay_address_is_a_clear_error(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    a.ext = ExternalInterface("ul0", a.ext.index, 1500, a.ext.iface_addr, a.ext.ext_addr)
    with pytest.raises(InterfaceError, match="no IPv6 address"):
        a.register()


# --- reconcile and repair -------------------------------------------------------------------------


def test_dual_peers_get_both_families_and_a_second_pass_is_a_noop(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = [peer(2), peer(3)]
    report = network.reconcile(peers)
    assert (report.added, report.removed, report.failed, report.peers) == (12, 0, (), 2)
    assert kernel(a.ns, DEV4) == expected4(2, 3)
    assert kernel(a.ns, DEV6) == expected6(2, 3)
    with caplog.at_level(logging.INFO, logger="backends"):
        report = network.reconcile(peers)
    assert (report.added, report.removed, report.device_recreated) == (0, 0, False)
    assert [r.getMessage() for r in caplog.records] == []


def test_hand_deleted_ipv6_entries_are_restored_and_ipv4_is_untouched(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = [peer(2), peer(3), peer(4)]
    network.reconcile(peers)
    sh("ip", "-n", a.ns, "-6", "route", "del", "fd00:10:244:2::/64")
    sh("ip", "-n", a.ns, "neigh", "del", "fd00:10:244:3::", "dev", DEV6)
    sh("bridge", "-n", a.ns, "fdb", "del", mac(6, 4), "dev", DEV6, "self", "dst", public6(4))
    assert kernel(a.ns) != expected6(2, 3, 4)
    report = network.reconcile(peers)
    assert (report.added, report.removed) == (3, 0)
    assert kernel(a.ns) == expected6(2, 3, 4)
    assert kernel(a.ns, DEV4) == expected4(2, 3, 4)


def test_deleted_v6_device_is_recreated_with_its_mac_address_and_peers(
    pair: tuple[Node, Node],
) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = [peer(2), peer(3)]
    network.reconcile(peers)
    before4, before6 = device(a.ns, DEV4), device(a.ns, DEV6)
    sh("ip", "-n", a.ns, "link", "del", DEV6)
    report = network.reconcile(peers)
    assert report.device_recreated and report.added == 6
    info = device(a.ns)
    assert (info["address"], info["mtu"]) == (before6["address"], 1430)
    assert addresses6(a.ns) == ["fd00:10:244:1::/128"]
    assert kernel(a.ns) == expected6(2, 3)
    assert device(a.ns, DEV4)["ifindex"] == before4["ifindex"]  # IPv4 untouched
    assert kernel(a.ns, DEV4) == expected4(2, 3)


def test_a_peer_of_one_family_is_programmed_for_it_and_reported_once(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    network, _ = a.register()
    only4, only6 = peer(2, v6=False), peer(3, v4=False)
    bad_mac6 = peer(4, v6_data='{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}')
    with caplog.at_level(logging.WARNING, logger="backends.vxlan"):
        for _ in range(3):
            report = network.reconcile([only4, only6, bad_mac6, peer(5)])
    assert report.failed == ()
    assert kernel(a.ns, DEV4) == expected4(2, 4, 5)
    assert kernel(a.ns, DEV6) == expected6(3, 5)
    reasons = {s.key: s.reason for s in report.skipped}
    assert set(reasons) == {only4.key, only6.key, bad_mac6.key}
    assert reasons[only4.key] == "IPv6 not programmed: no IPv6 subnet (the other family is)"
    assert reasons[only6.key] == "IPv4 not programmed: no IPv4 subnet (the other family is)"
    assert "IPv6 not programmed: VtepMAC ff:ff:ff:ff:ff:ff is a multicast" in reasons[bad_mac6.key]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3, warned  # one line per peer, not one per pass


def test_direct_routing_for_ipv6_peers_on_the_underlay_segment(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register(DirectRouting=True)
    near = peer(2, v6_public="fd00:198:18::2")
    far = peer(3, v6_public="2001:db8::3")  # no route to it: vxlan
    assert network.reconcile([near, far]).failed == ()
    routes, neighbours, fdb = kernel(a.ns)
    assert ("fd00:10:244:2::/64", "fd00:198:18::2", "ul0", "") in routes
    assert ("fd00:10:244:3::/64", "fd00:10:244:3::", DEV6, "onlink") in routes
    assert {n[0] for n in neighbours} == {"fd00:10:244:3::"}
    assert {f[1] for f in fdb} == {"2001:db8::3"}
    again = network.reconcile([near, far])
    assert (again.added, again.removed) == (0, 0)


def test_events_program_only_the_changed_peer_in_both_families(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, _ = a.register()
    peers = {p.key: p for p in (peer(2), peer(3))}
    network.reconcile(list(peers.values()))

    def event(changes: dict[str, Lease | None]) -> ReconcileReport:
        return apply_event(network, peers, changes)

    added = event({peer(4).key: peer(4)})
    assert (added.added, added.removed) == (6, 0)
    assert kernel(a.ns) == expected6(2, 3, 4) and kernel(a.ns, DEV4) == expected4(2, 3, 4)
    gone = event({peer(3).key: None})
    assert (gone.added, gone.removed) == (0, 6)
    assert kernel(a.ns) == expected6(2, 4) and kernel(a.ns, DEV4) == expected4(2, 4)


# --- a real IPv6 data path ---------------------------------------------------------------------


def test_pods_reach_each_other_over_ipv6_vxlan(
    pair: tuple[Node, Node], netns_factory: Callable[[str], str]
) -> None:
    a, b = pair
    net_a, _ = a.register(ipv4=False)
    net_b, _ = b.register(ipv4=False)
    pod = netns_factory("v6pod")  # fd00:10:244:2::5 behind b, b's end of the veth is ::1
    sh("ip", "-n", b.ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
       "netns", pod)
    topology.add_address(b.ns, "vpod", ipaddress.IPv6Interface("fd00:10:244:2::1/64"))
    topology.set_up(b.ns, "vpod")
    topology.add_address(pod, "eth0", ipaddress.IPv6Interface("fd00:10:244:2::5/64"))
    topology.set_up(pod, "eth0")
    sh("ip", "-n", pod, "-6", "route", "add", "default", "via", "fd00:10:244:2::1")
    topology.write_sysctl(b.ns, "net.ipv6.conf.all.forwarding", "1")
    assert net_a.reconcile([net_b.lease]).failed == ()
    assert net_b.reconcile([net_a.lease]).failed == ()
    # the device address may still be in duplicate address detection: ping until it answers
    ping = ["ip", "netns", "exec", a.ns, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2",
            "-w", "30", "fd00:10:244:2::5"]
    done = subprocess.run(ping, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    stats = ip_json(b.ns, "-s", "link", "show", DEV6)[0]["stats64"]
    assert stats["rx"]["packets"] >= 3  # the path really is VXLAN over IPv6
