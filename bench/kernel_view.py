"""The node's kernel as a benchmark sees it: rtnetlink notifications, timestamped.

:class:`KernelMonitor` reads a raw rtnetlink socket opened in the node
namespace (proto-44 routes, permanent neighbours, permanent FDB entries of
the MACs :mod:`peer_leases` generates) so a bench can wait for "X is there"
and learn when the notification that made it so arrived.  :func:`dump_kernel`
lists the same objects with ``ip``/``bridge``, independently of the monitor.
"""

from __future__ import annotations

import errno
import json
import select
import shlex
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nsthread import NsThread
from peer_leases import Peer

VXLAN_DEV = "flannel.1"
VXLAN6_DEV = "flannel-v6.1"

# rtnetlink constants (linux/rtnetlink.h, linux/neighbour.h)
NETLINK_ROUTE = 0
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
RTA_DST = 1
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
AF_BRIDGE = 7
ROUTE_PROTOCOL = 44
SO_RCVBUFFORCE = 33


@dataclass(slots=True)
class KernelView:
    """Our objects on the node: routes (dst), neighbours (dst -> MAC), FDB (MAC -> dst)."""

    routes: dict[str, float] = field(default_factory=dict)  # dst -> time it appeared
    neighbours: dict[str, str] = field(default_factory=dict)
    fdb: dict[str, str] = field(default_factory=dict)

    def counts(self) -> tuple[int, int, int]:
        return len(self.routes), len(self.neighbours), len(self.fdb)


