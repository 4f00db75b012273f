"""Batched rtnetlink: request encoding, errors matched by sequence number, the closing
ack, lost answers, dumps."""

from __future__ import annotations

import errno
import ipaddress
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from backends import rtnl
from backends.model import FdbEntry, Neighbour, Route
from backends.netlink import BATCH_BYTES, Rtnl
from backends.plan import Change, Delete, Put
from tests.fakesocket import FakeSocketBase

IP = ipaddress.ip_address
NET = ipaddress.ip_network
ROUTE = Route(NET("10.244.1.0/24"), IP("10.244.1.0"), 5, onlink=True)
NEIGH = Neighbour(5, IP("10.244.1.0"), "0e:00:00:00:00:01")
FDB = FdbEntry(5, "0e:00:00:00:00:01", IP("198.18.0.5"))
PUT_FLAGS = rtnl.NLM_F_REQUEST | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE  # errors come unasked


def encoded(change: Change, seq: int) -> bytes:
    kind, flags, body = rtnl.change_body(change)
    return rtnl.message(kind, flags, seq, body)


def pyroute2_bytes(msg: rtmsg | ndmsg, kind: int, nl_flags: int, seq: int, **fields: int) -> bytes:
    for key, value in fields.items():
        msg[key] = value
    msg["header"]["type"] = kind
    msg["header"]["flags"] = nl_flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def test_route_put_is_what_pyroute2s_rtmsg_encodes() -> None:
    msg = rtmsg()
    msg["attrs"] = [("RTA_DST", "10.244.1.0"), ("RTA_GATEWAY", "10.244.1.0"), ("RTA_OIF", 5)]
    assert encoded(Put(ROUTE), 7) == pyroute2_bytes(
        msg, rtnl.RTM_NEWROUTE, PUT_FLAGS, 7,
        family=2, dst_len=24, table=254, proto=44, scope=0, type=1, flags=rtnl.RTNH_F_ONLINK,
    )


def test_neighbour_and_fdb_puts_are_what_pyroute2s_ndmsg_encodes() -> None:
    neigh = ndmsg()
    neigh["attrs"] = [("NDA_DST", "10.244.1.0"), ("NDA_LLADDR", "0e:00:00:00:00:01")]
    assert encoded(Put(NEIGH), 8) == pyroute2_bytes(
        neigh, rtnl.RTM_NEWNEIGH, PUT_FLAGS, 8, family=2, ifindex=5, state=rtnl.NUD_PERMANENT
    )
    fdb = ndmsg()
    fdb["attrs"] = [("NDA_LLADDR", "0e:00:00:00:00:01"), ("NDA_DST", "198.18.0.5")]
    assert encoded(Put(FDB), 9) == pyroute2_bytes(
        fdb, rtnl.RTM_NEWNEIGH, PUT_FLAGS, 9,
        family=7, ifindex=5, state=rtnl.NUD_PERMANENT, flags=rtnl.NTF_SELF,
    )


def test_the_shapes_without_a_one_pack_encoding_are_what_pyroute2_encodes() -> None:
    # IPv6 and a route without a gateway take the general path; IPv4 (above) the one pack
    route6 = Route(NET("fd00:1::/64"), IP("fd00:1::"), 5, onlink=True)
    msg = rtmsg()
    msg["attrs"] = [("RTA_DST", "fd00:1::"), ("RTA_GATEWAY", "fd00:1::"), ("RTA_OIF", 5)]
    assert encoded(Put(route6), 3) == pyroute2_bytes(
        msg, rtnl.RTM_NEWROUTE, PUT_FLAGS, 3,
        family=10, dst_len=64, table=254, proto=44, scope=0, type=1, flags=rtnl.RTNH_F_ONLINK,
    )
    direct = Route(NET("10.244.2.0/24"), None, 3)
    msg = rtmsg()
    msg["attrs"] = [("RTA_DST", "10.244.2.0"), ("RTA_OIF", 3)]
    assert encoded(Put(direct), 4) == pyroute2_bytes(
        msg, rtnl.RTM_NEWROUTE, PUT_FLAGS, 4,
        family=2, dst_len=24, table=254, proto=44, scope=0, type=1,
    )
    neigh = ndmsg()
    neigh["attrs"] = [("NDA_DST", "fd00:1::"), ("NDA_LLADDR", "0e:00:00:00:00:01")]
    assert encoded(Put(Neighbour(5, IP("fd00:1::"), "0e:00:00:00:00:01")), 5) == pyroute2_bytes(
        neigh, rtnl.RTM_NEWNEIGH, PUT_FLAGS, 5, family=10, ifindex=5, state=rtnl.NUD_PERMANENT
    )
    fdb = ndmsg()
    fdb["attrs"] = [("NDA_LLADDR", "0e:00:00:00:00:01"), ("NDA_DST", "2001:db8::5")]
    assert encoded(Put(FdbEntry(5, "0e:00:00:00:00:01", IP("2001:db8::5"))), 6) == pyroute2_bytes(
        fdb, rtnl.RTM_NEWNEIGH, PUT_FLAGS, 6,
        family=7, ifindex=5, state=rtnl.NUD_PERMANENT, flags=rtnl.NTF_SELF,
    )


