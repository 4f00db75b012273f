"""The host-gw backend's pure parts: the NAT check, usable peers, desired routes.

Per usable peer and address family the kernel needs one route, as
upstream programs it: ``<peer subnet> via <peer public IP> dev <external
interface>`` (ours carry protocol id 44).  That only works when every node
shares an L2 segment; the lease carries no BackendData (``null``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial

from backends.base import ExternalInterface
from backends.model import DataplaneState, Route, Skipped
from backends.peers import PeerIndex, screen_peers
from subnet.errors import ConfigError
from subnet.lease import UNSPECIFIED_V4, IPAddress, IPNetwork, Lease, LeaseAttrs

BACKEND_TYPE = "host-gw"
NAT_MESSAGE = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
    "which is not supported by host-gw backend"
)


@dataclass(frozen=True, slots=True)
class HostGwPeer:
    """One peer subnet of one family and the address to route it through."""

    key: str
    subnet: IPNetwork
    gateway: IPAddress


def check_no_nat(ext: ExternalInterface, versions: Sequence[int]) -> None:
    """ConfigError (upstream's message) when an advertised address is not the interface's."""
    for version in versions:
        iface, public = (
            (ext.iface_addr, ext.ext_addr) if version == 4 else (ext.iface_addr6, ext.ext_addr6)
        )
        if public != iface:
            raise ConfigError(NAT_MESSAGE)


def lease_attrs(ext: ExternalInterface, versions: Sequence[int]) -> LeaseAttrs:
    """BackendType ``host-gw``, no BackendData, a public address per enabled family."""
    public_ip = ext.ext_addr if 4 in versions and ext.ext_addr is not None else UNSPECIFIED_V4
    return LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=ext.ext_addr6 if 6 in versions else None,
        backend_type=BACKEND_TYPE,
    )


def hostgw_peers(
    own: Lease, peers: Sequence[Lease], networks: Sequence[IPNetwork]
) -> tuple[list[HostGwPeer], list[Skipped]]:
    """Routes to program per family, and the peers skipped with reasons.

    A family of a usable peer is programmed when the peer has both a
    subnet and a public address of that family and we run that family.  A
    peer routed for one family only is also reported, with what the other
    lacks.
    """
    found, skipped, _ = screen_hostgw_peers(own, peers, networks)
    return found, skipped


def screen_hostgw_peers(
    own: Lease, peers: Sequence[Lease], networks: Sequence[IPNetwork]
) -> tuple[list[HostGwPeer], list[Skipped], PeerIndex | None]:
    """:func:`hostgw_peers`, and the pass's :class:`PeerIndex` when it skipped no peer."""
    usable, skipped, index = screen_peers(own, peers, networks, BACKEND_TYPE)
    versions = sorted({net.version for net in networks})
    result: list[HostGwPeer] = []
    for peer in usable:
        found, missing = peer_routes(peer, versions)
        if not found:
            skipped.append(Skipped(peer.key, "no public address for any family we route"))
        elif missing:
            skipped.append(Skipped(peer.key, "; ".join(missing)))
        result.extend(found)
    return result, skipped, None if skipped else index


def peer_routes(peer: Lease, versions: Collection[int]) -> tuple[list[HostGwPeer], list[str]]:
    """The routes of one peer, per family in ``versions`` where it has a subnet and a
    public address, and what each other family lacks."""
    found, missing = [], []
    for version in versions:
        subnet = peer.subnet if version == 4 else peer.ipv6_subnet
        gateway = peer.attrs.public_ipv6 if version == 6 else (
            None if peer.attrs.public_ip == UNSPECIFIED_V4 else peer.attrs.public_ip)
        if subnet is not None and gateway is not None:
            found.append(HostGwPeer(peer.key, subnet, gateway))
        else:
            what = "subnet" if subnet is None else "public address"
            missing.append(f"IPv{version} not routed: the lease has no IPv{version} {what}")
    return found, missing


def desired_state(peers: Sequence[HostGwPeer], ifindex: int) -> DataplaneState:
    """One route per peer subnet through its public address on the external interface."""
    return DataplaneState(frozenset(map(partial(route, ifindex=ifindex), peers)))


def route(peer: HostGwPeer, ifindex: int) -> Route:
    """The route to one peer subnet through its public address on ``ifindex``."""
    return Route(peer.subnet, peer.gateway, ifindex)
