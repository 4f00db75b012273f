"""What the running backend implies for a node: device, overhead, port, peers (pure).

The doctor judges a node against the same rules the daemon applies, so the
peer split reuses the backends' own pure functions (a peer the daemon
refuses is reported with the daemon's reason).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from backends import hostgw_state, vxlan_state, wireguard_state
from backends.model import Skipped
from backends.peers import usable_peers
from backends.udp_packet import DEFAULT_PORT as UDP_PORT
from backends.udp_packet import ENCAP_OVERHEAD as UDP_OVERHEAD
from subnet.errors import ConfigError, PeerDataError
from subnet.lease import UNSPECIFIED_V4, IPNetwork, Lease
from subnet.netconf import NetConfig

VXLAN_KERNEL_PORT = 8472  # what port 0 means to the Linux vxlan driver
UDP_DEVICE = "flannel0"


@dataclass(frozen=True, slots=True)
class Profile:
    """The backend in use, as far as the checks care."""

    backend: str  # vxlan, host-gw, udp
    device: str  # the overlay device ("" for host-gw)
    overhead: int  # bytes of encapsulation
    port: int  # UDP port of the encapsulation (0: none)
    configured_mtu: int | None = None  # vxlan Backend.MTU: the underlay MTU to assume
    device6: str = ""  # vxlan: the IPv6 device (flannel-v6.<VNI>), there when IPv6 is enabled

    @property
    def encap(self) -> str:
        """How encapsulated traffic is described to a person, e.g. ``UDP 8472``."""
        return f"UDP {self.port}" if self.port else "plain routed traffic"


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer the daemon programs: its subnet, underlay address and VTEP MAC (vxlan)."""

    key: str
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    vtep_mac: str | None = None

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The subnet's network address: on the peer's overlay device (vxlan, udp)."""
        return self.subnet.network_address


def profile(config: NetConfig) -> Profile:
    """The profile of ``config``'s backend; ConfigError for a backend the doctor cannot judge."""
    kind = config.backend.type
    if kind == vxlan_state.BACKEND_TYPE:
        options = vxlan_state.parse_options(config.backend)
        return Profile(
            kind,
            options.device_name(),
            vxlan_state.ENCAP_OVERHEAD,
            options.port or VXLAN_KERNEL_PORT,
            options.mtu,
            options.device_name(6),
        )
    if kind == hostgw_state.BACKEND_TYPE:
        return Profile(kind, "", 0, 0)
    if kind == "udp":
        port = config.backend.option("Port") or UDP_PORT
        return Profile(kind, UDP_DEVICE, UDP_OVERHEAD, int(port))
    if kind == wireguard_state.BACKEND_TYPE:
        wg = wireguard_state.parse_options(config.backend)
        return Profile(kind, wireguard_state.DEVICE, wireguard_state.ENCAP_OVERHEAD,
                       wg.listen_port, wg.mtu)
    raise ConfigError(f"flannelctl doctor does not know the {kind!r} backend")


def networks(config: NetConfig) -> list[IPNetwork]:
    return [n for n in (config.network, config.ipv6_network) if n is not None]


def split_peers(
    prof: Profile, own: Lease, leases: Sequence[Lease], config: NetConfig
) -> tuple[list[Peer], list[Skipped]]:
    """The IPv4 peers the daemon programs and the ones it refuses, with its reasons."""
    others = [lease for lease in leases if lease.key != own.key]
    nets = networks(config)
    if prof.backend == vxlan_state.BACKEND_TYPE:
        vni = vxlan_state.parse_options(config.backend).vni
        found, skipped = vxlan_state.vxlan_peers(own, others, nets, vni)
        peers = [
            Peer(p.key, p.subnet, p.public_ip, p.vtep_mac)
            for p in found
            if isinstance(p.subnet, ipaddress.IPv4Network)
            and isinstance(p.public_ip, ipaddress.IPv4Address)
        ]
        return peers, skipped
    if prof.backend == hostgw_state.BACKEND_TYPE:
        routes, skipped = hostgw_state.hostgw_peers(own, others, nets)
        peers = [
            Peer(r.key, r.subnet, r.gateway)
            for r in routes
            if isinstance(r.subnet, ipaddress.IPv4Network)
            and isinstance(r.gateway, ipaddress.IPv4Address)
        ]
        return peers, skipped
    if prof.backend == wireguard_state.BACKEND_TYPE:
        return _wireguard_peers(own, others, config)
    usable, skipped = usable_peers(own, others, nets, None)  # udp accepts any backend type
    peers = [
        Peer(lease.key, lease.subnet, lease.attrs.public_ip)
        for lease in usable
        if lease.subnet is not None and lease.attrs.public_ip != UNSPECIFIED_V4
    ]
    return peers, skipped


def _wireguard_peers(
    own: Lease, others: Sequence[Lease], config: NetConfig
) -> tuple[list[Peer], list[Skipped]]:
    try:
        own_key = wireguard_state.decode_backend_data(own.attrs.backend_data).public_key
    except PeerDataError:
        own_key = b""
    options = wireguard_state.parse_options(config.backend)
    found, skipped = wireguard_state.wireguard_peers(own, own_key, others, networks(config),
                                                     options)
    peers = []
    for wg in found:
        subnet = next(iter(wg.allowed_ips))
        address = wg.endpoint[0]
        if isinstance(subnet, ipaddress.IPv4Network) and isinstance(address, ipaddress.IPv4Address):
            peers.append(Peer(wg.lease_key, subnet, address))
    return peers, skipped


def probe_address(prof: Profile, peer: Peer) -> ipaddress.IPv4Address:
    """Where the overlay probe for ``peer`` goes: the address on its overlay device, or
    for host-gw (which has none) its bridge gateway, network + 1."""
    if prof.backend == hostgw_state.BACKEND_TYPE:
        return peer.gateway + 1
    return peer.gateway


def own_lease(leases: Sequence[Lease], subnet: ipaddress.IPv4Network | None) -> Lease | None:
    """Our lease: the one for the subnet in subnet.env."""
    if subnet is None:
        return None
    return next((lease for lease in leases if lease.subnet == subnet), None)
