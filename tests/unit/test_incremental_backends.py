"""Events cost what they change in the vxlan, host-gw, udp and wireguard backends.

Each backend is driven with a recording fake of its kernel side: a full pass
programs everything, an event only the peers it changed (and the result is
what a full pass over the same leases gives); a peer that conflicts with
another falls back to the full computation.  A vxlan full pass also reuses what
did not change (decoded BackendData, per-peer objects, the desired state itself).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from backends.base import ExternalInterface, KernelProbe, RouteLookup
from backends.hostgw import HostGwNetwork
from backends.hostgw_state import BACKEND_TYPE as HOSTGW
from backends.hostgw_state import desired_state, hostgw_peers
from backends.model import DataplaneState, KernelObject, Route
from backends.netlink import ApplyResult, LinkState, VxlanAttrs, VxlanSpec
from backends.udp_packet import RouteTable
from backends.vxlan import VxlanNetwork
from backends.vxlan_state import desired_state as vxlan_desired_state
from backends.vxlan_state import family_peers
from backends.wireguard import WireguardNetwork
from backends.wireguard_state import BACKEND_TYPE as WIREGUARD
from backends.wireguard_state import (
    DeviceState,
    PeerPlan,
    WireguardOptions,
    apply_plan,
    encode_backend_data,
    plan_peers,
    public_key,
    tunnels,
    wireguard_peers,
)
from subnet.lease import IPAddress, Lease, LeaseAttrs

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
EXT = ExternalInterface("eth1", 3, 1500, ipaddress.IPv4Address("192.168.0.1"),
                        ipaddress.IPv4Address("192.168.0.1"))


def lease(third: int, backend: str = HOSTGW, data: str | None = None) -> Lease:
    return Lease(
        subnet=ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        ipv6_subnet=None,
        attrs=LeaseAttrs(public_ip=ipaddress.IPv4Address(f"192.168.0.{third}"),
                         backend_type=backend, backend_data=data),
    )


@dataclass
class RecordingNetlink:
    """The netlink calls a backend makes, and a kernel that takes every write."""

    full: list[DataplaneState] = field(default_factory=list)
    deltas: list[tuple[list[KernelObject], list[KernelObject]]] = field(default_factory=list)

    def sync(self, desired: DataplaneState, ifindexes: Iterable[int], families: Iterable[int],
             *, fresh: bool = True) -> ApplyResult:
        self.full.append(desired)
        return ApplyResult()

    def sync_changes(self, old: Iterable[KernelObject], new: Iterable[KernelObject],
                     desired: Callable[[], DataplaneState], ifindexes: Iterable[int],
                     families: Iterable[int], *, fresh: bool,
                     probe: KernelProbe | None = None) -> ApplyResult:
        self.deltas.append((list(old), list(new)))
        if fresh:
            self.full.append(desired())
        return ApplyResult()

    def link(self, name: str) -> LinkState:
        return LinkState(9, name, "wireguard", 1420, "", True)

    def set_link(self, index: int, **_: object) -> None:
        pass

    def sync_addresses(self, *_: object) -> None:
        pass


def routes(*thirds: int) -> list[KernelObject]:
    return [Route(ipaddress.IPv4Network(f"10.244.{t}.0/24"),
                  ipaddress.IPv4Address(f"192.168.0.{t}"), EXT.index) for t in thirds]


def test_hostgw_event_writes_only_the_changed_peers_route() -> None:
    netlink = RecordingNetlink()
    network = HostGwNetwork(netlink, EXT, lease(1), [NETWORK])  # type: ignore[arg-type]
    peers = {t: lease(t) for t in range(2, 50)}
    network.reconcile(list(peers.values()))
    assert len(netlink.full) == 1 and len(netlink.full[0].routes) == 48
    peers[60] = lease(60)
    network.reconcile(list(peers.values()), full=False, changes={lease(60).key: lease(60)})
    assert netlink.deltas == [([], routes(60))]
    del peers[7]
    network.reconcile(list(peers.values()), full=False, changes={lease(7).key: None})
    assert netlink.deltas[-1] == (routes(7), [])
    assert len(netlink.full) == 1  # no event looked at all peers
    network.reconcile(list(peers.values()), full=True, changes={})  # the periodic pass
    want, _ = hostgw_peers(lease(1), list(peers.values()), [NETWORK])
    assert netlink.full[-1] == desired_state(want, EXT.index)


def test_hostgw_conflicting_event_falls_back_to_a_full_computation() -> None:
    netlink = RecordingNetlink()
    network = HostGwNetwork(netlink, EXT, lease(1), [NETWORK])  # type: ignore[arg-type]
    peers = [lease(t) for t in range(2, 10)]
    network.reconcile(peers)
    overlapping = Lease(ipaddress.IPv4Network("10.244.3.128/25"), None,
                        LeaseAttrs(ipaddress.IPv4Address("192.168.0.99"), backend_type=HOSTGW))
    report = network.reconcile([*peers, overlapping], full=False,
                               changes={overlapping.key: overlapping})
    assert [s.key for s in report.skipped] == [overlapping.key]
    assert len(netlink.full) == 2 and len(netlink.full[-1].routes) == 8
    # with a peer skipped, events are full computations until none is
    network.reconcile(peers, full=False, changes={overlapping.key: None})
    assert len(netlink.full) == 3 and netlink.deltas == []
    network.reconcile([*peers, lease(20)], full=False, changes={lease(20).key: lease(20)})
    assert netlink.deltas == [([], routes(20))]


def test_udp_route_table_changes_equal_a_table_built_afresh() -> None:
    def ip(text: str) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(text)

    start = {ipaddress.IPv4Network(f"10.244.{t}.0/24"): ip(f"192.168.0.{t % 5}")
             for t in range(2, 40)}
    table = RouteTable(start, 8285)
    gone = [ipaddress.IPv4Network("10.244.3.0/24"), ipaddress.IPv4Network("10.244.8.0/24"),
            ipaddress.IPv4Network("10.244.200.0/24")]  # the last one was never there
    added = {ipaddress.IPv4Network("10.244.50.0/24"): ip("192.168.0.77"),
             ipaddress.IPv4Network("10.244.4.0/24"): ip("192.168.0.78")}  # replaced
    changed = table.changed(gone, added)
    after = {k: v for k, v in start.items() if k not in gone} | added
    fresh = RouteTable(after, 8285)
    assert len(changed) == len(fresh) == len(after)
    for third in range(256):
        dst = int(ipaddress.IPv4Address(f"10.244.{third}.9"))
        assert changed.lookup(dst) == fresh.lookup(dst)
    for last in range(100):
        assert changed.knows_source(f"192.168.0.{last}") == fresh.knows_source(f"192.168.0.{last}")
    assert table.lookup(int(ipaddress.IPv4Address("10.244.3.9"))) is not None  # untouched
    assert len(table) == len(start)


PRIVATE = bytes(range(1, 33))


def wg_lease(third: int) -> Lease:
    key = public_key(bytes([third]) * 32)
    return lease(third, WIREGUARD, encode_backend_data(key, 51820))


@dataclass
class RecordingDriver:
    """A WireGuard device that takes every plan; counts the reads."""

    name: str = "fake"
    device: DeviceState = field(default_factory=DeviceState)
    reads: int = 0
    plans: list[PeerPlan] = field(default_factory=list)

    def ensure_device(self) -> bool:
        return False

    def read(self) -> DeviceState:
        self.reads += 1
        return self.device

    def apply(self, plan: PeerPlan, private_key: bytes, listen_port: int) -> None:
        self.plans.append(plan)
        self.device = apply_plan(self.device, plan, private_key, listen_port)

    def close(self) -> None:
        pass


def test_wireguard_event_programs_only_the_changed_peer_without_reading_the_device() -> None:
    driver = RecordingDriver()
    options = WireguardOptions()
    (tunnel,) = tunnels(options, [4])
    own = wg_lease(1)
    network = WireguardNetwork(RecordingNetlink(), [(tunnel, driver)], options,  # type: ignore[arg-type]
                               own, [NETWORK], PRIVATE, public_key(PRIVATE), 1500)
    peers = {t: wg_lease(t) for t in range(2, 30)}
    network.reconcile(list(peers.values()))
    assert driver.reads == 1 and len(driver.plans[-1].put) == 28
    peers[40] = wg_lease(40)
    network.reconcile(list(peers.values()), full=False, changes={peers[40].key: peers[40]})
    assert driver.reads == 1
    assert [p.lease_key for p in driver.plans[-1].put] == [peers[40].key]
    assert driver.plans[-1].remove == ()
    gone = peers.pop(5)
    report = network.reconcile(list(peers.values()), full=False, changes={gone.key: None})
    assert driver.reads == 1 and driver.plans[-1].put == ()
    assert len(driver.plans[-1].remove) == 1 and report.peers == len(peers)
    # the device is what a full pass over the same leases wants
    usable, _ = wireguard_peers(own, public_key(PRIVATE), list(peers.values()), [NETWORK],
                                options, tunnel)
    assert not plan_peers(driver.device, usable, PRIVATE, tunnel.listen_port)
    network.reconcile(list(peers.values()), full=True, changes={})  # the safety net reads
    assert driver.reads == 2 and len(driver.plans) == 3  # and finds nothing to write


def test_wireguard_event_with_a_taken_key_falls_back_to_the_full_computation() -> None:
    driver = RecordingDriver()
    options = WireguardOptions()
    (tunnel,) = tunnels(options, [4])
    network = WireguardNetwork(RecordingNetlink(), [(tunnel, driver)], options,  # type: ignore[arg-type]
                               wg_lease(1), [NETWORK], PRIVATE, public_key(PRIVATE), 1500)
    peers = [wg_lease(t) for t in range(2, 6)]
    network.reconcile(peers)
    twin = lease(9, WIREGUARD, encode_backend_data(public_key(bytes([3]) * 32), 51820))
    report = network.reconcile([*peers, twin], full=False, changes={twin.key: twin})
    assert driver.reads == 2 and [s.key for s in report.skipped] == [twin.key]


# --- vxlan: a full pass reuses what did not change (decoded BackendData, per-peer kernel
# objects, the desired state itself), yet asks for exactly what a pass from scratch
# computes; events keep costing only the peers they change.

NETWORK6 = ipaddress.IPv6Network("fd00:10:244::/56")
LOCAL = ipaddress.IPv4Address("198.18.0.1")
LOCAL6 = ipaddress.IPv6Address("fd00:198:18::1")


def vx_lease(host: int, mac_byte: int | None = None, dual: bool = False) -> Lease:
    data = json.dumps({"VNI": 1, "VtepMAC": f"0a:00:00:00:{(mac_byte or host) >> 8:02x}:"
                                            f"{(mac_byte or host) & 0xFF:02x}"})
    return Lease(
        ipaddress.IPv4Network((int(NETWORK.network_address) + host * 256, 24)),
        ipaddress.IPv6Network(f"fd00:10:244:{host:x}::/64") if dual else None,
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(int(LOCAL) + host),
            public_ipv6=ipaddress.IPv6Address(int(LOCAL6) + host) if dual else None,
            backend_type="vxlan",
            backend_data=data,
            backend_v6_data=data.replace('"0a:', '"0e:') if dual else None,
        ),
    )


@dataclass
class VxlanKernel(RecordingNetlink):
    """RecordingNetlink with the VXLAN devices and ``route get`` (DirectRouting)."""

    ifindex: dict[str, int] = field(default_factory=lambda: {"flannel.1": 7, "flannel-v6.1": 8})
    direct: dict[IPAddress, int] = field(default_factory=dict)

    def link(self, name: str) -> LinkState:
        local = LOCAL if name == "flannel.1" else LOCAL6
        return LinkState(self.ifindex[name], name, "vxlan", 1450, "0a:ff:00:00:00:01", True,
                         VxlanAttrs(1, 8472, local, 2, False, False))

    def route_get(self, addr: IPAddress) -> list[RouteLookup]:
        via = self.direct.get(addr)
        if via is None:
            return [RouteLookup(2, ipaddress.IPv4Address("198.18.255.254"), None)]
        return [RouteLookup(via, None, None)]


def vx_network(kernel: VxlanKernel, dual: bool = False, direct: bool = False) -> VxlanNetwork:
    specs = [VxlanSpec("flannel.1", 1, 0, LOCAL, 2, mac="0a:ff:00:00:00:01", mtu=1450)]
    if dual:
        specs.append(VxlanSpec("flannel-v6.1", 1, 0, LOCAL6, 2, mac="0e:ff:00:00:00:01",
                               mtu=1430))
    own = vx_lease(0x3FF, mac_byte=0xFF01, dual=dual)
    nets = [NETWORK, NETWORK6] if dual else [NETWORK]
    return VxlanNetwork(kernel, specs, own, nets, direct_routing=direct)  # type: ignore[arg-type]


def from_scratch(net: VxlanNetwork, peers: list[Lease], version: int, ifindex: int,
                 direct: dict[IPAddress, int] | None = None) -> DataplaneState:
    nets = [NETWORK, NETWORK6] if version == 6 or net.lease.ipv6_subnet else [NETWORK]
    versions = [n.version for n in nets]
    found, _ = family_peers(net.lease, peers, nets, 1, versions)
    return vxlan_desired_state(found[version], ifindex, direct or {})


def test_an_unchanged_full_pass_hands_the_same_desired_state_back() -> None:
    kernel = VxlanKernel()
    net = vx_network(kernel)
    peers = [vx_lease(h) for h in range(1, 60)]
    net.reconcile(peers)
    net.reconcile(peers)
    assert kernel.full[1] is kernel.full[0]  # nothing rebuilt: cheap to compare
    # equal leases in new objects (a watch snapshot) still reuse it
    net.reconcile([replace(p) for p in peers])
    assert kernel.full[2] is kernel.full[0]
    assert kernel.full[0] == from_scratch(net, peers, 4, 7)


def test_a_full_pass_remakes_exactly_what_changed() -> None:
    kernel = VxlanKernel()
    net = vx_network(kernel)
    peers = [vx_lease(h) for h in range(1, 40)]
    net.reconcile(peers)
    # peer 6 with a new MAC, and a new peer
    changed = [*peers[:5], vx_lease(6, mac_byte=0x900), *peers[6:], vx_lease(50)]
    net.reconcile(changed)
    assert kernel.full[1] is not kernel.full[0]
    assert kernel.full[1] == from_scratch(net, changed, 4, 7)
    net.reconcile(changed[:-10])  # peers gone
    assert kernel.full[2] == from_scratch(net, changed[:-10], 4, 7)
    kernel.ifindex["flannel.1"] = 17  # the device was replaced: every object is remade
    net.reconcile(changed[:-10])
    assert kernel.full[3] == from_scratch(net, changed[:-10], 4, 17)


def test_direct_routing_changes_are_seen_by_a_full_pass() -> None:
    kernel = VxlanKernel()
    net = vx_network(kernel, direct=True)
    peers = [vx_lease(h) for h in range(1, 10)]
    net.reconcile(peers)
    assert kernel.full[0] == from_scratch(net, peers, 4, 7)
    moved = peers[3].attrs.public_ip
    kernel.direct[moved] = 2  # the peer is now on our segment
    net.reconcile(peers)
    assert kernel.full[1] == from_scratch(net, peers, 4, 7, {moved: 2})
    del kernel.direct[moved]
    net.reconcile(peers)
    assert kernel.full[2] == kernel.full[0]


def test_rejections_and_skip_reasons_are_those_of_a_pass_from_scratch() -> None:
    kernel = VxlanKernel()
    net = vx_network(kernel, dual=True)
    peers = [vx_lease(h, dual=True) for h in range(1, 20)]
    bad_mac = vx_lease(30, mac_byte=5, dual=True)  # peer 5's MACs: the younger claimant loses
    bad_mac = replace(bad_mac, claim_order=2.0)
    peers = [replace(p, claim_order=1.0) for p in peers] + [bad_mac]
    one_family = replace(vx_lease(31, dual=True),
                         attrs=replace(vx_lease(31, dual=True).attrs, backend_v6_data='{"VNI":2}'))
    report = net.reconcile([*peers, one_family])
    _, skipped = family_peers(net.lease, [*peers, one_family], [NETWORK, NETWORK6], 1, (4, 6))
    assert report.skipped == tuple(skipped) and len(skipped) == 2
    again = net.reconcile([*peers, one_family])  # the decoded views are reused: same answer
    assert again.skipped == report.skipped
    assert kernel.full[-2] == from_scratch(net, [*peers, one_family], 4, 7)
    assert kernel.full[-1] == from_scratch(net, [*peers, one_family], 6, 8)


def test_events_cost_what_they_change_and_conflicts_fall_back_to_a_full_pass() -> None:
    kernel = VxlanKernel()
    net = vx_network(kernel)
    table = {p.key: p for p in (vx_lease(h) for h in range(1, 30))}
    net.reconcile(list(table.values()))
    new = vx_lease(40)
    table[new.key] = new
    net.reconcile(list(table.values()), full=False, changes={new.key: new})
    assert len(kernel.full) == 1 and kernel.deltas[-1][0] == []
    assert len(kernel.deltas[-1][1]) == 3
    # the next full pass reuses the event's objects, and equals a pass from scratch
    net.reconcile(list(table.values()))
    assert kernel.full[-1] == from_scratch(net, list(table.values()), 4, 7)
    # a peer taking another's VTEP MAC is for the full pass, which skips it
    thief = vx_lease(41, mac_byte=3)
    table[thief.key] = thief
    report = net.reconcile(list(table.values()), full=False, changes={thief.key: thief})
    assert [s.key for s in report.skipped] == [thief.key] and len(kernel.full) == 3
