"""The udp backend's packet path, as pure functions over packet buffers.

Wire format (upstream's, so Go and Python nodes interoperate): the UDP
payload is the raw inner IPv4 packet, nothing else.  Both directions
decrement the inner TTL with an incremental checksum update (RFC 1624,
eqn. 3) and drop a packet whose TTL would reach 0.  A packet from the TUN
with no route gets an ICMP "destination net unreachable" written back,
except for ICMP packets and non-first fragments.  Unlike upstream, a
datagram whose source is not a known peer's public address is dropped.

The per-packet functions work in place on a preallocated buffer and
allocate nothing but small ints; only the rare ICMP reply builds bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from enum import StrEnum

IPV4_HEADER = 20
PROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
REPLY_TTL = 64
DEFAULT_PORT = 8285
# Outer IPv4 (20) + UDP (8) headers around every inner packet.
ENCAP_OVERHEAD = 28

SockAddr = tuple[str, int]


class Drop(StrEnum):
    """Why a packet was not forwarded (the metrics label)."""

    NOT_IPV4 = "not_ipv4"
    NO_ROUTE = "no_route"
    TTL_EXPIRED = "ttl_expired"
    UNKNOWN_SENDER = "unknown_sender"
    SEND_FAILED = "send_failed"


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of ``data`` (odd length padded with a zero)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of ``data`` (RFC 1071)."""
    return ~ones_complement_sum(data) & 0xFFFF


def decrement_ttl(buf: bytearray | memoryview) -> bool:
    """Decrement the TTL of the IPv4 header at the start of ``buf`` in place.

    Returns False (and leaves the packet alone) when the TTL would reach 0.
    The checksum is patched as HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3),
    m being the 16-bit word holding TTL and protocol.
    """
    ttl = buf[8]
    if ttl <= 1:
        return False
    old = (ttl << 8) | buf[9]
    new = old - 0x100
    total = (~((buf[10] << 8) | buf[11]) & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    patched = ~total & 0xFFFF
    buf[8] = ttl - 1
    buf[10] = patched >> 8
    buf[11] = patched & 0xFF
    return True


def is_ipv4(buf: bytes | bytearray | memoryview, length: int) -> bool:
    """A plausible IPv4 packet: version 4 and at least a minimal header."""
    return length >= IPV4_HEADER and buf[0] >> 4 == 4


def destination(buf: bytearray | memoryview) -> int:
    """The destination address of the IPv4 header at the start of ``buf``, as an int."""
    return (buf[16] << 24) | (buf[17] << 16) | (buf[18] << 8) | buf[19]


def net_unreachable(
    packet: bytes | bytearray | memoryview, length: int, source: ipaddress.IPv4Address
) -> bytes | None:
    """The ICMP net-unreachable reply to ``packet[:length]``, sent from ``source``.

    None for ICMP packets, non-first fragments and packets too short to
    quote.  The reply quotes the offending header and 8 bytes of its data.
    """
    if not is_ipv4(packet, length):
        return None
    header_len = (packet[0] & 0x0F) * 4
    fragment_offset = ((packet[6] << 8) | packet[7]) & 0x1FFF
    if packet[9] == PROTO_ICMP or fragment_offset or header_len < IPV4_HEADER:
        return None
    quoted = bytes(packet[: min(length, header_len + 8)])
    icmp = bytearray(struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, 0) + quoted)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    total = IPV4_HEADER + len(icmp)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            0,
            0,
            REPLY_TTL,
            PROTO_ICMP,
            0,
            source.packed,
            bytes(packet[12:16]),
        )
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header + icmp)


class RouteTable:
    """Peer subnets -> where their packets go: an immutable longest-prefix table.

    Lookups take the destination as an int and cost one dict probe per
    distinct prefix length (normally one, ``SubnetLen``).  The socket
    addresses are built once, here, not per packet.
    """

    __slots__ = ("_by_prefix", "_size", "_sources")

    def __init__(self, routes: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address], port: int):
        groups: dict[int, dict[int, SockAddr]] = {}
        for subnet, public_ip in routes.items():
            groups.setdefault(subnet.prefixlen, {})[int(subnet.network_address)] = (
                str(public_ip),
                port,
            )
        self._by_prefix = tuple(
            ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, groups[plen])
            for plen in sorted(groups, reverse=True)
        )
        self._sources = frozenset(str(ip) for ip in routes.values())
        self._size = len(routes)

    def lookup(self, dst: int) -> SockAddr | None:
        for mask, table in self._by_prefix:
            found = table.get(dst & mask)
            if found is not None:
                return found
        return None

    def knows_source(self, addr: str) -> bool:
        return addr in self._sources

    def __len__(self) -> int:
        return self._size


def outbound(buf: bytearray | memoryview, length: int, table: RouteTable) -> SockAddr | Drop:
    """Where a packet read from the TUN goes (TTL decremented), or why it is dropped."""
    if not is_ipv4(buf, length):
        return Drop.NOT_IPV4
    peer = table.lookup(destination(buf))
    if peer is None:
        return Drop.NO_ROUTE
    if not decrement_ttl(buf):
        return Drop.TTL_EXPIRED
    return peer


def inbound(
    buf: bytearray | memoryview, length: int, sender: str, table: RouteTable
) -> Drop | None:
    """Whether a received datagram goes to the TUN (None; TTL decremented) or why not."""
    if not table.knows_source(sender):
        return Drop.UNKNOWN_SENDER
    if not is_ipv4(buf, length):
        return Drop.NOT_IPV4
    if not decrement_ttl(buf):
        return Drop.TTL_EXPIRED
    return None


class DirectionStats:
    """Counters of one forwarding direction, written by one thread only."""

    __slots__ = ("bytes", "dropped", "packets")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.dropped = dict.fromkeys(Drop, 0)


class ForwardStats:
    """Both directions: ``tx`` (TUN -> UDP) and ``rx`` (UDP -> TUN)."""

    __slots__ = ("rx", "tx")

    def __init__(self) -> None:
        self.tx = DirectionStats()
        self.rx = DirectionStats()
