"""The vxlan backend: a VXLAN device per address family and per-peer kernel state.

Design: every event and every resync tick runs one path, :meth:`VxlanNetwork.reconcile`:
make sure each family's device (``flannel.<VNI>`` for IPv4, ``flannel-v6.<VNI>``
for IPv6, over the underlay address of that family) exists with our MAC, MTU
and address (recreating it if somebody deleted it), compute the desired
neighbours, FDB entries and routes of each family from the peer leases (a
pure function), observe what the kernel has of ours, and apply the
difference, one family at a time.  So a restart flushes nothing, manual
damage is repaired on the next pass, and a removed peer's entries go.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from backends.base import ExternalInterface, KernelProbe, ReconcileReport, summarize
from backends.model import DataplaneState, KernelObject, Skipped
from backends.netlink import ApplyFailure, HostAddress, LinkState, Netlink, VxlanSpec
from backends.peers import PeerIndex
from backends.plan import Change
from backends.skiplog import SkipLog
from backends.udp_packet import ForwardStats
from backends.vxlan_state import (
    PeerViews,
    VxlanPeer,
    check_config,
    lease_attrs,
    parse_mac,
    parse_options,
    peer_objects,
    screen_families,
    vtep_mac,
)
from subnet.errors import (
    DataplaneError,
    InterfaceError,
    LeaseError,
    PeerDataError,
)
from subnet.lease import IPAddress, IPNetwork, Lease
from subnet.manager import SubnetManager
from subnet.netconf import BackendConfig, NetConfig

log = logging.getLogger(__name__)


class VxlanBackend:
    """Builds the vxlan :class:`VxlanNetwork`.

    ``previous_macs`` (IP version -> MAC) are the VTEP MACs this node
    advertised before (from its node annotations in kube mode, or its previous
    lease in etcd mode); they are used when a device has to be created, so
    peers keep a valid entry.
    """

    def __init__(
        self,
        ext: ExternalInterface,
        netlink: Netlink,
        backend_config: BackendConfig,
        previous_macs: Mapping[int, str | None] | None = None,
    ) -> None:
        self._ext = ext
        self._netlink = netlink
        self._options = parse_options(backend_config)
        self._previous = {v: _valid_mac(m) for v, m in (previous_macs or {}).items()}

    def register_network(self, manager: SubnetManager, config: NetConfig) -> VxlanNetwork:
        check_config(config)
        versions = sorted({net.version for net in config.networks()})
        self._options.check_mtu(self._ext.mtu, versions)
        specs = [self._spec(version) for version in versions]
        links = [self._netlink.ensure_vxlan(spec) for spec in specs]
        specs = [replace(spec, mac=link.mac) for spec, link in zip(specs, links, strict=True)]
        attrs = lease_attrs(
            self._ext.ext_addr, self._ext.ext_addr6, self._options.vni,
            {spec.local.version: link.mac for spec, link in zip(specs, links, strict=True)
             if spec.local is not None},
        )
        lease = manager.acquire_lease(attrs)
        network = VxlanNetwork(
            self._netlink, specs, lease, config.networks(),
            direct_routing=self._options.direct_routing,
        )
        for link in links:
            network.configure_device(link, new=True)
        return network

    def _spec(self, version: int) -> VxlanSpec:
        """The device of one family, on the underlay address of that family."""
        local = self._ext.ext_addr if version == 4 else self._ext.ext_addr6
        if local is None:
            raise InterfaceError(
                f"interface {self._ext.name} has no IPv{version} address to advertise"
            )
        opts = self._options
        return VxlanSpec(
            name=opts.device_name(version),
            vni=opts.vni,
            port=opts.port,
            local=local,
            underlay=self._ext.index,
            learning=opts.learning,
            gbp=opts.gbp,
            mac=self._previous.get(version) or vtep_mac(os.urandom(6)),
            mtu=opts.device_mtu(self._ext.mtu, version),
        )


class _Device:
    """One family's VXLAN device and the kernel objects it serves, per peer."""

    def __init__(self, spec: VxlanSpec, address: HostAddress) -> None:
        if spec.mtu is None or spec.mac is None or spec.local is None:
            raise ValueError("the device spec needs its MTU, MAC and local address")
        self.spec = spec
        self.version: int = spec.local.version
        self.family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        self.mtu = spec.mtu
        self.mac = spec.mac
        self.address = address
        self.ifindex: int | None = None
        # per peer key: its kernel objects, and the peer view and direct interface they
        # were made from (a pass reuses them while both stay the same)
        self.peers: dict[str, tuple[tuple[KernelObject, ...], VxlanPeer, int | None]] = {}
        self._desired: DataplaneState | None = None

    def set_objects(self, peer: VxlanPeer, via_dev: int | None) -> tuple[KernelObject, ...]:
        """Make (or remake) one peer's objects; returns them."""
        objects = peer_objects(peer, self.ifindex or 0, via_dev)
        self.peers[peer.key] = (objects, peer, via_dev)
        self._desired = None
        return objects

    def drop_objects(self, key: str) -> tuple[KernelObject, ...]:
        self._desired = None
        made = self.peers.pop(key, None)
        return () if made is None else made[0]

    def refresh(self, ifindex: int, peers: Sequence[tuple[VxlanPeer, int | None]]) -> None:
        """Every peer's objects for a full pass.  A peer whose view and direct interface
        are the ones its objects were made from keeps them; when all do (and no peer
        came or went), so does :meth:`desired_state`."""
        old = self.peers if ifindex == self.ifindex else {}
        self.ifindex = ifindex
        self.peers = {}
        same = len(peers) == len(old)
        for peer, via_dev in peers:
            made = old.get(peer.key)
            if made is None or made[1] is not peer or made[2] != via_dev:
                same = False
                made = (peer_objects(peer, ifindex, via_dev), peer, via_dev)
            self.peers[peer.key] = made
        if not same:
            self._desired = None

    def desired_state(self) -> DataplaneState:
        """All peers' objects (the same object while nothing changes: cheap to compare)."""
        if self._desired is None:
            self._desired = DataplaneState.of(
                [obj for made in self.peers.values() for obj in made[0]]
            )
        return self._desired