def test_an_ipv4_route_via_an_ipv6_gateway_keeps_its_16_gateway_bytes() -> None:
    # the one pack has room for 4: the general path sends all 16 (the kernel judges them)
    route = Route(NET("10.244.2.0/24"), IP("fd00::9"), 3)
    _, _, body = rtnl.change_body(Put(route))
    assert IP("fd00::9").packed in body and len(body) == rtnl.RTMSG.size + 8 + 20 + 8


def test_route_delete_matches_by_protocol_id_and_any_scope() -> None:
    kind, flags, body = rtnl.change_body(Delete(ROUTE))
    assert kind == rtnl.RTM_DELROUTE and flags == rtnl.NLM_F_REQUEST
    family, dst_len, _, _, table, proto, scope, _, _ = rtnl.RTMSG.unpack_from(body)
    assert (family, dst_len, table, proto, scope) == (2, 24, 254, 44, rtnl.RT_SCOPE_NOWHERE)


@pytest.mark.parametrize("obj", [ROUTE, Route(NET("10.244.2.0/24"), None, 3)])
def test_a_route_dump_reply_decodes_back_to_the_route(obj: Route) -> None:
    _, _, body = rtnl.change_body(Put(obj))
    assert rtnl.our_route(body + rtnl.attr(rtnl.RTA_TABLE, rtnl.U32.pack(254))) == obj


def test_foreign_routes_are_not_ours() -> None:
    _, _, body = rtnl.change_body(Put(ROUTE))
    kernel_route = bytearray(body)
    kernel_route[5] = 4  # proto static
    assert rtnl.our_route(bytes(kernel_route)) is None
    other_table = body + rtnl.attr(rtnl.RTA_TABLE, rtnl.U32.pack(100))
    assert rtnl.our_route(other_table) is None


def test_neighbour_and_fdb_replies_decode_back() -> None:
    assert rtnl.permanent_neighbour(rtnl.change_body(Put(NEIGH))[2]) == NEIGH
    assert rtnl.self_fdb_entry(rtnl.change_body(Put(FDB))[2]) == FDB
    stale = rtnl.NDMSG.pack(2, 0, 0, 5, 0x04, 0, 0) + rtnl.attr(rtnl.NDA_DST, IP("10.0.0.1").packed)
    assert rtnl.permanent_neighbour(stale) is None


