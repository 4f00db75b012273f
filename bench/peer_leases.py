"""Fake peer nodes for the daemon benchmarks: leases derived from an index.

Peers live in 10.64.0.0 upwards; the node under test is confined to
10.127.0.0/16 by SubnetMin/SubnetMax, so it never takes a peer's subnet.
Dual-stack peers (``Peer(i, dual=True, backend=...)``, vxlan or host-gw) also
hold fd00:64:0:<i>::/64; the node's IPv6 subnet is confined to fd00:64:0:ff00::/56.  Their public
addresses lie in the node's on-link underlay prefixes, as host-gw needs.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

PREFIX = "/coreos.com/network"
CONFIG_KEY = PREFIX + "/config"
SUBNETS = PREFIX + "/subnets/"
NETWORK = ipaddress.IPv4Network("10.64.0.0/10")
NET_CONF = {
    "Network": str(NETWORK),
    "SubnetMin": "10.127.0.0",
    "SubnetMax": "10.127.255.0",
    "Backend": {"Type": "vxlan", "VNI": 1},
}
MAX_PEERS = (1 << 16) - 256  # peer subnets 10.64.0.0 .. below 10.127.0.0
PEER_PUBLIC_BASE = int(ipaddress.IPv4Address("198.19.0.0"))
NETWORK6 = ipaddress.IPv6Network("fd00:64::/48")
PEER_PUBLIC6_BASE = int(ipaddress.IPv6Address("fd00:198:18::1:0"))


def net_conf_dual(backend: str) -> dict[str, object]:
    """The dual-stack net-conf: NET_CONF's IPv4 part, IPv6 /64s of NETWORK6."""
    return {
        "Network": str(NETWORK),
        "SubnetMin": "10.127.0.0",
        "SubnetMax": "10.127.255.0",
        "EnableIPv6": True,
        "IPv6Network": str(NETWORK6),
        "IPv6SubnetMin": "fd00:64:0:ff00::",
        "IPv6SubnetMax": "fd00:64:0:ffff::",
        "Backend": {"Type": backend, "VNI": 1} if backend == "vxlan" else {"Type": backend},
    }


@dataclass(frozen=True, slots=True)
class Peer:
    """A fake peer node: subnets, underlay addresses and VTEP MACs derived from an index."""

    index: int
    generation: int = 0
    dual: bool = False  # a dual-stack peer; else an IPv4 one
    backend: str = "vxlan"  # or "host-gw" (dual-stack only)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        if not 0 <= self.index < MAX_PEERS:
            raise ValueError(f"peer index {self.index} out of range")
        return ipaddress.IPv4Network((int(NETWORK.network_address) + self.index * 256, 24))

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address)

    @property
    def subnet6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((int(NETWORK6.network_address) + (self.index << 64), 64))

    @property
    def routes(self) -> tuple[str, ...]:
        """The destinations of the routes the node programs for this peer."""
        return (str(self.subnet), str(self.subnet6)) if self.dual else (str(self.subnet),)

    def neighbours(self) -> dict[str, str]:
        """The permanent neighbours (address -> MAC) the node programs for this peer."""
        if self.backend != "vxlan":
            return {}
        found = {self.gateway: self.mac}
        if self.dual:
            found[str(self.subnet6.network_address)] = self.mac6
        return found

    def fdb(self) -> dict[str, str]:
        """The FDB entries (MAC -> remote VTEP) the node programs for this peer."""
        if self.backend != "vxlan":
            return {}
        found = {self.mac: self.public_ip}
        if self.dual:
            found[self.mac6] = self.public_ipv6
        return found

    @property
    def key(self) -> str:
        v6 = f"&{self.subnet6.network_address}-64" if self.dual else ""
        return f"{SUBNETS}{self.subnet.network_address}-24{v6}"

    @property
    def public_ip(self) -> str:
        return str(ipaddress.IPv4Address(PEER_PUBLIC_BASE + 1 + self.index))

    @property
    def public_ipv6(self) -> str:
        return str(ipaddress.IPv6Address(PEER_PUBLIC6_BASE + self.index))

    @property
    def mac(self) -> str:
        # locally administered unicast (0x0e), distinct per index and generation
        raw = bytes([0x0E, self.generation & 0xFF]) + self.index.to_bytes(4, "big")
        return ":".join(f"{b:02x}" for b in raw)

    @property
    def mac6(self) -> str:
        """The VTEP MAC of the peer's IPv6 device (``BackendV6Data``)."""
        # the index takes two bytes at most (MAX_PEERS): 0x80 above them sets it apart
        raw = bytes([0x0E, self.generation & 0xFF, 0x80, 0]) + self.index.to_bytes(2, "big")
        return ":".join(f"{b:02x}" for b in raw)

    def value(self) -> str:
        doc: dict[str, object] = {
            "PublicIP": self.public_ip,
            "PublicIPv6": self.public_ipv6 if self.dual else None,
            "BackendType": self.backend,
        }
        if self.backend == "vxlan":
            doc["BackendData"] = {"VNI": 1, "VtepMAC": self.mac}
            if self.dual:
                doc["BackendV6Data"] = {"VNI": 1, "VtepMAC": self.mac6}
        return json.dumps(doc, separators=(",", ":"))