class VxlanNetwork:
    """Our lease and a VXLAN device per family; :meth:`reconcile` programs the peers."""

    def __init__(
        self,
        netlink: Netlink,
        specs: Sequence[VxlanSpec],
        lease: Lease,
        networks: Sequence[IPNetwork],
        *,
        direct_routing: bool = False,
    ) -> None:
        if not specs:
            raise ValueError("at least one device")
        self._netlink = netlink
        self._lease = lease
        self._networks = tuple(networks)
        self._direct_routing = direct_routing
        self._vni = specs[0].vni
        self._devices = tuple(_Device(spec, self._own_address(spec)) for spec in specs)
        self._skips = SkipLog(log)
        self._views = PeerViews(self._vni, [dev.version for dev in self._devices])
        # The last pass's usable peers, for events that touch only their own peers
        # (None after a pass that skipped a peer: then every event is a full pass).
        self._index: PeerIndex | None = None

    def _own_address(self, spec: VxlanSpec) -> HostAddress:
        """The device's host address: our subnet's network address (/32, /128)."""
        version = spec.local.version if spec.local is not None else 4
        subnet = self._lease.subnet if version == 4 else self._lease.ipv6_subnet
        if subnet is None:
            raise LeaseError(f"IPv{version} is enabled but the lease {self._lease.key} has no "
                             f"IPv{version} subnet")
        return ipaddress.ip_interface(f"{subnet.network_address}/{subnet.max_prefixlen}")

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        """The smallest device MTU: pods of every family fit through their device."""
        return min(dev.mtu for dev in self._devices)

    @property
    def forward_stats(self) -> ForwardStats | None:
        return None  # the kernel forwards

    def configure_device(self, link: LinkState, new: bool = False) -> None:
        """Give ``link`` our MAC, MTU, up state and (only) our address in the cluster networks;
        a ``new`` IPv6 device also stops accepting router advertisements, as upstream's."""
        dev = self._device(link.name)
        self._netlink.set_link(
            link.index,
            mtu=None if link.mtu == dev.mtu else dev.mtu,
            mac=None if link.mac == dev.mac else dev.mac,
            up=None if link.up else True,
        )
        if new and dev.version == 6:
            self._netlink.disable_accept_ra(link.name)
        self._netlink.sync_addresses(link.index, [dev.address], self._networks)

    def _device(self, name: str) -> _Device:
        for dev in self._devices:
            if dev.spec.name == name:
                return dev
        raise ValueError(f"{name} is none of our devices")

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        recreated: set[int] = set()
        same = True
        ifindexes: dict[int, int] = {}
        for dev in self._devices:
            if full or dev.ifindex is None:
                ifindex, was_recreated = self._ensure_device(dev)
                if was_recreated:
                    recreated.add(dev.version)
            else:
                ifindex = dev.ifindex
            same = same and ifindex == dev.ifindex
            ifindexes[dev.version] = ifindex
        delta = None
        if (changes is not None and self._index is not None and same
                and not (full and self._direct_routing)):
            delta = self._apply_changes(changes)
        skipped: Sequence[Skipped] = ()
        if delta is None:
            skipped = self._compute_all(peers, ifindexes)
        applied: list[Change] = []
        failed: list[ApplyFailure] = []
        for dev in self._devices:
            scope = ([ifindexes[dev.version]], [dev.family])
            if delta is None:
                result = self._netlink.sync(
                    dev.desired_state(), *scope, fresh=full or dev.version in recreated
                )
            else:
                result = self._netlink.sync_changes(
                    *delta[dev.version], dev.desired_state, *scope, fresh=full, probe=probe
                )
            applied += result.applied
            failed += result.failed
        return summarize(
            applied, failed, skipped=skipped,
            peers=len({key for dev in self._devices for key in dev.peers}),
            device_recreated=bool(recreated),
        )

    def _compute_all(self, peers: Sequence[Lease], ifindexes: Mapping[int, int]) -> list[Skipped]:
        """Every peer's objects (those of unchanged peers reused); keeps the index when no
        peer was skipped."""
        found, skipped, self._index = screen_families(
            self._lease, peers, self._networks, self._views)
        self._skips.report(skipped)
        for dev in self._devices:
            usable = found[dev.version]
            direct = self._direct_peers([p.public_ip for p in usable])
            dev.refresh(ifindexes[dev.version], [(p, direct.get(p.public_ip)) for p in usable])
        return skipped

    def _apply_changes(
        self, changes: Mapping[str, Lease | None]
    ) -> dict[int, tuple[list[KernelObject], list[KernelObject]]] | None:
        """Per family, the changed peers' old and new objects, when none of them conflicts
        with anything (see :class:`PeerIndex`); None when every peer must be looked at."""
        index = self._index
        if index is None:
            return None
        added: list[dict[int, VxlanPeer]] = []
        old: dict[int, list[KernelObject]] = {dev.version: [] for dev in self._devices}
        for key, lease in changes.items():
            if index.release(key):
                for dev in self._devices:
                    old[dev.version] += dev.drop_objects(key)
            if lease is None:
                continue
            found = {version: peer for version, peer
                     in zip(self._views.versions, self._views.of(lease), strict=True)
                     if not isinstance(peer, str)}
            tokens = [(version, peer.vtep_mac) for version, peer in found.items()]
            if len(found) < len(self._devices) or not index.admit(lease, tokens):
                self._index = None  # a full computation sorts out who keeps what, and says why
                return None
            added.append(found)
        delta = {}
        for dev in self._devices:
            peers = [found[dev.version] for found in added]
            direct = self._direct_peers([p.public_ip for p in peers])
            new: list[KernelObject] = []
            for peer in peers:
                new += dev.set_objects(peer, direct.get(peer.public_ip))
            delta[dev.version] = (old[dev.version], new)
        return delta

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """The kernel read of a full pass (not with DirectRouting: its full pass looks
        every peer's route up again on the loop thread)."""
        return None if self._direct_routing else self._netlink.begin_probe()

    def close(self) -> None:
        """Nothing runs in the background; the devices and routes stay for a restart."""

    def _ensure_device(self, dev: _Device) -> tuple[int, bool]:
        """Check a device each pass: its index, and whether it had to be (re)created."""
        link = self._netlink.link(dev.spec.name)
        recreated = link is None or bool(dev.spec.incompatibility(link))
        if link is None or recreated:
            log.warning(
                "device %s is missing or was replaced; recreating it with MAC %s",
                dev.spec.name,
                dev.mac,
            )
            link = self._netlink.ensure_vxlan(dev.spec)
        self.configure_device(link, new=recreated)
        return link.index, recreated

    def _direct_peers(self, addrs: Sequence[IPAddress]) -> dict[IPAddress, int]:
        """Peers reachable without a gateway (one route, no via), with the interface."""
        if not self._direct_routing:
            return {}
        direct = {}
        for addr in addrs:
            try:
                lookups = self._netlink.route_get(addr)
            except DataplaneError as err:
                log.debug("route lookup of %s failed (%s); using vxlan for it", addr, err)
                continue
            if len(lookups) == 1 and lookups[0].gateway is None and lookups[0].ifindex:
                direct[addr] = lookups[0].ifindex
        return direct


def _valid_mac(mac: str | None) -> str | None:
    if mac is None:
        return None
    try:
        return parse_mac(mac)
    except PeerDataError:
        log.warning("ignoring previous VTEP MAC %r: not a usable MAC", mac)
        return None