class FakeKernel(FakeSocketBase):
    """Handles the requests of a send() in order, as rtnetlink does: ``verdict(obj_bytes)
    -> errno``; an error is always answered, success only when NLM_F_ACK asks, a NOOP
    (control message) is acked when asked.

    Its receive queue holds ``room`` answers (None: any number), as the kernel's
    receive buffer does: an answer without room is dropped and the socket is then
    congested, so every later answer is dropped too until a recv() empties the queue;
    the next recv() raises ENOBUFS, before the answers queued ahead of the loss.  A
    recv() of an empty queue raises BlockingIOError with timeout 0, else TimeoutError
    (counted in ``timeouts``: the real socket waited REPLY_TIMEOUT for nothing)."""

    def __init__(self, verdict: Callable[[bytes], int], room: int | None = None) -> None:
        super().__init__(10.0)
        self._verdict = verdict
        self._room = room
        self._queue: list[bytes] = []
        self._congested = False
        self._overrun = False  # ENOBUFS not yet reported
        self.sends: list[list[int]] = []  # the sequence numbers of each send's requests
        self.timeouts = 0

    def send(self, data: bytes, /) -> int:
        requests = list(rtnl.replies(data))
        self.sends.append([r.seq for r in requests if r.kind != rtnl.NLMSG_NOOP])
        # a late answer to an earlier send comes first: it must match nothing of this one
        self._answer(rtnl.message(rtnl.NLMSG_ERROR, 0, 99999, rtnl.ERROR.pack(-errno.EEXIST)
                                  + rtnl.HEADER.pack(16, rtnl.RTM_NEWROUTE, 0, 99999, 0)))
        for request in requests:
            code = 0 if request.kind == rtnl.NLMSG_NOOP else self._verdict(request.payload)
            if code or request.flags & rtnl.NLM_F_ACK:
                header = rtnl.HEADER.pack(16 + len(request.payload), request.kind,
                                          request.flags, request.seq, 0)
                self._answer(rtnl.message(rtnl.NLMSG_ERROR, 0, request.seq,
                                          rtnl.ERROR.pack(-code) + header))
        return len(data)

    def _answer(self, datagram: bytes) -> None:
        if self._congested:
            return
        if self._room is not None and len(self._queue) >= self._room:
            self._congested = self._overrun = True
            return
        self._queue.append(datagram)

    def recv(self, size: int, /) -> bytes:
        if self._overrun:
            self._overrun = False
            raise OSError(errno.ENOBUFS, "No buffer space available")
        if not self._queue:
            self._congested = False
            if self._timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            self.timeouts += 1
            raise TimeoutError("timed out")
        datagram = self._queue.pop(0)
        self._congested = self._congested and bool(self._queue)
        return datagram


def routes(count: int) -> list[Change]:
    return [Put(Route(NET(f"10.{i // 256}.{i % 256}.0/24"), IP("10.0.0.1"), 3)) for i in range(count)]


def third_octet(body: bytes) -> int:
    return rtnl.pick(body, rtnl.RTMSG.size, frozenset({rtnl.RTA_DST}))[rtnl.RTA_DST][2]


def test_each_object_gets_its_own_result_matched_by_sequence_number() -> None:
    changes = routes(300)
    kernel = FakeKernel(lambda body: errno.ENETUNREACH if third_octet(body) % 7 == 0 else 0)
    codes = Rtnl(kernel).transact(changes, rtnl.change_body)
    assert codes == [errno.ENETUNREACH if i % 256 % 7 == 0 else 0 for i in range(300)]
    assert len(kernel.sends) >= 1 and sum(map(len, kernel.sends)) == 300


def test_requests_are_cut_into_sends_that_fit_the_batch_size() -> None:
    changes = routes(2000)
    kernel = FakeKernel(lambda body: 0)
    assert Rtnl(kernel).transact(changes, rtnl.change_body) == [0] * 2000
    assert len(kernel.sends) > 1
    size = len(rtnl.message(*rtnl.change_body(changes[0])[:2], 1, rtnl.change_body(changes[0])[2]))
    assert all(len(seqs) * size <= BATCH_BYTES for seqs in kernel.sends)
    assert len({seq for seqs in kernel.sends for seq in seqs}) == 2000


def test_a_bulk_is_encoded_on_a_thread_whose_failure_reaches_the_caller() -> None:
    changes = routes(2000)
    kernel = FakeKernel(lambda body: 0)

    def encode(change: Change) -> tuple[int, int, bytes]:
        if change is changes[1500]:
            raise ValueError("bad object")
        return rtnl.change_body(change)

    with pytest.raises(ValueError, match="bad object"):
        Rtnl(kernel).transact(changes, encode)
    assert kernel.sends  # the batches before it went out
    assert not [t for t in threading.enumerate() if t.name == "netlink-encode"]
    kernel = FakeKernel(lambda body: 0)
    assert Rtnl(kernel).transact(changes, rtnl.change_body) == [0] * 2000


