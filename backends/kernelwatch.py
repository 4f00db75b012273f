"""Notice at once when the kernel loses something of ours.

A plain rtnetlink multicast socket (stdlib only) listens for deletions: a
link (``flannel.1`` deleted by hand or by a link flap), a route with our
protocol id, a permanent neighbour or FDB entry.  Each burst of such events
becomes one call to ``notify``, and the daemon answers with an immediate
reconcile instead of waiting for the next resync tick.

A socket filter lets only deletions through, so programming thousands of
objects does not flood (and overrun) the socket with their announcements.
The deletions our own passes make are announced too: the netlink layer
records each one in :class:`OwnDeletions`, and the watch takes the matching
announcement as that echo, not as damage.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator

from backends import rtnl
from backends.model import ROUTE_PROTOCOL

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
RTM_DELLINK = 17
RTM_DELROUTE = 25
RTM_DELNEIGH = 29
NUD_FAILED = 0x20
NUD_PERMANENT = 0x80
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
GROUPS = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
COALESCE_SECONDS = 0.2
POLL_SECONDS = 0.5
ECHO_SECONDS = 5.0  # how long a deletion of ours waits for its announcement
SO_ATTACH_FILTER = 26
RCVBUF_BYTES = 1 << 20
SO_RCVBUFFORCE = 33


def messages(datagram: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of every netlink message in one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(datagram):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(datagram, offset)
        if length < _HEADER.size:
            return
        yield kind, datagram[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3


def is_relevant(kind: int, payload: bytes) -> bool:
    """Could this message mean that something we programmed is gone?"""
    if kind == RTM_DELLINK:
        return True
    if kind == RTM_DELROUTE:
        return len(payload) > 5 and payload[5] == ROUTE_PROTOCOL  # rtmsg.rtm_protocol
    if kind == RTM_DELNEIGH:
        # ndmsg: family, pad, pad, ifindex(4), state(2).  Our entries are permanent,
        # but ``ip neigh del`` marks an entry FAILED before the kernel announces its
        # deletion; an aged-out failed ARP entry costs one spare reconcile.
        if len(payload) < 10:
            return False
        (state,) = struct.unpack_from("=H", payload, 8)
        return bool(state & (NUD_PERMANENT | NUD_FAILED))
    return False


def deleted_key(kind: int, payload: bytes) -> Hashable | None:
    """The model key (``KernelObject.key``) of the object a deletion announces, if known."""
    try:
        if kind == RTM_DELROUTE:
            route = rtnl.our_route(payload)
            return None if route is None else route.key
        if kind == RTM_DELNEIGH:
            family, _p1, _p2, ifindex, _state, _flags, _type = rtnl.NDMSG.unpack_from(payload)
            attrs = rtnl.pick(payload, rtnl.NDMSG.size, rtnl.NEIGH_ATTRS)
            if family == rtnl.AF_BRIDGE and rtnl.NDA_LLADDR in attrs:
                return ("fdb", ifindex, rtnl.mac_text(attrs[rtnl.NDA_LLADDR]))
            if rtnl.NDA_DST in attrs:
                return ("neigh", ifindex, ipaddress.ip_address(attrs[rtnl.NDA_DST]))
    except (struct.error, ValueError):
        return None
    return None


class OwnDeletions:
    """Keys of the objects our passes deleted, until the kernel announces each (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expected: dict[Hashable, float] = {}

    def expect(self, keys: Iterable[Hashable]) -> None:
        deadline = self._clock() + ECHO_SECONDS
        with self._lock:
            if len(self._expected) > 4096:  # announcements that never came
                now = self._clock()
                self._expected = {k: d for k, d in self._expected.items() if d > now}
            self._expected.update(dict.fromkeys(keys, deadline))

    def claim(self, key: Hashable | None) -> bool:
        """True (once) if ``key`` is the announcement of a deletion of ours."""
        if key is None:
            return False
        with self._lock:
            deadline = self._expected.pop(key, None)
        return deadline is not None and deadline >= self._clock()


def deletions_only_filter() -> list[tuple[int, int, int, int]]:
    """A classic BPF program (code, jt, jf, k) passing RTM_DELLINK/DELROUTE/DELNEIGH only.

    ``ldh [4]`` reads ``nlmsg_type`` in network byte order, hence ``htons``.
    """
    ld_h_abs, jeq_k, ret_k = 0x28, 0x15, 0x06
    return [
        (ld_h_abs, 0, 0, 4),
        (jeq_k, 3, 0, socket.htons(RTM_DELLINK)),
        (jeq_k, 2, 0, socket.htons(RTM_DELROUTE)),
        (jeq_k, 1, 0, socket.htons(RTM_DELNEIGH)),
        (ret_k, 0, 0, 0),
        (ret_k, 0, 0, 0xFFFFFFFF),
    ]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class KernelWatch(threading.Thread):
    """Calls ``notify()`` once per burst of relevant deletions, until ``stop`` is set.

    Deletions ``own`` expects (our own passes made them) are not damage.
    """

    def __init__(
        self,
        notify: Callable[[], None],
        stop: threading.Event,
        own: OwnDeletions | None = None,
    ) -> None:
        super().__init__(name="kernel-watch", daemon=True)
        self._notify = notify
        self._stop_event = stop
        self._own = own
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            self._sock.bind((0, GROUPS))
            _attach_filter(self._sock, deletions_only_filter())
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError:
            self._sock.close()
            raise

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                if self._drain(POLL_SECONDS):
                    # let the rest of a burst (a device with all its routes) arrive first
                    self._drain(COALESCE_SECONDS)
                    log.info("kernel removed something of ours; reconciling now")
                    self._notify()
        except OSError as err:
            log.error("kernel event socket failed: %s (falling back to periodic resync)", err)
        finally:
            self._sock.close()

    def _drain(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; True if any of it was relevant."""
        relevant = False
        ready, _, _ = select.select([self._sock], [], [], timeout)
        while ready:
            try:
                datagram = self._sock.recv(65536)
            except OSError as err:
                if err.errno != errno.ENOBUFS:  # we lost events: reconcile anyway
                    raise
                relevant = True
                continue
            for kind, payload in messages(datagram):
                if is_relevant(kind, payload) and not self._is_echo(kind, payload):
                    relevant = True
            ready, _, _ = select.select([self._sock], [], [], 0)
        return relevant

    def _is_echo(self, kind: int, payload: bytes) -> bool:
        return self._own is not None and self._own.claim(deleted_key(kind, payload))
