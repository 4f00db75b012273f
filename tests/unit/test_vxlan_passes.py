"""The vxlan backend's passes against a recording fake kernel side.

A full pass reuses what did not change (decoded BackendData, per-peer kernel
objects, the desired state itself), yet always asks for exactly what a pass
from scratch computes; events keep costing only the peers they change.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from backends.base import KernelProbe, RouteLookup
from backends.model import DataplaneState, KernelObject
from backends.netlink import ApplyResult, LinkState, VxlanAttrs, VxlanSpec
from backends.vxlan import VxlanNetwork
from backends.vxlan_state import desired_state, family_peers
from subnet.lease import IPAddress, Lease, LeaseAttrs

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
NETWORK6 = ipaddress.IPv6Network("fd00:10:244::/56")
LOCAL = ipaddress.IPv4Address("198.18.0.1")
LOCAL6 = ipaddress.IPv6Address("fd00:198:18::1")


def lease(host: int, mac_byte: int | None = None, dual: bool = False) -> Lease:
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
class FakeKernel:
    """Records what the backend asks for; every write succeeds."""

    ifindex: dict[str, int] = field(default_factory=lambda: {"flannel.1": 7, "flannel-v6.1": 8})
    full: list[DataplaneState] = field(default_factory=list)
    deltas: list[tuple[list[KernelObject], list[KernelObject]]] = field(default_factory=list)
    direct: dict[IPAddress, int] = field(default_factory=dict)

    def link(self, name: str) -> LinkState:
        local = LOCAL if name == "flannel.1" else LOCAL6
        return LinkState(self.ifindex[name], name, "vxlan", 1450, "0a:ff:00:00:00:01", True,
                         VxlanAttrs(1, 8472, local, 2, False, False))

    def set_link(self, *_: object, **__: object) -> None:
        pass

    def sync_addresses(self, *_: object) -> None:
        pass

    def route_get(self, addr: IPAddress) -> list[RouteLookup]:
        via = self.direct.get(addr)
        if via is None:
            return [RouteLookup(2, ipaddress.IPv4Address("198.18.255.254"), None)]
        return [RouteLookup(via, None, None)]

    def sync(self, desired: DataplaneState, ifindexes: Iterable[int], families: Iterable[int],
             *, fresh: bool = True) -> ApplyResult:
        self.full.append(desired)
        return ApplyResult()

    def sync_changes(self, old: Iterable[KernelObject], new: Iterable[KernelObject],
                     desired: Callable[[], DataplaneState], ifindexes: Iterable[int],
                     families: Iterable[int], *, fresh: bool,
                     probe: KernelProbe | None = None) -> ApplyResult:
        self.deltas.append((list(old), list(new)))
        return ApplyResult()


def network(kernel: FakeKernel, dual: bool = False, direct: bool = False) -> VxlanNetwork:
    specs = [VxlanSpec("flannel.1", 1, 0, LOCAL, 2, mac="0a:ff:00:00:00:01", mtu=1450)]
    if dual:
        specs.append(VxlanSpec("flannel-v6.1", 1, 0, LOCAL6, 2, mac="0e:ff:00:00:00:01",
                               mtu=1430))
    own = lease(0x3FF, mac_byte=0xFF01, dual=dual)
    nets = [NETWORK, NETWORK6] if dual else [NETWORK]
    return VxlanNetwork(kernel, specs, own, nets, direct_routing=direct)  # type: ignore[arg-type]


def from_scratch(net: VxlanNetwork, peers: list[Lease], version: int, ifindex: int,
                 direct: dict[IPAddress, int] | None = None) -> DataplaneState:
    nets = [NETWORK, NETWORK6] if version == 6 or net.lease.ipv6_subnet else [NETWORK]
    versions = [n.version for n in nets]
    found, _ = family_peers(net.lease, peers, nets, 1, versions)
    return desired_state(found[version], ifindex, direct or {})


def test_an_unchanged_full_pass_hands_the_same_desired_state_back() -> None:
    kernel = FakeKernel()
    net = network(kernel)
    peers = [lease(h) for h in range(1, 60)]
    net.reconcile(peers)
    net.reconcile(peers)
    assert kernel.full[1] is kernel.full[0]  # nothing rebuilt: cheap to compare
    # equal leases in new objects (a watch snapshot) still reuse it
    net.reconcile([replace(p) for p in peers])
    assert kernel.full[2] is kernel.full[0]
    assert kernel.full[0] == from_scratch(net, peers, 4, 7)


def test_a_full_pass_remakes_exactly_what_changed() -> None:
    kernel = FakeKernel()
    net = network(kernel)
    peers = [lease(h) for h in range(1, 40)]
    net.reconcile(peers)
    changed = [*peers[:5], lease(6, mac_byte=0x900), *peers[6:], lease(50)]  # new MAC, new peer
    net.reconcile(changed)
    assert kernel.full[1] is not kernel.full[0]
    assert kernel.full[1] == from_scratch(net, changed, 4, 7)
    net.reconcile(changed[:-10])  # peers gone
    assert kernel.full[2] == from_scratch(net, changed[:-10], 4, 7)
    kernel.ifindex["flannel.1"] = 17  # the device was replaced: every object is remade
    net.reconcile(changed[:-10])
    assert kernel.full[3] == from_scratch(net, changed[:-10], 4, 17)


def test_direct_routing_changes_are_seen_by_a_full_pass() -> None:
    kernel = FakeKernel()
    net = network(kernel, direct=True)
    peers = [lease(h) for h in range(1, 10)]
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
    kernel = FakeKernel()
    net = network(kernel, dual=True)
    peers = [lease(h, dual=True) for h in range(1, 20)]
    bad_mac = lease(30, mac_byte=5, dual=True)  # peer 5's MACs: the younger claimant loses
    bad_mac = replace(bad_mac, claim_order=2.0)
    peers = [replace(p, claim_order=1.0) for p in peers] + [bad_mac]
    one_family = replace(lease(31, dual=True),
                         attrs=replace(lease(31, dual=True).attrs, backend_v6_data='{"VNI":2}'))
    report = net.reconcile([*peers, one_family])
    _, skipped = family_peers(net.lease, [*peers, one_family], [NETWORK, NETWORK6], 1, (4, 6))
    assert report.skipped == tuple(skipped) and len(skipped) == 2
    again = net.reconcile([*peers, one_family])  # the decoded views are reused: same answer
    assert again.skipped == report.skipped
    assert kernel.full[-2] == from_scratch(net, [*peers, one_family], 4, 7)
    assert kernel.full[-1] == from_scratch(net, [*peers, one_family], 6, 8)


def test_events_cost_what_they_change_and_conflicts_fall_back_to_a_full_pass() -> None:
    kernel = FakeKernel()
    net = network(kernel)
    table = {p.key: p for p in (lease(h) for h in range(1, 30))}
    net.reconcile(list(table.values()))
    new = lease(40)
    table[new.key] = new
    net.reconcile(list(table.values()), full=False, changes={new.key: new})
    assert len(kernel.full) == 1 and kernel.deltas[-1][0] == []
    assert len(kernel.deltas[-1][1]) == 3
    # the next full pass reuses the event's objects, and equals a pass from scratch
    net.reconcile(list(table.values()))
    assert kernel.full[-1] == from_scratch(net, list(table.values()), 4, 7)
    # a peer taking another's VTEP MAC is for the full pass, which skips it
    thief = lease(41, mac_byte=3)
    table[thief.key] = thief
    report = net.reconcile(list(table.values()), full=False, changes={thief.key: thief})
    assert [s.key for s in report.skipped] == [thief.key] and len(kernel.full) == 3