class KernelMonitor:
    """rtnetlink notifications from the node namespace, timestamped on arrival.

    Tracks proto-44 IPv4 and IPv6 routes, permanent neighbours and permanent FDB
    entries of MACs we generate (``0e:``), so waiters can ask "is X there yet"
    and get the arrival time of the notification that made it so.
    """

    def __init__(self, thread: NsThread, rcvbuf: int = 64 << 20) -> None:
        def open_sock() -> socket.socket:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_NEIGH))
            sock.setblocking(False)  # the reader waits in select(), so it notices close()
            return sock

        self._sock = thread.run(open_sock)
        self._cond = threading.Condition()
        self.view = KernelView()
        self.route_gone: dict[str, float] = {}
        self.neigh_gone: dict[str, float] = {}
        self.fdb_gone: dict[str, float] = {}
        self.overflows = 0
        # (arrival time, added?, dst) of every proto-44 route notification
        self.route_log: list[tuple[float, bool, str]] = []
        self._closing = False
        self._reader = threading.Thread(target=self._read, name="kernel-monitor", daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._closing = True
        self._reader.join(2)
        self._sock.close()

    def _read(self) -> None:
        """Notifications, each stamped when it was read from the socket.

        The queue is drained before any is decoded: decoding takes longer than
        reading, and a burst (a cold start writes 3000 objects in 40 ms) would
        otherwise be stamped by how far the decoding got, ~0.1 s late.
        """
        while not self._closing:
            readable, _, _ = select.select([self._sock], [], [], 0.5)
            if not readable:
                continue
            batch: list[tuple[float, bytes]] = []
            while True:
                try:
                    data = self._sock.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError as err:
                    if err.errno != errno.ENOBUFS:
                        return
                    with self._cond:
                        self.overflows += 1
                    continue
                if not data:
                    return
                batch.append((time.monotonic(), data))
            with self._cond:
                for now, data in batch:
                    for kind, body in _messages(data):
                        self._handle(kind, body, now)
                self._cond.notify_all()

    def _handle(self, kind: int, body: bytes, now: float) -> None:
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            family, dst_len = body[0], body[1]
            protocol = body[5]
            if family not in (socket.AF_INET, socket.AF_INET6) or protocol != ROUTE_PROTOCOL:
                return
            attrs = _attrs(body, 12)
            if RTA_DST not in attrs:
                return
            dst = f"{socket.inet_ntop(family, attrs[RTA_DST])}/{dst_len}"
            self.route_log.append((now, kind == RTM_NEWROUTE, dst))
            if kind == RTM_NEWROUTE:
                self.view.routes.setdefault(dst, now)
                self.route_gone.pop(dst, None)
            elif self.view.routes.pop(dst, None) is not None:
                self.route_gone[dst] = now
        elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            family = body[0]
            (state,) = struct.unpack_from("=H", body, 8)
            attrs = _attrs(body, 12)
            lladdr = attrs.get(NDA_LLADDR)
            ours = lladdr is not None and len(lladdr) == 6 and lladdr[0] == 0x0E
            mac = ":".join(f"{b:02x}" for b in lladdr) if lladdr and ours else ""
            dst_raw = attrs.get(NDA_DST) or b""
            dst = (socket.inet_ntop(socket.AF_INET if len(dst_raw) == 4 else socket.AF_INET6,
                                    dst_raw) if len(dst_raw) in (4, 16) else "")
            new = kind == RTM_NEWNEIGH and bool(state & NUD_PERMANENT)
            if family in (socket.AF_INET, socket.AF_INET6) and dst:
                # a deleted neighbour's notification may carry no link-layer address
                if new and ours:
                    self.view.neighbours[dst] = mac
                    self.neigh_gone.pop(dst, None)
                elif not new and self.view.neighbours.pop(dst, None) is not None:
                    self.neigh_gone[dst] = now
            elif family == AF_BRIDGE and ours:
                if new:
                    self.view.fdb[mac] = dst
                    self.fdb_gone.pop(mac, None)
                elif self.view.fdb.pop(mac, None) is not None:
                    self.fdb_gone[mac] = now

    def wait(self, predicate: Callable[[KernelMonitor], float | None],
             timeout: float) -> float | None:
        """Block until ``predicate`` (called under the lock) returns a time; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = predicate(self)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def wait_peer_added(self, peer: Peer, timeout: float) -> float | None:
        """Arrival time of the (later) route for ``peer`` once its neighbours and FDB entries
        exist too (both families' of a dual-stack peer)."""
        neighbours, fdb = peer.neighbours(), peer.fdb()

        def ready(mon: KernelMonitor) -> float | None:
            times = [mon.view.routes.get(dst) for dst in peer.routes]
            if None in times:
                return None
            if any(mon.view.neighbours.get(a) != m for a, m in neighbours.items()):
                return None
            if any(mon.view.fdb.get(m) != a for m, a in fdb.items()):
                return None
            return max(t for t in times if t is not None)

        return self.wait(ready, timeout)

    def wait_peer_removed(self, peer: Peer, timeout: float) -> tuple[float, float] | None:
        """(route gone, all gone) arrival times for ``peer`` (of both families' objects of a
        dual-stack peer)."""
        neighbours, macs = list(peer.neighbours()), list(peer.fdb())

        def gone(mon: KernelMonitor) -> float | None:
            if any(dst in mon.view.routes for dst in peer.routes):
                return None
            if any(a in mon.view.neighbours for a in neighbours):
                return None
            if any(m in mon.view.fdb for m in macs):
                return None
            times = [mon.route_gone.get(dst) for dst in peer.routes]
            times += [mon.neigh_gone.get(a) for a in neighbours]
            times += [mon.fdb_gone.get(m) for m in macs]
            return max(t for t in times if t is not None) if any(times) else time.monotonic()

        done = self.wait(gone, timeout)
        if done is None:
            return None
        with self._cond:
            route_at = max(self.route_gone.get(dst, done) for dst in peer.routes)
        return route_at, done

    def wait_counts(self, routes: int, neighbours: int, fdb: int,
                    timeout: float) -> float | None:
        """Once the counts are at least the given ones: when the last route arrived.

        The daemon writes a peer's neighbour and FDB entry before its route,
        so the newest route is the end of programming.
        """

        def reached(mon: KernelMonitor) -> float | None:
            r, n, f = mon.view.counts()
            if r >= routes and n >= neighbours and f >= fdb:
                return max(mon.view.routes.values(), default=time.monotonic())
            return None

        return self.wait(reached, timeout)

    def counts(self) -> tuple[int, int, int]:
        with self._cond:
            return self.view.counts()


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield kind, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


def _attrs(body: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = body[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def dump_kernel(ns: str) -> KernelView:
    """Our objects as ``ip``/``bridge`` list them right now (independent of the monitor)."""
    view = KernelView()
    for family, host in (("-4", "/32"), ("-6", "/128")):
        for route in _ip_json(["ip", "-n", ns, "-j", family, "route", "show", "proto",
                               str(ROUTE_PROTOCOL)]):
            dst = str(route.get("dst", ""))
            view.routes[dst if "/" in dst else dst + host] = 0.0
    for family, dev in (("-4", VXLAN_DEV), ("-6", VXLAN6_DEV)):
        for neigh in _ip_json(["ip", "-n", ns, "-j", family, "neigh", "show", "dev", dev,
                               "nud", "permanent"]):
            view.neighbours[str(neigh.get("dst"))] = str(neigh.get("lladdr"))
        for entry in _ip_json(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev]):
            mac = str(entry.get("mac", ""))
            if mac.startswith("0e:") and "dst" in entry:
                view.fdb[mac] = str(entry["dst"])
    return view


def _ip_json(argv: list[str]) -> list[dict[str, Any]]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        if "does not exist" in done.stderr or "Cannot find device" in done.stderr:
            return []
        raise RuntimeError(f"{shlex.join(argv)}: {done.stderr.strip()}")
    out = done.stdout.strip()
    return list(json.loads(out)) if out else []


def expected_view(peers: Sequence[Peer]) -> KernelView:
    view = KernelView()
    for peer in peers:
        for dst in peer.routes:
            view.routes[dst] = 0.0
        view.neighbours.update(peer.neighbours())
        view.fdb.update(peer.fdb())
    return view


def compare_views(actual: KernelView, expected: KernelView) -> dict[str, int]:
    """Differences as counts (all zero: equal)."""
    return {
        "routes_missing": len(set(expected.routes) - set(actual.routes)),
        "routes_extra": len(set(actual.routes) - set(expected.routes)),
        "neighbours_wrong": len(set(expected.neighbours.items()) ^ set(actual.neighbours.items())),
        "fdb_wrong": len(set(expected.fdb.items()) ^ set(actual.fdb.items())),
    }
