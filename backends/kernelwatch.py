"""Notice at once when the kernel loses something of ours.

A plain rtnetlink multicast socket (stdlib only) listens for deletions: a
link (``flannel.1`` deleted by hand or by a link flap), a route with our
protocol id, a permanent neighbour or FDB entry.  Each burst of such events
becomes one call to ``notify``, and the daemon answers with an immediate
reconcile instead of waiting for the next resync tick.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator

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


class KernelWatch(threading.Thread):
    """Calls ``notify()`` once per burst of relevant deletions, until ``stop`` is set."""

    def __init__(self, notify: Callable[[], None], stop: threading.Event) -> None:
        super().__init__(name="kernel-watch", daemon=True)
        self._notify = notify
        self._stop_event = stop
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, GROUPS))

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
            relevant = relevant or any(is_relevant(k, p) for k, p in messages(datagram))
            ready, _, _ = select.select([self._sock], [], [], 0)
        return relevant
