"""Events cost what they change in the host-gw, udp and wireguard backends.

Each backend is driven with a recording fake of its kernel side: a full pass
programs everything, an event only the peers it changed (and the result is
what a full pass over the same leases gives); a peer that conflicts with
another falls back to the full computation.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from backends.base import ExternalInterface, KernelProbe
from backends.hostgw import HostGwNetwork
from backends.hostgw_state import BACKEND_TYPE as HOSTGW
from backends.hostgw_state import desired_state, hostgw_peers
from backends.model import DataplaneState, KernelObject, Route
from backends.netlink import ApplyResult, LinkState
from backends.udp_packet import RouteTable
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
from subnet.lease import Lease, LeaseAttrs

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
