"""The udp backend's packet path: TTL/checksum, ICMP unreachable, routing, sender check."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends import udp_packet as P

TUN_ADDR = ipaddress.IPv4Address("10.244.1.0")


def ipv4_packet(
    src: str = "10.244.1.5",
    dst: str = "10.244.2.7",
    ttl: int = 64,
    proto: int = 17,
    frag: int = 0,
    payload: bytes = b"abcdefghijklmnop",
    ident: int = 0x1234,
    tos: int = 0,
    options: bytes = b"",
) -> bytearray:
    ihl = 5 + len(options) // 4
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            tos,
            ihl * 4 + len(payload),
            ident,
            frag,
            ttl,
            proto,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + options
    )
    struct.pack_into("!H", header, 10, P.checksum(header))
    return header + payload


headers = st.builds(
    ipv4_packet,
    src=st.ip_addresses(v=4).map(str),
    dst=st.ip_addresses(v=4).map(str),
    ttl=st.integers(0, 255),
    proto=st.integers(0, 255),
    frag=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=16),
    ident=st.integers(0, 0xFFFF),
    tos=st.integers(0, 255),
    options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
)


@given(headers)
def test_ttl_decrement_matches_full_recompute(packet: bytearray) -> None:
    ihl = (packet[0] & 0x0F) * 4
    before = bytes(packet)
    ok = P.decrement_ttl(packet)
    if before[8] <= 1:
        assert not ok
        assert bytes(packet) == before
        return
    assert ok
    assert packet[8] == before[8] - 1
    recomputed = bytearray(packet[:ihl])
    recomputed[10:12] = b"\0\0"
    assert struct.unpack_from("!H", packet, 10)[0] == P.checksum(recomputed)
    assert P.checksum(packet[:ihl]) == 0
    assert packet[12:] == before[12:] and packet[:8] == before[:8] and packet[9] == before[9]


def test_ttl_one_is_dropped_and_two_becomes_one() -> None:
    assert not P.decrement_ttl(ipv4_packet(ttl=1))
    assert not P.decrement_ttl(ipv4_packet(ttl=0))
    packet = ipv4_packet(ttl=2)
    assert P.decrement_ttl(packet) and packet[8] == 1


def test_decrement_works_on_a_memoryview_slice() -> None:
    buf = bytearray(100)
    packet = ipv4_packet(ttl=9)
    buf[: len(packet)] = packet
    assert P.decrement_ttl(memoryview(buf))
    assert buf[8] == 8 and P.checksum(buf[:20]) == 0


def test_net_unreachable_reply() -> None:
    packet = ipv4_packet(src="10.244.1.5", dst="10.99.9.9", proto=6, payload=bytes(range(40)))
    reply = P.net_unreachable(packet, len(packet), TUN_ADDR)
    assert reply is not None
    assert len(reply) == 20 + 8 + 20 + 8
    assert P.checksum(reply[:20]) == 0
    version_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", reply[:20]
    )
    assert (version_ihl, total, ttl, proto) == (0x45, len(reply), P.REPLY_TTL, P.PROTO_ICMP)
    assert src == TUN_ADDR.packed
    assert dst == ipaddress.IPv4Address("10.244.1.5").packed
    icmp = reply[20:]
    assert (icmp[0], icmp[1]) == (3, 0)
    assert P.checksum(icmp) == 0
    assert icmp[8:] == bytes(packet[:28])


def test_net_unreachable_equals_what_scapy_builds() -> None:
    from scapy.layers.inet import ICMP, IP
    from scapy.packet import Raw

    packet = ipv4_packet(src="10.244.1.5", dst="192.0.2.1", payload=b"\x01\x02\x03")
    reply = P.net_unreachable(packet, len(packet), TUN_ADDR)
    expected = (
        IP(id=0, flags=0, ttl=P.REPLY_TTL, src=str(TUN_ADDR), dst="10.244.1.5")
        / ICMP(type=3, code=0)
        / Raw(bytes(packet[:28]))
    )
    assert reply == bytes(expected)


def test_no_unreachable_for_icmp_or_non_first_fragments() -> None:
    icmp = ipv4_packet(proto=P.PROTO_ICMP)
    assert P.net_unreachable(icmp, len(icmp), TUN_ADDR) is None
    later_fragment = ipv4_packet(frag=0x2000 | 185)
    assert P.net_unreachable(later_fragment, len(later_fragment), TUN_ADDR) is None
    first_fragment = ipv4_packet(frag=0x2000)  # MF set, offset 0: still answered
    assert P.net_unreachable(first_fragment, len(first_fragment), TUN_ADDR) is not None
    v6 = bytearray(b"\x60" + bytes(47))
    assert P.net_unreachable(v6, len(v6), TUN_ADDR) is None


def test_unreachable_quotes_only_what_was_read() -> None:
    packet = ipv4_packet(payload=b"xyz")
    buf = packet + bytearray(50)  # a larger buffer: only `length` bytes are the packet
    reply = P.net_unreachable(buf, len(packet), TUN_ADDR)
    assert reply is not None and reply[28:] == bytes(packet)


def route_table() -> P.RouteTable:
    net = ipaddress.IPv4Network
    addr = ipaddress.IPv4Address
    return P.RouteTable(
        {
            net("10.244.2.0/24"): addr("192.168.0.2"),
            net("10.244.3.0/24"): addr("192.168.0.3"),
            net("10.244.3.128/25"): addr("192.168.0.9"),
        },
        8285,
    )


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_route_lookup_longest_prefix() -> None:
    table = route_table()
    assert table.lookup(ip("10.244.2.77")) == ("192.168.0.2", 8285)
    assert table.lookup(ip("10.244.3.5")) == ("192.168.0.3", 8285)
    assert table.lookup(ip("10.244.3.200")) == ("192.168.0.9", 8285)
    assert table.lookup(ip("10.244.4.1")) is None
    assert len(table) == 3
    assert table.knows_source("192.168.0.3") and not table.knows_source("192.168.0.4")


def test_outbound_verdicts() -> None:
    table = route_table()
    packet = ipv4_packet(dst="10.244.2.9", ttl=5)
    assert P.outbound(packet, len(packet), table) == ("192.168.0.2", 8285)
    assert packet[8] == 4
    missing = ipv4_packet(dst="10.9.9.9")
    assert P.outbound(missing, len(missing), table) is P.Drop.NO_ROUTE
    dying = ipv4_packet(dst="10.244.2.9", ttl=1)
    assert P.outbound(dying, len(dying), table) is P.Drop.TTL_EXPIRED
    v6 = bytearray(b"\x60" + bytes(60))
    assert P.outbound(v6, len(v6), table) is P.Drop.NOT_IPV4
    assert P.outbound(packet, 19, table) is P.Drop.NOT_IPV4


def test_inbound_checks_sender_first() -> None:
    table = route_table()
    packet = ipv4_packet(dst="10.244.1.9", ttl=3)
    assert P.inbound(packet, len(packet), "192.168.0.66", table) is P.Drop.UNKNOWN_SENDER
    assert packet[8] == 3
    assert P.inbound(packet, len(packet), "192.168.0.2", table) is None
    assert packet[8] == 2
    junk = bytearray(b"hello")
    assert P.inbound(junk, len(junk), "192.168.0.2", table) is P.Drop.NOT_IPV4


def test_stats_start_at_zero_for_every_reason() -> None:
    stats = P.ForwardStats()
    assert stats.tx.packets == stats.rx.bytes == 0
    assert set(stats.rx.dropped) == set(P.Drop) and not any(stats.rx.dropped.values())


def test_port_option() -> None:
    from backends.udp import parse_port
    from subnet.errors import ConfigError
    from subnet.netconf import BackendConfig

    assert parse_port(BackendConfig("udp", {"Type": "udp"})) == 8285
    assert parse_port(BackendConfig("udp", {"port": 9000})) == 9000
    for bad in ("8285", 70000, True, -1):
        with pytest.raises(ConfigError):
            parse_port(BackendConfig("udp", {"Port": bad}))


def test_udp_accepts_peers_of_any_backend_type() -> None:
    from backends.udp import udp_peers
    from subnet.lease import Lease, LeaseAttrs

    def lease(third: int, kind: str, public: str) -> Lease:
        subnet = ipaddress.IPv4Network(f"10.244.{third}.0/24")
        return Lease(subnet, None, LeaseAttrs(ipaddress.IPv4Address(public), None, kind))

    own = lease(1, "", "192.168.0.1")
    peers = [lease(2, "vxlan", "192.168.0.2"), lease(3, "", "192.168.0.3"), lease(4, "", "0.0.0.0")]
    usable, skipped = udp_peers(own, peers, [ipaddress.IPv4Network("10.244.0.0/16")])
    assert [p.key for p in usable] == ["10.244.2.0-24", "10.244.3.0-24"]
    assert [s.key for s in skipped] == ["10.244.4.0-24"]


# --- checksums and the offload path's TCP merging ---------------------------------------


def reference_sum(data: bytes) -> int:
    """RFC 1071, one 16-bit word at a time with end-around carry."""
    padded = data + b"\0" * (len(data) % 2)
    total = 0
    for (word,) in struct.iter_unpack("!H", padded):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=3000))
def test_ones_complement_sum_equals_the_word_loop(data: bytes) -> None:
    assert P.ones_complement_sum(data) == reference_sum(data)
    assert P.ones_complement_sum(memoryview(data)) == reference_sum(data)


def test_ones_complement_sum_edges() -> None:
    assert P.ones_complement_sum(b"") == 0 and P.ones_complement_sum(bytes(7)) == 0
    assert P.ones_complement_sum(b"\xff\xff") == 0xFFFF
    assert P.ones_complement_sum(b"\xff\xff\x00\x01") == 1
    assert P.ones_complement_sum(b"\x01") == 0x0100


SRC, DST = "10.244.2.5", "10.244.1.7"


def tcp_stream(
    payload: bytes, mss: int, seq: int = 1000, ident: int = 7, psh_last: bool = True,
    options: list[tuple[str, object]] | None = None, ttl: int = 64,
) -> list[bytes]:
    """Valid IPv4/TCP packets carrying ``payload`` in ``mss``-byte segments (scapy-built)."""
    from scapy.layers.inet import IP, TCP

    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)]
    return [
        bytes(
            IP(src=SRC, dst=DST, id=(ident + i) & 0xFFFF, flags="DF", ttl=ttl)
            / TCP(sport=5201, dport=40000, seq=(seq + i * mss) & 0xFFFFFFFF, ack=99,
                  flags="PA" if psh_last and i == len(chunks) - 1 else "A", window=502,
                  options=options or [])
            / chunk
        )
        for i, chunk in enumerate(chunks)
    ]


def gro_batch(packets: list[bytes]) -> tuple[memoryview, int, int]:
    """Datagrams laid out as one UDP GRO read: (buffer, datagram size, length)."""
    data = b"".join(packets)
    return memoryview(bytearray(data)), len(packets[0]), len(data)


def completed(frame: bytes) -> bytes:
    """``frame`` with the partial TCP checksum filled in, as the kernel would."""
    out = bytearray(frame)
    total = P.ones_complement_sum(out[20:])  # the field holds the pseudo-header sum
    struct.pack_into("!H", out, 36, ~total & 0xFFFF)
    return bytes(out)


def kernel_segments(frame: bytes, mss: int) -> list[bytes]:
    """What the kernel's TCPv4 GSO makes of a super-frame (a reference built with scapy)."""
    from scapy.layers.inet import IP, TCP

    parsed = IP(completed(frame))
    tcp = parsed[TCP]
    payload = bytes(tcp.payload)
    count = -(-len(payload) // mss)
    out = []
    for i in range(count):
        last = i == count - 1
        flags = int(tcp.flags) if last else int(tcp.flags) & ~0x09
        out.append(bytes(
            IP(src=parsed.src, dst=parsed.dst, id=(parsed.id + i) & 0xFFFF, flags=parsed.flags,
               ttl=parsed.ttl, tos=parsed.tos)
            / TCP(sport=tcp.sport, dport=tcp.dport, seq=(tcp.seq + i * mss) & 0xFFFFFFFF,
                  ack=tcp.ack, flags=flags, window=tcp.window, options=tcp.options)
            / payload[i * mss : (i + 1) * mss]
        ))
    return out


TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))]