def test_a_lost_answer_sends_again_only_the_requests_whose_outcome_is_unknown() -> None:
    changes = routes(10)
    # room for two answers: the late one and 1's error; 8's error and the closing ack are lost
    kernel = FakeKernel(lambda body: errno.EEXIST if third_octet(body) in (1, 8) else 0, room=2)
    codes = Rtnl(kernel).transact(changes, rtnl.change_body)
    assert codes == [errno.EEXIST if i in (1, 8) else 0 for i in range(10)]
    first, second, third = kernel.sends
    # 1's error came before the loss: 1 is not sent again; then 8's came, the ack was lost
    assert (len(first), len(second), len(third)) == (10, 9, 8)
    assert not set(first) & set(second) and not set(second) & set(third)  # fresh numbers
    assert kernel.timeouts == 0  # what came before each loss was read before the next send


def test_after_a_loss_the_queue_is_read_dry_so_the_next_send_is_answered() -> None:
    """Left unread, the answers queued before the loss keep the socket congested: every
    answer to the next send would be dropped, and the batch would wait REPLY_TIMEOUT."""
    changes = routes(2000)  # several sends
    kernel = FakeKernel(lambda body: errno.ENODEV if third_octet(body) % 3 == 0 else 0,
                        room=100)
    codes = Rtnl(kernel).transact(changes, rtnl.change_body)
    assert kernel.timeouts == 0
    assert codes == [errno.ENODEV if i % 256 % 3 == 0 else 0 for i in range(2000)]
    assert len(kernel.sends) > 5  # sends overran and were sent again


@settings(max_examples=200)
@given(failing=st.sets(st.integers(0, 299)), room=st.integers(1, 80))
def test_no_request_that_failed_is_reported_done_whatever_the_losses(
    failing: set[int], room: int,
) -> None:
    changes = routes(300)
    octets = {i % 256 for i in failing}  # (routes 256.. share their third octet with 0..)
    kernel = FakeKernel(lambda body: errno.ENODEV if third_octet(body) in octets else 0,
                        room=room)
    codes = Rtnl(kernel).transact(changes, rtnl.change_body)
    for i, code in enumerate(codes):
        # known, or unknown after ATTEMPTS sends: never done when it failed
        assert code in ((errno.ENODEV,) if i % 256 in octets else (0,)) + (errno.ETIMEDOUT,)
    assert kernel.timeouts == 0


def test_successful_requests_ask_for_no_answer_and_each_send_is_closed_by_an_acked_noop() -> None:
    changes = routes(700)
    sent: list[bytes] = []
    kernel = FakeKernel(lambda body: 0)
    original = kernel.send

    def send(data: bytes, /) -> int:
        sent.append(data)
        return original(data)

    kernel.send = send  # type: ignore[method-assign]
    assert Rtnl(kernel).transact(changes, rtnl.change_body) == [0] * 700
    assert len(sent) > 1
    for data in sent:
        requests = list(rtnl.replies(data))
        assert [r.kind for r in requests[:-1]] == [rtnl.RTM_NEWROUTE] * (len(requests) - 1)
        assert not any(r.flags & rtnl.NLM_F_ACK for r in requests[:-1])
        assert (requests[-1].kind, requests[-1].flags) == (
            rtnl.NLMSG_NOOP, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK)


def test_a_dump_decodes_only_its_own_replies_until_done() -> None:
    own = rtnl.change_body(Put(ROUTE))[2] + rtnl.attr(rtnl.RTA_TABLE, rtnl.U32.pack(254))

    class Dumping(FakeKernel):
        def send(self, data: bytes, /) -> int:
            (request,) = rtnl.replies(data)
            assert request.flags & rtnl.NLM_F_DUMP == rtnl.NLM_F_DUMP
            self._queue.append(
                rtnl.message(rtnl.RTM_NEWROUTE, rtnl.NLM_F_MULTI, request.seq + 5, own)
                + rtnl.message(rtnl.RTM_NEWROUTE, rtnl.NLM_F_MULTI, request.seq, own)
            )
            self._queue.append(rtnl.message(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, request.seq,
                                            b"\0\0\0\0"))
            return len(data)

    sock = Dumping(lambda body: 0)
    assert Rtnl(sock).dump(rtnl.RTM_GETROUTE, rtnl.route_dump(2), rtnl.our_route) == [ROUTE]


