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
from subnet.lease import UNSPECIFIED_V4, IPAddress, IPNetwork, Lease
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
    device6: str = ""  # the IPv6 device (flannel-v6.<VNI>, flannel-wg-v6) when it is another one

    def device_of(self, version: int) -> str:
        """The overlay device that carries pod traffic of IP ``version``."""
        return self.device6 if version == 6 and self.device6 else self.device

    @property
    def encap(self) -> str:
        """How encapsulated traffic is described to a person, e.g. ``UDP 8472``."""
        return f"UDP {self.port}" if self.port else "plain routed traffic"


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer the daemon programs: its subnet, underlay address and VTEP MAC (vxlan)."""

    key: str
    subnet: IPNetwork
    public_ip: IPAddress
    vtep_mac: str | None = None

    @property
    def gateway(self) -> IPAddress:
        """The subnet's network address: on the peer's overlay device (vxlan, udp)."""
        return self.subnet.network_address


def profile(config: NetConfig) -> Profile:
    """The profile of ``config``'s backend; ConfigError for a backend the doctor cannot judge."""
    kind = config.backend.type
    if kind == vxlan_state.BACKEND_TYPE:
        options = vxlan_state.parse_options(config.backend)
        names = [options.device_name(v) for v in sorted({n.version for n in config.networks()})]
        return Profile(
            kind,
            names[0] if names else options.device_name(),
            vxlan_state.ENCAP_OVERHEAD,
            options.port or VXLAN_KERNEL_PORT,
            options.mtu,
            names[1] if len(names) > 1 else "",
        )
    if kind == hostgw_state.BACKEND_TYPE:
        return Profile(kind, "", 0, 0)
    if kind == "udp":
        port = config.backend.option("Port") or UDP_PORT
        return Profile(kind, UDP_DEVICE, UDP_OVERHEAD, int(port))
    if kind == wireguard_state.BACKEND_TYPE:
        wg = wireguard_state.parse_options(config.backend)
        devices = wireguard_state.tunnels(wg, [n.version for n in config.networks()]) or (
            wireguard_state.tunnels(wg, [4]))
        return Profile(kind, devices[0].name, wireguard_state.ENCAP_OVERHEAD,
                       devices[0].listen_port, wg.mtu,
                       devices[1].name if len(devices) > 1 else "")
    raise ConfigError(f"flannelctl doctor does not know the {kind!r} backend")


def networks(config: NetConfig) -> list[IPNetwork]:
    return [n for n in (config.network, config.ipv6_network) if n is not None]


def split_peers(
    prof: Profile, own: Lease, leases: Sequence[Lease], config: NetConfig
) -> tuple[list[Peer], list[Skipped]]:
    """The peers the daemon programs (one per peer subnet, of each family) and the ones it
    refuses, with its reasons."""
    others = [lease for lease in leases if lease.key != own.key]
    nets = networks(config)
    if prof.backend == vxlan_state.BACKEND_TYPE:
        vni = vxlan_state.parse_options(config.backend).vni
        found, skipped = vxlan_state.vxlan_peers(own, others, nets, vni)
        return [Peer(p.key, p.subnet, p.public_ip, p.vtep_mac) for p in found], skipped
    if prof.backend == hostgw_state.BACKEND_TYPE:
        routes, skipped = hostgw_state.hostgw_peers(own, others, nets)
        return [Peer(r.key, r.subnet, r.gateway) for r in routes], skipped
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
    """Per device (``flannel-wg``, ``flannel-wg-v6``), the daemon's own peer split."""
    data = own.attrs.backend_data if own.subnet is not None else own.attrs.backend_v6_data
    try:
        own_key = wireguard_state.decode_backend_data(data).public_key
    except PeerDataError:
        own_key = b""
    options = wireguard_state.parse_options(config.backend)
    nets = networks(config)
    peers: list[Peer] = []
    refused: list[Skipped] = []
    for tunnel in wireguard_state.tunnels(options, [n.version for n in nets]):
        found, skipped = wireguard_state.wireguard_peers(own, own_key, others, nets, options,
                                                         tunnel)
        refused += skipped
        peers += [Peer(wg.lease_key, subnet, wg.endpoint[0])
                  for wg in found for subnet in sorted(wg.allowed_ips, key=str)]
    return peers, wireguard_state.merge_skipped(refused)


def probe_address(prof: Profile, peer: Peer) -> IPAddress:
    """Where the overlay probe for ``peer`` goes: the address on its overlay device, or
    for host-gw (which has none) its bridge gateway, network + 1."""
    if prof.backend == hostgw_state.BACKEND_TYPE:
        return peer.gateway + 1
    return peer.gateway


def own_lease(
    leases: Sequence[Lease],
    subnet: ipaddress.IPv4Network | None,
    subnet6: ipaddress.IPv6Network | None = None,
) -> Lease | None:
    """Our lease: the one for the subnet (or, IPv6-only, the IPv6 subnet) in subnet.env."""
    if subnet is None and subnet6 is None:
        return None
    return next((lease for lease in leases
                 if (subnet is not None and lease.subnet == subnet)
                 or (subnet is None and lease.ipv6_subnet == subnet6)), None)
