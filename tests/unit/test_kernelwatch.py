"""Which kernel notifications mean that something of ours is gone."""

from __future__ import annotations

import struct

from backends.kernelwatch import (
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    is_relevant,
    messages,
)
from backends.model import ROUTE_PROTOCOL

RTM_NEWROUTE = 24


def rtmsg(protocol: int) -> bytes:
    return struct.pack("=BBBBBBBBI", 2, 24, 0, 0, 254, protocol, 0, 1, 0)


def ndmsg(state: int) -> bytes:
    return struct.pack("=BBHiHBB", 2, 0, 0, 7, state, 0, 1)


def datagram(*parts: tuple[int, bytes]) -> bytes:
    out = b""
    for kind, payload in parts:
        length = 16 + len(payload)
        out += struct.pack("=IHHII", length, kind, 0, 0, 0) + payload
        out += b"\0" * (((length + 3) & ~3) - length)
    return out


def test_messages_splits_a_datagram() -> None:
    data = datagram((RTM_DELROUTE, rtmsg(ROUTE_PROTOCOL)), (RTM_DELLINK, b"\0" * 16))
    assert [kind for kind, _ in messages(data)] == [RTM_DELROUTE, RTM_DELLINK]


def test_only_our_route_deletions_count() -> None:
    assert is_relevant(RTM_DELROUTE, rtmsg(ROUTE_PROTOCOL))
    assert not is_relevant(RTM_DELROUTE, rtmsg(4))  # proto static: not ours
    assert not is_relevant(RTM_NEWROUTE, rtmsg(ROUTE_PROTOCOL))


def test_only_permanent_neighbour_deletions_count() -> None:
    assert is_relevant(RTM_DELNEIGH, ndmsg(0x80))
    assert not is_relevant(RTM_DELNEIGH, ndmsg(0x02))  # reachable: learnt, not ours


def test_link_deletions_count_and_truncated_payloads_do_not() -> None:
    assert is_relevant(RTM_DELLINK, b"")
    assert not is_relevant(RTM_DELROUTE, b"\x02\x18")
    assert list(messages(b"\x05\x00")) == []
