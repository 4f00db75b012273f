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

import functools
import ipaddress
import struct
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

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
    BAD_OFFLOAD = "bad_offload"  # a virtio-net header the offload path cannot follow


def sum16(data: bytes | bytearray | memoryview) -> int:
    """An int congruent, modulo 0xFFFF, to the one's complement sum of ``data``'s 16-bit words.

    2**16 = 1 (mod 0xFFFF), so the buffer read as one big-endian integer (odd
    length padded with a zero byte) is such an int: one C-speed conversion,
    no Python loop per word.  Sums of several buffers and small ints add up.
    """
    value = int.from_bytes(data, "big")
    return value << 8 if len(data) & 1 else value


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit one's complement sum of ``data`` (odd length padded with a zero)."""
    total = sum16(data)
    return total % 0xFFFF or (0xFFFF if total else 0)


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
    addresses are built once, here, not per packet.  :meth:`changed` makes
    the table of the next event in time proportional to what it changes.
    """

    __slots__ = ("_by_prefix", "_groups", "_port", "_size", "_sources")

    def __init__(self, routes: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address], port: int):
        self._port = port
        self._groups: dict[int, dict[int, SockAddr]] = {}
        self._sources: dict[str, int] = {}  # peer address -> how many routes lead to it
        self._size = 0
        self._add(routes)
        self._index()

    def changed(
        self,
        removed: Iterable[ipaddress.IPv4Network],
        added: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address],
    ) -> RouteTable:
        """A new table without the ``removed`` subnets and with the ``added`` ones (this
        one is left as it is: the packet threads may be reading it)."""
        new = RouteTable({}, self._port)
        new._groups = {plen: dict(group) for plen, group in self._groups.items()}
        new._sources = dict(self._sources)
        new._size = self._size
        for subnet in removed:
            found = new._groups.get(subnet.prefixlen, {}).pop(int(subnet.network_address), None)
            if found is None:
                continue
            new._size -= 1
            new._sources[found[0]] -= 1
            if not new._sources[found[0]]:
                del new._sources[found[0]]
        new._add(added)
        new._index()
        return new

    def _add(self, routes: Mapping[ipaddress.IPv4Network, ipaddress.IPv4Address]) -> None:
        for subnet, public_ip in routes.items():
            group = self._groups.setdefault(subnet.prefixlen, {})
            key = int(subnet.network_address)
            before = group.get(key)
            if before is not None:
                self._size -= 1
                self._sources[before[0]] -= 1
                if not self._sources[before[0]]:
                    del self._sources[before[0]]
            group[key] = (str(public_ip), self._port)
            self._size += 1
            self._sources[str(public_ip)] = self._sources.get(str(public_ip), 0) + 1

    def _index(self) -> None:
        self._by_prefix = tuple(
            ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, self._groups[plen])
            for plen in sorted(self._groups, reverse=True) if self._groups[plen]
        )

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


# --- offloads: UDP GSO out; UDP GRO batches in, TCP super-frames out ---------------------
#
# With IFF_VNET_HDR every packet on the TUN carries a virtio-net header (flags,
# gso_type, hdr_len, gso_size, csum_start, csum_offset; native byte order).
# Outbound, the TUN offers no offloads, so the kernel hands over ordinary
# packets with their checksums done (it segments and checksums in C far
# faster than Python could); the forwarder packs packets of one size for one
# peer end to end and sends them with one UDP GSO call.  Inbound, one UDP GRO
# read returns many datagrams of one size; :func:`tcp_run` finds consecutive
# segments of one TCP flow and :func:`merge_tcp` joins them into one
# super-frame that the kernel takes back with a GSO header.  On the wire
# nothing changes: every datagram is one complete IPv4 packet, as upstream
# sends and expects.

VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
VNET_F_NEEDS_CSUM = 1
VNET_GSO_TCPV4 = 1
# The virtio-net header of a packet with nothing to offload.
PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)
PROTO_TCP = 6
TCP_HEADER = 20
TCP_CHECKSUM_AT = 16
TCP_PSH = 0x08
TCP_ACK = 0x10
MAX_IP_LENGTH = 0xFFFF
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


# The header fields of one datagram that must agree along a run, and its sequence number:
# version/IHL, TOS, total length | DF/fragment, TTL, protocol | addresses, ports | sequence |
# acknowledgment, data offset | flags | window | urgent pointer, options.  IP ID, both
# checksums and the payload are skipped.
_SEQ, _FLAGS, _FIELDS = 3, 5, 8


@functools.lru_cache(maxsize=256)
def _header_fields(hl: int, size: int, count: int) -> struct.Struct:
    """Unpacks those fields from ``count`` datagrams of ``size`` bytes in one call."""
    one = f"4s2x4s2x12sI5sB2s2x{hl - 38}s"
    return struct.Struct("!" + (one + f"{size - hl}x") * (count - 1) + one)


def tcp_run(buf: bytearray | memoryview, size: int, length: int, first: int) -> int:
    """How many datagrams of ``buf[:length]``, from index ``first`` on, merge into one frame.

    ``buf`` holds datagrams of ``size`` bytes each (the last may be shorter),
    each one IPv4 packet, as one UDP GRO read returns them.  They merge when
    they are consecutive TCP segments of one flow, all full-sized but the
    last, whose headers are identical apart from length, ID, sequence number
    and checksums, with ACK as the only flag (PSH allowed on the last), up
    to 64 KB.  1: the first goes alone.  The checks run over all datagrams
    at once (one ``struct`` call and tuple comparisons, no loop per packet).

    TCP checksums are not verified here: the kernel verified the UDP
    checksum, which covers every byte of every segment.
    """
    start = first * size
    if (
        length - start < size
        or size <= IPV4_HEADER + TCP_HEADER
        or buf[start] != 0x45
        or buf[start + 9] != PROTO_TCP
        or buf[start + IPV4_HEADER + 13] != TCP_ACK
        or (buf[start + 6] & 0x3F) | buf[start + 7]
        or _U16.unpack_from(buf, start + 2)[0] != size
    ):
        return 1
    hl = IPV4_HEADER + (buf[start + IPV4_HEADER + 12] >> 4) * 4
    mss = size - hl
    if mss <= 0 or hl < IPV4_HEADER + TCP_HEADER:
        return 1
    full = min((length - start) // size, (MAX_IP_LENGTH - hl) // mss)
    fields = _header_fields(hl, size, full).unpack_from(buf, start)
    seq = fields[_SEQ]
    count = _agreeing(fields, full, seq, mss)
    if count == full and not fields[(full - 1) * _FIELDS + _FLAGS] & TCP_PSH:
        tail = start + full * size
        seg = min(length - tail, size) - hl
        if 0 < seg < mss and hl + full * mss + seg <= MAX_IP_LENGTH:
            last = _header_fields(hl, size, 1).unpack_from(buf, tail)
            if _continues(fields, last, seq + full * mss, hl + seg):
                count += 1
    return count


def _agreeing(fields: tuple[Any, ...], count: int, seq: int, mss: int) -> int:
    """How many of ``count`` full-sized datagrams' fields continue the first one's flow."""
    seqs = fields[_SEQ::_FIELDS]
    flags = fields[_FLAGS::_FIELDS]
    if (
        seq + count * mss <= 0xFFFFFFFF
        and seqs == tuple(range(seq, seq + count * mss, mss))
        and all(
            fields[k::_FIELDS] == (fields[k],) * count
            for k in range(_FIELDS)
            if k not in (_SEQ, _FLAGS)
        )
    ):
        if flags == (TCP_ACK,) * count:
            return count
        pushed = next(i for i, f in enumerate(flags) if f != TCP_ACK)
        return pushed + 1 if flags[pushed] == TCP_ACK | TCP_PSH else pushed
    head = fields[:_FIELDS]
    for index in range(1, count):
        here = fields[index * _FIELDS : (index + 1) * _FIELDS]
        if not _continues(head, here, seq + index * mss, None):
            return index
        if here[_FLAGS] != TCP_ACK:
            return index + 1
    return count


def _continues(
    head: tuple[Any, ...], here: tuple[Any, ...], seq: int, short_length: int | None
) -> bool:
    """Whether one datagram's fields continue ``head``'s run at ``seq``.

    ``short_length``: the total length of a shorter last segment (its length
    field differs from the head's); None for a full-sized one.
    """
    first = here[0]
    if short_length is not None:
        if _U16.unpack_from(first, 2)[0] != short_length:
            return False
        first = first[:2] + head[0][2:]
    return (
        first == head[0]
        and here[1:_SEQ] == head[1:_SEQ]
        and here[_SEQ] == seq & 0xFFFFFFFF
        and here[_SEQ + 1] == head[_SEQ + 1]
        and here[_FLAGS] in (TCP_ACK, TCP_ACK | TCP_PSH)
        and here[_FLAGS + 1 :] == head[_FLAGS + 1 : _FIELDS]
    )


def merge_tcp(
    buf: memoryview, size: int, length: int, first: int, count: int
) -> list[bytes | bytearray | memoryview]:
    """The ``count`` segments :func:`tcp_run` found, as one super-frame for ``os.writev``.

    Parts: a virtio-net header (TCPv4 GSO, checksum left partial for the
    kernel, as a NIC driver hands over a GRO packet), the first segment's
    headers with the total length, a fresh IP checksum, the last segment's
    flags and the pseudo-header sum in the TCP checksum field, then every
    segment's payload (views into ``buf``, not copies).
    """
    start = first * size
    hl = IPV4_HEADER + (buf[start + IPV4_HEADER + 12] >> 4) * 4
    header = bytearray(buf[start : start + hl])
    parts: list[bytes | bytearray | memoryview] = [
        VNET_HDR.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, hl, size - hl, IPV4_HEADER, TCP_CHECKSUM_AT),
        header,
    ]
    last = start + (count - 1) * size
    end = min(last + size, length)
    parts += [buf[at + hl : at + size] for at in range(start, last, size)]
    parts.append(buf[last + hl : end])
    total = hl + (count - 1) * (size - hl) + end - last - hl
    header[IPV4_HEADER + 13] = buf[last + IPV4_HEADER + 13]
    _U16.pack_into(header, 2, total)
    header[10:12] = b"\0\0"
    _U16.pack_into(header, 10, checksum(header[:IPV4_HEADER]))
    pseudo = sum16(header[12:20]) + PROTO_TCP + total - IPV4_HEADER
    _U16.pack_into(header, IPV4_HEADER + TCP_CHECKSUM_AT, pseudo % 0xFFFF)
    return parts


class Datapath(StrEnum):
    """Which packet loop forwards (the metrics label)."""

    OFFLOAD = "offload"  # TUN offloads, UDP GSO and GRO
    PLAIN = "plain"  # one read and one send per packet


class DirectionStats:
    """Counters of one forwarding direction, written by one thread only."""

    __slots__ = ("batches", "bytes", "dropped", "packets")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        # offload path: UDP GSO sends (tx), TCP super-frames written to the TUN (rx)
        self.batches = 0
        self.dropped = dict.fromkeys(Drop, 0)


class ForwardStats:
    """Both directions: ``tx`` (TUN -> UDP) and ``rx`` (UDP -> TUN), and the active path."""

    __slots__ = ("path", "rx", "tx")

    def __init__(self) -> None:
        self.tx = DirectionStats()
        self.rx = DirectionStats()
        self.path: Datapath | None = None