def test_a_dump_error_is_raised_with_its_errno() -> None:
    class Refusing(FakeKernel):
        def send(self, data: bytes, /) -> int:
            (request,) = rtnl.replies(data)
            body = rtnl.ERROR.pack(-errno.EINVAL) + data[:16]
            self._queue.append(rtnl.message(rtnl.NLMSG_ERROR, 0, request.seq, body))
            return len(data)

    with pytest.raises(OSError) as caught:
        Rtnl(Refusing(lambda body: 0)).dump(rtnl.RTM_GETROUTE, rtnl.route_dump(2), rtnl.our_route)
    assert caught.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("obj", "decode"),
    [(ROUTE, rtnl.route_signature), (Route(NET("10.244.2.0/24"), None, 3), rtnl.route_signature),
     (NEIGH, rtnl.neighbour_signature), (FDB, rtnl.fdb_signature)],
)
def test_a_dumped_object_has_the_signature_of_the_model_object(
    obj: Route | Neighbour | FdbEntry, decode: Callable[[bytes], object]
) -> None:
    assert decode(rtnl.change_body(Put(obj))[2]) == rtnl.signature(obj)
    other = Route(NET("10.244.9.0/24"), IP("10.244.9.0"), 5, onlink=True)
    assert rtnl.signature(other) != rtnl.signature(obj)


def test_the_one_unpack_shapes_decode_as_the_general_path_does() -> None:
    """A dump of thousands takes the fixed-shape path; anything else the general one."""
    table = rtnl.attr(rtnl.RTA_TABLE, rtnl.U32.pack(254))
    head = rtnl.RTMSG.pack(2, 24, 0, 0, 254, 44, 0, 1, rtnl.RTNH_F_ONLINK)
    dst = rtnl.attr(rtnl.RTA_DST, IP("10.244.1.0").packed)
    gateway = rtnl.attr(rtnl.RTA_GATEWAY, IP("10.244.1.0").packed)
    oif = rtnl.attr(rtnl.RTA_OIF, rtnl.U32.pack(3))
    kernel = head + table + dst + gateway + oif  # what the kernel writes for ours
    extra = kernel + rtnl.attr(6, rtnl.U32.pack(100))  # RTA_PRIORITY: the general path
    want = rtnl.signature(Route(NET("10.244.1.0/24"), IP("10.244.1.0"), 3, onlink=True))
    assert rtnl.route_signature(kernel) == rtnl.route_signature(extra) == want
    other_table = head + rtnl.attr(rtnl.RTA_TABLE, rtnl.U32.pack(100)) + dst + gateway + oif
    assert rtnl.route_signature(other_table) is None

    nd = rtnl.NDMSG.pack(2, 0, 0, 5, rtnl.NUD_PERMANENT, 0, 0)
    ndst = rtnl.attr(rtnl.NDA_DST, IP("10.244.1.0").packed)
    mac = rtnl.attr(rtnl.NDA_LLADDR, rtnl.mac_bytes("0e:00:00:00:00:01"))
    probes = rtnl.attr(4, rtnl.U32.pack(0))  # NDA_PROBES in front: the general path
    assert rtnl.neighbour_signature(nd + ndst + mac) == rtnl.neighbour_signature(
        nd + probes + ndst + mac) == ("neigh", 5, IP("10.244.1.0").packed,
                                      rtnl.mac_bytes("0e:00:00:00:00:01"))
    fdb = rtnl.NDMSG.pack(7, 0, 0, 5, rtnl.NUD_PERMANENT, rtnl.NTF_SELF, 0)
    remote = rtnl.attr(rtnl.NDA_DST, IP("198.18.0.9").packed)
    assert rtnl.fdb_signature(fdb + mac + remote) == rtnl.fdb_signature(fdb + remote + mac) == (
        "fdb", 5, rtnl.mac_bytes("0e:00:00:00:00:01"), IP("198.18.0.9").packed)