@given(
    payload=st.binary(min_size=1, max_size=6000),
    mss=st.integers(1, 1460),
    seq=st.integers(0, 0xFFFFFFFF),
    ident=st.integers(0, 0xFFFF),
    psh_last=st.booleans(),
    timestamps=st.booleans(),
)
def test_merging_then_segmenting_gives_the_packets_back(
    payload: bytes, mss: int, seq: int, ident: int, psh_last: bool, timestamps: bool
) -> None:
    packets = tcp_stream(payload, mss, seq, ident, psh_last, TIMESTAMPS if timestamps else None)
    buf, size, length = gro_batch(packets)
    count = P.tcp_run(buf, size, length, 0)
    if len(packets) == 1:
        assert count == 1
        return
    assert count == len(packets)
    parts = P.merge_tcp(buf, size, length, 0, count)
    vnet, frame = bytes(parts[0]), b"".join(bytes(p) for p in parts[1:])
    hl = 20 + (32 if timestamps else 20)
    assert P.VNET_HDR.unpack(vnet) == (
        P.VNET_F_NEEDS_CSUM, P.VNET_GSO_TCPV4, hl, mss, 20, P.TCP_CHECKSUM_AT
    )
    assert frame[hl:] == payload
    assert struct.unpack_from("!H", frame, 2)[0] == len(frame)
    assert P.checksum(frame[:20]) == 0
    assert kernel_segments(frame, mss) == packets


