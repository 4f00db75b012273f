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
