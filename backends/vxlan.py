"""The vxlan backend: a VXLAN device per address family and per-peer kernel state.

Design: every event and every resync tick runs one path, :meth:`VxlanNetwork.reconcile`:
make sure ``flannel.<VNI>`` exists with our MAC, MTU and address (recreating
it if somebody deleted it), compute the desired neighbours, FDB entries and
routes from the peer leases (a pure function), observe what the kernel has
of ours, and apply the difference.  So a restart flushes nothing, manual
damage is repaired on the next pass, and a removed peer's entries go.

Only IPv4 is wired up for now; the pure parts already take the family.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from backends.base import (
    ExternalInterface,
    KernelProbe,
    ReconcileReport,
    ipv4_network,
    summarize,
)
from backends.model import DataplaneState, KernelObject, Skipped
from backends.netlink import LinkState, Netlink, VxlanSpec
from backends.peers import PeerIndex
from backends.skiplog import SkipLog
from backends.udp_packet import ForwardStats
from backends.vxlan_state import (
    BACKEND_TYPE,
    VxlanPeer,
    encode_backend_data,
    own_vtep_mac,
    parse_mac,
    parse_options,
    peer_objects,
    vtep_mac,
    vxlan_peer,
    vxlan_peers,
)
from subnet.errors import (
    DataplaneError,
    InterfaceError,
    LeaseError,
    PeerDataError,
)
from subnet.lease import IPAddress, IPNetwork, Lease, LeaseAttrs
from subnet.manager import SubnetManager
from subnet.netconf import BackendConfig, NetConfig

log = logging.getLogger(__name__)


class VxlanBackend:
    """Builds the vxlan :class:`VxlanNetwork`.

    ``previous_mac`` is the VTEP MAC this node advertised before (from its
    node annotation in kube mode, or its previous lease in etcd mode); it is
    used when the device has to be created, so peers keep a valid entry.
    """

    def __init__(
        self,
        ext: ExternalInterface,
        netlink: Netlink,
        backend_config: BackendConfig,
        previous_mac: str | None = None,
    ) -> None:
        self._ext = ext
        self._netlink = netlink
        self._options = parse_options(backend_config)
        self._previous_mac = _valid_mac(previous_mac)

    def register_network(self, manager: SubnetManager, config: NetConfig) -> VxlanNetwork:
        ipv4_network(config, "vxlan")
        if self._ext.ext_addr is None:
            raise InterfaceError(f"interface {self._ext.name} has no IPv4 address to advertise")
        opts = self._options
        spec = VxlanSpec(
            name=opts.device_name(4),
            vni=opts.vni,
            port=opts.port,
            local=self._ext.ext_addr,
            underlay=self._ext.index,
            learning=opts.learning,
            gbp=opts.gbp,
            mac=self._previous_mac or vtep_mac(os.urandom(6)),
            mtu=opts.device_mtu(self._ext.mtu),
        )
        link = self._netlink.ensure_vxlan(spec)
        spec = replace(spec, mac=link.mac)  # a reused device keeps its MAC
        attrs = LeaseAttrs(
            public_ip=self._ext.ext_addr,
            backend_type=BACKEND_TYPE,
            backend_data=encode_backend_data(opts.vni, link.mac),
        )
        lease = manager.acquire_lease(attrs)
        network = VxlanNetwork(
            self._netlink, spec, lease, config.networks(), direct_routing=opts.direct_routing
        )
        network.configure_device(link)
        return network


class VxlanNetwork:
    """Our lease and ``flannel.<VNI>``; :meth:`reconcile` programs the peers."""

    def __init__(
        self,
        netlink: Netlink,
        spec: VxlanSpec,
        lease: Lease,
        networks: Sequence[IPNetwork],
        *,
        direct_routing: bool = False,
    ) -> None:
        if lease.subnet is None:
            raise LeaseError(f"lease {lease.key} has no IPv4 subnet")
        if spec.mtu is None or spec.mac is None:
            raise ValueError("the device spec needs its MTU and MAC")
        self._netlink = netlink
        self._spec = spec
        self._lease = lease
        self._networks = tuple(networks)
        self._direct_routing = direct_routing
        self._device_mtu = spec.mtu
        self._address = ipaddress.ip_interface(f"{lease.subnet.network_address}/32")
        self._skips = SkipLog(log)
        self._ifindex: int | None = None
        # The last pass's usable peers, for events that touch only their own peers
        # (None after a pass that skipped a peer: then every event is a full pass).
        self._index: PeerIndex | None = None
        self._objects: dict[str, list[KernelObject]] = {}
        self._desired: DataplaneState | None = None

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return self._device_mtu

    @property
    def forward_stats(self) -> ForwardStats | None:
        return None  # the kernel forwards

    def configure_device(self, link: LinkState) -> None:
        """Give ``link`` our MAC, MTU, up state and (only) our address in the cluster networks."""
        self._netlink.set_link(
            link.index,
            mtu=None if link.mtu == self._device_mtu else self._device_mtu,
            mac=None if link.mac == self._spec.mac else self._spec.mac,
            up=None if link.up else True,
        )
        self._netlink.sync_addresses(link.index, [self._address], self._networks)

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        if full or self._ifindex is None:
            ifindex, recreated = self._ensure_device()
        else:
            ifindex, recreated = self._ifindex, False
        delta = None
        if (changes is not None and self._index is not None and ifindex == self._ifindex
                and not (full and self._direct_routing)):
            delta = self._apply_changes(changes, ifindex)
        skipped: Sequence[Skipped] = ()
        if delta is None:
            skipped = self._compute_all(peers, ifindex)
            result = self._netlink.sync(
                self._desired_state(), [ifindex], [socket.AF_INET], fresh=full or recreated
            )
        else:
            result = self._netlink.sync_changes(
                *delta, self._desired_state, [ifindex], [socket.AF_INET], fresh=full, probe=probe
            )
        return summarize(
            result.applied, result.failed, skipped=skipped, peers=len(self._objects),
            device_recreated=recreated,
        )

    def _compute_all(self, peers: Sequence[Lease], ifindex: int) -> list[Skipped]:
        """Every peer's objects from scratch; keeps the index when no peer was skipped."""
        usable, skipped = vxlan_peers(self._lease, peers, self._networks, self._spec.vni)
        self._skips.report(skipped)
        direct = self._direct_peers([p.public_ip for p in usable])
        self._objects = {
            p.key: peer_objects(p, ifindex, direct.get(p.public_ip)) for p in usable
        }
        self._ifindex = ifindex
        self._desired = None
        self._index = None if skipped else self._peer_index(peers, usable)
        return skipped

    def _apply_changes(
        self, changes: Mapping[str, Lease | None], ifindex: int
    ) -> tuple[list[KernelObject], list[KernelObject]] | None:
        """The changed peers' old and new objects, when none of them conflicts with
        anything (see :class:`PeerIndex`); None when every peer must be looked at."""
        index = self._index
        if index is None:
            return None
        added: list[VxlanPeer] = []
        old: list[KernelObject] = []
        for key, lease in changes.items():
            if index.release(key):
                old += self._objects.pop(key, ())
            if lease is None:
                continue
            try:
                peer = vxlan_peer(lease, self._spec.vni)
            except PeerDataError:
                peer = None
            if peer is None or not index.admit(lease, (peer.vtep_mac,)):
                self._index = None  # a full computation sorts out who keeps what, and says why
                return None
            added.append(peer)
        direct = self._direct_peers([p.public_ip for p in added])
        new: list[KernelObject] = []
        for peer in added:
            self._objects[peer.key] = peer_objects(peer, ifindex, direct.get(peer.public_ip))
            new += self._objects[peer.key]
        if old or new:
            self._desired = None
        return old, new

    def _desired_state(self) -> DataplaneState:
        """All peers' objects (the same object while nothing changes: cheap to compare)."""
        if self._desired is None:
            self._desired = DataplaneState.of(
                [obj for objs in self._objects.values() for obj in objs]
            )
        return self._desired

    def _peer_index(self, peers: Sequence[Lease], usable: Sequence[VxlanPeer]) -> PeerIndex:
        mac = {p.key: p.vtep_mac for p in usable}
        index = PeerIndex(self._lease, self._networks, BACKEND_TYPE,
                          [m for m in (own_vtep_mac(self._lease),) if m])
        for lease in peers:
            index.hold(lease, (mac[lease.key],))
        return index

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        """The kernel read of a full pass (not with DirectRouting: its full pass looks
        every peer's route up again on the loop thread)."""
        return None if self._direct_routing else self._netlink.begin_probe()

    def close(self) -> None:
        """Nothing runs in the background; the device and routes stay for a restart."""

    def _ensure_device(self) -> tuple[int, bool]:
        """Check the device each pass: its index, and whether it had to be (re)created."""
        link = self._netlink.link(self._spec.name)
        recreated = link is None or bool(self._spec.incompatibility(link))
        if link is None or recreated:
            log.warning(
                "device %s is missing or was replaced; recreating it with MAC %s",
                self._spec.name,
                self._spec.mac,
            )
            link = self._netlink.ensure_vxlan(self._spec)
        self.configure_device(link)
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
