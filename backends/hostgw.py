"""The host-gw backend: a plain route per peer through its public address.

Design: like vxlan, one path serves every event and every resync tick.
:meth:`HostGwNetwork.reconcile` computes the wanted routes from the peer
leases (pure, :mod:`backends.hostgw_state`), observes the routes of ours
(protocol 44) once per family, and applies the difference.  An event
recomputes and writes only the peers it changed, as vxlan does.  So a route
deleted by hand comes back on the next pass, a removed peer's route goes,
a restart flushes nothing, and routes we did not make are never touched.
There is no device: FLANNEL_MTU is the external interface's MTU.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence

from backends.base import ExternalInterface, KernelProbe, ReconcileReport, summarize
from backends.hostgw_state import (
    check_no_nat,
    lease_attrs,
    peer_routes,
    route,
    screen_hostgw_peers,
)
from backends.model import DataplaneState, KernelObject, Skipped
from backends.netlink import Netlink
from backends.peers import PeerEntries
from backends.skiplog import SkipLog
from backends.udp_packet import ForwardStats
from subnet.errors import ConfigError, InterfaceError
from subnet.lease import IPNetwork, Lease
from subnet.manager import SubnetManager
from subnet.netconf import NetConfig

log = logging.getLogger(__name__)


def check_config(config: NetConfig) -> None:
    """The address families this backend runs (shared with ``flannelctl netconf validate``)."""
    if not config.networks():
        raise ConfigError("the host-gw backend needs an IPv4 or IPv6 Network")


class HostGwBackend:
    """Builds the host-gw :class:`HostGwNetwork` on the external interface."""

    def __init__(self, ext: ExternalInterface, netlink: Netlink) -> None:
        self._ext = ext
        self._netlink = netlink

    def register_network(self, manager: SubnetManager, config: NetConfig) -> HostGwNetwork:
        check_config(config)
        networks = config.networks()
        versions = [net.version for net in networks]
        for version in versions:
            if (self._ext.ext_addr if version == 4 else self._ext.ext_addr6) is None:
                raise InterfaceError(f"interface {self._ext.name} has no IPv{version} address")
        check_no_nat(self._ext, versions)
        lease = manager.acquire_lease(lease_attrs(self._ext, versions))
        return HostGwNetwork(self._netlink, self._ext, lease, networks)


class HostGwNetwork:
    """Our lease and the routes to every peer subnet."""

    def __init__(
        self,
        netlink: Netlink,
        ext: ExternalInterface,
        lease: Lease,
        networks: Sequence[IPNetwork],
    ) -> None:
        self._netlink = netlink
        self._ext = ext
        self._lease = lease
        self._networks = tuple(networks)
        self._families = sorted(
            {socket.AF_INET if n.version == 4 else socket.AF_INET6 for n in networks}
        )
        self._versions = sorted({n.version for n in networks})
        self._skips = SkipLog(log)
        self._routes: PeerEntries[KernelObject] = PeerEntries()
        self._desired: DataplaneState | None = None

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return self._ext.mtu

    @property
    def forward_stats(self) -> ForwardStats | None:
        return None  # the kernel forwards

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        delta = None if changes is None else self._routes.change(changes, self._peer_routes)
        skipped: Sequence[Skipped] = ()
        if delta is None:
            skipped = self._compute_all(peers)
            result = self._netlink.sync(self._desired_state(), [], self._families, fresh=full)
        else:
            if delta[0] or delta[1]:
                self._desired = None
            result = self._netlink.sync_changes(
                *delta, self._desired_state, [], self._families, fresh=full, probe=probe
            )
        return summarize(result.applied, result.failed, skipped=skipped, peers=len(self._routes))

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        return self._netlink.begin_probe()

    def _compute_all(self, peers: Sequence[Lease]) -> list[Skipped]:
        """Every peer's routes from scratch; keeps the index when no peer was skipped."""
        usable, skipped, index = screen_hostgw_peers(self._lease, peers, self._networks)
        self._skips.report(skipped)
        routes: dict[str, list[KernelObject]] = {}
        for peer in usable:
            routes.setdefault(peer.key, []).append(route(peer, self._ext.index))
        self._routes.reset(index, routes)
        self._desired = None
        return skipped

    def _peer_routes(self, lease: Lease) -> tuple[list[KernelObject], tuple[()]] | None:
        found, missing = peer_routes(lease, self._versions)
        if not found or missing:  # the full computation reports what it lacks
            return None
        return [route(p, self._ext.index) for p in found], ()

    def _desired_state(self) -> DataplaneState:
        """All peers' routes (the same object while nothing changes: cheap to compare)."""
        if self._desired is None:
            self._desired = DataplaneState.of(self._routes.all())
        return self._desired

    def close(self) -> None:
        """Nothing runs in the background; routes stay for a restart."""
