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
from collections.abc import Sequence
from dataclasses import replace

from backends.base import ExternalInterface, ReconcileReport, ipv4_network, summarize
from backends.netlink import LinkState, Netlink, VxlanSpec
from backends.skiplog import SkipLog
from backends.udp_packet import ForwardStats
from backends.vxlan_state import (
    BACKEND_TYPE,
    desired_state,
    encode_backend_data,
    parse_mac,
    parse_options,
    vtep_mac,
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

    def reconcile(self, peers: Sequence[Lease], full: bool = True) -> ReconcileReport:
        ifindex, recreated = self._ensure_device()
        usable, skipped = vxlan_peers(self._lease, peers, self._networks, self._spec.vni)
        self._skips.report(skipped)
        direct = self._direct_peers([p.public_ip for p in usable])
        desired = desired_state(usable, ifindex, direct)
        result = self._netlink.sync(
            desired, [ifindex], [socket.AF_INET], fresh=full or recreated
        )
        return summarize(
            result.applied, result.failed, skipped=skipped, peers=len(usable),
            device_recreated=recreated,
        )

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