def test_merged_frame_verifies_once_its_checksum_is_completed() -> None:
    from scapy.layers.inet import IP, TCP

    packets = tcp_stream(bytes(range(256)) * 20, 1000)
    buf, size, length = gro_batch(packets)
    parts = P.merge_tcp(buf, size, length, 0, P.tcp_run(buf, size, length, 0))
    frame = completed(b"".join(bytes(p) for p in parts[1:]))
    parsed = IP(frame)
    del parsed.chksum
    del parsed[TCP].chksum
    assert bytes(parsed) == frame  # scapy computes the same checksums


def test_runs_end_where_the_flow_or_the_sequence_breaks() -> None:
    from scapy.layers.inet import IP, TCP

    stream = tcp_stream(bytes(5000), 1000, psh_last=False)  # 5 full segments
    other_flow = bytes(
        IP(src=SRC, dst=DST, id=9, flags="DF")
        / TCP(sport=1, dport=2, seq=3000, ack=99, flags="A", window=502)
        / bytes(1000)
    )
    cases: list[tuple[list[bytes], list[int]]] = [
        (stream, [5]),
        ([*stream[:2], other_flow, *stream[3:]], [2, 1, 2]),
        ([stream[0], stream[2], stream[3]], [1, 2]),  # a sequence gap
        ([stream[0], stream[1], stream[0]], [2, 1]),  # a repeat
    ]
    for packets, runs in cases:
        buf, size, length = gro_batch(packets)
        got, first = [], 0
        while first * size < length:
            got.append(P.tcp_run(buf, size, length, first))
            first += got[-1]
        assert got == runs, runs


