"""Which kernel notifications mean that something of ours is gone."""

from __future__ import annotations

import ipaddress
import socket
import struct

from backends import rtnl
from backends.kernelwatch import (
    ECHO_SECONDS,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    OwnDeletions,
    deleted_key,
    deletions_only_filter,
    is_relevant,
    messages,
)
from backends.model import ROUTE_PROTOCOL, FdbEntry, Neighbour, Route
from backends.plan import Put

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


def test_a_deletion_names_the_model_key_of_what_it_deleted() -> None:
    ip, net = ipaddress.ip_address, ipaddress.ip_network
    route = Route(net("10.244.3.0/24"), ip("10.244.3.0"), 7, onlink=True)
    neigh = Neighbour(7, ip("10.244.3.0"), "0e:00:00:00:00:03")
    fdb = FdbEntry(7, "0e:00:00:00:00:03", ip("198.18.0.3"))
    for obj, kind in ((route, RTM_DELROUTE), (neigh, RTM_DELNEIGH), (fdb, RTM_DELNEIGH)):
        assert deleted_key(kind, rtnl.change_body(Put(obj))[2]) == obj.key
    assert deleted_key(RTM_DELROUTE, rtmsg(4)) is None  # not ours
    assert deleted_key(RTM_DELNEIGH, b"\x02") is None  # truncated


def test_own_deletions_are_claimed_once_and_only_within_the_echo_window() -> None:
    now = [100.0]
    own = OwnDeletions(clock=lambda: now[0])
    own.expect([("route", "a"), ("route", "b")])
    assert own.claim(("route", "a"))
    assert not own.claim(("route", "a"))  # a second deletion of it is damage
    assert not own.claim(("route", "c"))
    assert not own.claim(None)
    now[0] += ECHO_SECONDS + 1
    assert not own.claim(("route", "b"))  # too late to be the echo


def test_the_socket_filter_passes_exactly_the_three_deletion_types() -> None:
    program = deletions_only_filter()
    passed = set()
    for kind in range(16, 40):
        loaded = socket.htons(kind)  # what ``ldh [4]`` sees
        pc = 1
        while program[pc][0] == 0x15:
            _, jt, jf, k = program[pc]
            pc += 1 + (jt if loaded == k else jf)
        if program[pc][3]:
            passed.add(kind)
    assert passed == {RTM_DELLINK, RTM_DELROUTE, RTM_DELNEIGH}