def test_psh_closes_a_run_and_other_flags_never_merge() -> None:
    from scapy.layers.inet import IP, TCP

    def seg(i: int, flags: str) -> bytes:
        return bytes(IP(src=SRC, dst=DST, id=i, flags="DF") / TCP(
            sport=5201, dport=40000, seq=1000 + i * 100, ack=99, flags=flags, window=502
        ) / bytes(100))

    buf, size, length = gro_batch([seg(0, "A"), seg(1, "PA"), seg(2, "A"), seg(3, "A")])
    assert P.tcp_run(buf, size, length, 0) == 2
    assert P.tcp_run(buf, size, length, 2) == 2
    for flags in ("FA", "SA", "RA", "PA", "UA", "EA"):
        buf, size, length = gro_batch([seg(0, flags), seg(1, "A")])
        assert P.tcp_run(buf, size, length, 0) == 1, flags


def test_non_tcp_short_and_fragmented_datagrams_go_alone() -> None:
    from scapy.layers.inet import IP, TCP, UDP

    udp = [bytes(IP(src=SRC, dst=DST) / UDP(sport=1, dport=2) / bytes(100))] * 3
    buf, size, length = gro_batch(udp)
    assert P.tcp_run(buf, size, length, 0) == 1
    fragment = bytes(IP(src=SRC, dst=DST, flags="MF") / TCP(flags="A") / bytes(100))
    buf, size, length = gro_batch([fragment, fragment])
    assert P.tcp_run(buf, size, length, 0) == 1
    bare_acks = [bytes(IP(src=SRC, dst=DST) / TCP(flags="A"))] * 3
    buf, size, length = gro_batch(bare_acks)
    assert P.tcp_run(buf, size, length, 0) == 1
    buf, size, length = gro_batch([b"\x45garbage" * 6])
    assert P.tcp_run(buf, size, length, 0) == 1


def test_a_run_stops_short_of_64_kb() -> None:
    packets = tcp_stream(bytes(1400 * 60), 1400, psh_last=False)
    buf, size, length = gro_batch(packets)
    count = P.tcp_run(buf, size, length, 0)
    assert 40 + count * 1400 <= 0xFFFF < 40 + (count + 1) * 1400
    assert P.tcp_run(buf, size, length, count) == len(packets) - count
