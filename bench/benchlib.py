"""Shared plumbing for the flanneld daemon benchmarks (convergence, scale, churn).

A bench builds its own lab (names carry a unique ``pfb<6 hex>`` prefix and
are removed in a ``finally``, also on Ctrl-C):

    <prefix>-ul  etcd on 198.18.0.1:2379, veth ``ul0``
    <prefix>-n1  flanneld with ``-iface=ul0`` (198.18.0.2), health on 127.0.0.1

The driver reaches etcd and the health port through one worker thread per
namespace (:class:`NsThread`, a thread that ``setns()``-ed into it), and
sees the kernel through a raw rtnetlink socket opened in the node
namespace (:class:`KernelMonitor`): route (protocol 44), neighbour and FDB
notifications with their arrival time.  Peer leases go through etcd's v3
JSON gateway on a kept-alive connection (:class:`EtcdGateway`).

Only the processes started here are ever signalled, by PID.
"""

from __future__ import annotations

import base64
import errno
import http.client
import ipaddress
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from flanneld.lab.etcd import EtcdProcess, EtcdSpec
from flanneld.lab.topology import (
    add_address,
    add_veth,
    create_netns,
    delete_netns,
    enter_netns,
    netns_argv,
    set_up,
)

T = TypeVar("T")

PREFIX = "/coreos.com/network"
CONFIG_KEY = PREFIX + "/config"
SUBNETS = PREFIX + "/subnets/"
ETCD_IP = "198.18.0.1"
NODE_IP = "198.18.0.2"
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
HEALTH_PORT = 9901
VXLAN_DEV = "flannel.1"
# Peers live in 10.64.0.0 upwards; our own lease is confined to 10.127.0.0/16 by
# SubnetMin/SubnetMax so it can never take a subnet a bench writes as a peer.
NETWORK = ipaddress.IPv4Network("10.64.0.0/10")
NET_CONF = {
    "Network": str(NETWORK),
    "SubnetMin": "10.127.0.0",
    "SubnetMax": "10.127.255.0",
    "Backend": {"Type": "vxlan", "VNI": 1},
}
MAX_PEERS = (1 << 16) - 256  # peer subnets 10.64.0.0 .. below 10.127.0.0
PEER_PUBLIC_BASE = int(ipaddress.IPv4Address("198.19.0.0"))
TXN_OPS = 128  # etcd's default --max-txn-ops

# rtnetlink constants (linux/rtnetlink.h, linux/neighbour.h)
NETLINK_ROUTE = 0
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTA_DST = 1
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
AF_BRIDGE = 7
ROUTE_PROTOCOL = 44
SO_RCVBUFFORCE = 33


# --- small things -----------------------------------------------------------------------


def unique_prefix() -> str:
    return "pfb" + uuid.uuid4().hex[:6]


def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg_at_start": _loadavg(),
        "argv": [sys.executable, *sys.argv],
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _loadavg() -> str:
    """/proc/loadavg: other work on this shared machine skews the figures."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def finish_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` with the load average at the end of the run added."""
    return {**facts, "loadavg_at_end": _loadavg()}


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p99, max and mean of ``values`` (milliseconds in, milliseconds out)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(q: float) -> float:
        # nearest rank: the smallest value with at least q of the samples at or below it
        rank = max(1, int(-(-q * len(ordered) // 1)))
        return ordered[min(rank, len(ordered)) - 1]

    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(pct(0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def write_json(path: str, doc: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False)
        fh.write("\n")
    print(f"\nwrote {path}")


def default_out(name: str) -> str:
    return os.path.join(REPO, "bench", "results", f"{name}.json")


# --- peers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """A fake peer node: subnet, underlay address and VTEP MAC derived from an index."""

    index: int
    generation: int = 0

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        if not 0 <= self.index < MAX_PEERS:
            raise ValueError(f"peer index {self.index} out of range")
        return ipaddress.IPv4Network((int(NETWORK.network_address) + self.index * 256, 24))

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address)

    @property
    def key(self) -> str:
        return f"{SUBNETS}{self.subnet.network_address}-24"

    @property
    def public_ip(self) -> str:
        return str(ipaddress.IPv4Address(PEER_PUBLIC_BASE + 1 + self.index))

    @property
    def mac(self) -> str:
        # locally administered unicast (0x0e), distinct per index and generation
        raw = bytes([0x0E, self.generation & 0xFF]) + self.index.to_bytes(4, "big")
        return ":".join(f"{b:02x}" for b in raw)

    def value(self) -> str:
        return json.dumps(
            {
                "PublicIP": self.public_ip,
                "PublicIPv6": None,
                "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": self.mac},
            },
            separators=(",", ":"),
        )


# --- namespaces and threads ---------------------------------------------------------------


class NsThread:
    """One worker thread living in namespace ``ns``: sockets it opens belong there."""

    def __init__(self, ns: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=enter_netns(ns),
                                        thread_name_prefix=f"ns-{ns}")

    def run(self, func: Callable[[], T]) -> T:
        return self._pool.submit(func).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class EtcdGateway:
    """put/delete through etcd's v3 JSON gateway, on one kept-alive HTTP connection.

    Every call runs in the etcd namespace's worker thread.
    """

    def __init__(self, thread: NsThread, host: str, port: int) -> None:
        self._thread = thread
        self._host = host
        self._port = port
        self._conn: http.client.HTTPConnection | None = None

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()

        def call() -> dict[str, Any]:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
                try:
                    self._conn.request("POST", path, data, {"Content-Type": "application/json"})
                    resp = self._conn.getresponse()
                    raw = resp.read()
                except (OSError, http.client.HTTPException):
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
                    continue
                if resp.status != 200:
                    raise RuntimeError(f"etcd gateway {path}: HTTP {resp.status}: {raw[:200]!r}")
                doc = json.loads(raw)
                if not isinstance(doc, dict):
                    raise TypeError(f"etcd gateway {path}: unexpected answer")
                return doc
            raise AssertionError("unreachable")

        return self._thread.run(call)

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def put_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Puts in transactions of at most ``TXN_OPS`` operations."""
        for start in range(0, len(items), TXN_OPS):
            chunk = items[start : start + TXN_OPS]
            ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in chunk]
            self._post("/v3/kv/txn", {"success": ops})

    def count_prefix(self, prefix: str) -> int:
        end = bytearray(prefix.encode())
        end[-1] += 1
        doc = self._post(
            "/v3/kv/range",
            {"key": _b64(prefix), "range_end": base64.b64encode(bytes(end)).decode(),
             "count_only": True},
        )
        return int(doc.get("count", 0))

    def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._thread.run(shut)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def http_get(thread: NsThread, url_host: str, port: int, path: str,
             timeout: float = 2.0) -> tuple[int, str]:
    """GET from inside the thread's namespace; (0, error text) when it cannot connect."""

    def call() -> tuple[int, str]:
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as err:
            return 0, str(err)
        finally:
            conn.close()

    return thread.run(call)


# --- the kernel, seen from the node namespace ---------------------------------------------


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

    Tracks proto-44 IPv4 routes, permanent IPv4 neighbours and permanent FDB
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
            sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH))
            sock.settimeout(0.5)  # so the reader notices close()
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
        while not self._closing:
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    with self._cond:
                        self.overflows += 1
                    continue
                return
            if not data:
                return
            now = time.monotonic()
            with self._cond:
                for kind, body in _messages(data):
                    self._handle(kind, body, now)
                self._cond.notify_all()

    def _handle(self, kind: int, body: bytes, now: float) -> None:
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            family, dst_len = body[0], body[1]
            protocol = body[5]
            if family != socket.AF_INET or protocol != ROUTE_PROTOCOL:
                return
            attrs = _attrs(body, 12)
            if RTA_DST not in attrs:
                return
            dst = f"{socket.inet_ntoa(attrs[RTA_DST])}/{dst_len}"
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
            dst_raw = attrs.get(NDA_DST)
            dst = socket.inet_ntoa(dst_raw) if dst_raw and len(dst_raw) == 4 else ""
            new = kind == RTM_NEWNEIGH and bool(state & NUD_PERMANENT)
            if family == socket.AF_INET and dst:
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
        """Arrival time of the route for ``peer`` once its neighbour and FDB entry exist too."""
        dst = str(peer.subnet)

        def ready(mon: KernelMonitor) -> float | None:
            at = mon.view.routes.get(dst)
            if at is None:
                return None
            if mon.view.neighbours.get(peer.gateway) != peer.mac:
                return None
            if mon.view.fdb.get(peer.mac) != peer.public_ip:
                return None
            return at

        return self.wait(ready, timeout)

    def wait_peer_removed(self, peer: Peer, timeout: float) -> tuple[float, float] | None:
        """(route gone, all three gone) arrival times for ``peer``."""
        dst = str(peer.subnet)

        def gone(mon: KernelMonitor) -> float | None:
            if dst in mon.view.routes or peer.gateway in mon.view.neighbours:
                return None
            if peer.mac in mon.view.fdb:
                return None
            times = [mon.route_gone.get(dst), mon.neigh_gone.get(peer.gateway),
                     mon.fdb_gone.get(peer.mac)]
            return max(t for t in times if t is not None) if any(times) else time.monotonic()

        done = self.wait(gone, timeout)
        if done is None:
            return None
        with self._cond:
            route_at = self.route_gone.get(dst, done)
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
    for route in _ip_json(["ip", "-n", ns, "-j", "-4", "route", "show", "proto",
                           str(ROUTE_PROTOCOL)]):
        dst = str(route.get("dst", ""))
        view.routes[dst if "/" in dst else f"{dst}/32"] = 0.0
    for neigh in _ip_json(["ip", "-n", ns, "-j", "-4", "neigh", "show", "dev", VXLAN_DEV,
                           "nud", "permanent"]):
        view.neighbours[str(neigh.get("dst"))] = str(neigh.get("lladdr"))
    for entry in _ip_json(["bridge", "-n", ns, "-j", "fdb", "show", "dev", VXLAN_DEV]):
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
        view.routes[str(peer.subnet)] = 0.0
        view.neighbours[peer.gateway] = peer.mac
        view.fdb[peer.mac] = peer.public_ip
    return view


def compare_views(actual: KernelView, expected: KernelView) -> dict[str, int]:
    """Differences as counts (all zero: equal)."""
    return {
        "routes_missing": len(set(expected.routes) - set(actual.routes)),
        "routes_extra": len(set(actual.routes) - set(expected.routes)),
        "neighbours_wrong": len(set(expected.neighbours.items()) ^ set(actual.neighbours.items())),
        "fdb_wrong": len(set(expected.fdb.items()) ^ set(actual.fdb.items())),
    }


# --- the daemon ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of ``pid``; empty if it is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM", "Threads"):
                    found[name] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Flanneld:
    """One flanneld child in the node namespace; stopped by its PID only."""

    def __init__(self, ns: str, workdir: str, health_port: int = HEALTH_PORT,
                 extra: Sequence[str] = (), profile: str | None = None) -> None:
        self.subnet_file = os.path.join(workdir, "subnet.env")
        self.log_path = os.path.join(workdir, "flanneld.log")
        python = [sys.executable]
        if profile:  # cProfile sees the main thread: the loop that reconciles
            python += ["-m", "cProfile", "-o", profile]
        self.argv = [
            *python, "-m", "flanneld.cli",
            f"-etcd-endpoints=http://{ETCD_IP}:{ETCD_PORT}",
            "-iface=ul0",
            f"-subnet-file={self.subnet_file}",
            "-healthz-ip=127.0.0.1",
            f"-healthz-port={health_port}",
            *extra,
        ]
        self._ns = ns
        self.health_port = health_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                netns_argv(self._ns, self.argv),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=REPO, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("flanneld was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, thread: NsThread, timeout: float, interval: float = 0.01) -> float | None:
        """Time at which /readyz first answered 200; None on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return None
            status, _ = http_get(thread, "127.0.0.1", self.health_port, "/readyz", timeout=1)
            if status == 200:
                return time.monotonic()
            time.sleep(interval)
        return None

    def metrics(self, thread: NsThread) -> dict[str, float]:
        """The flannel_* samples of /metrics (name{labels} -> value)."""
        status, body = http_get(thread, "127.0.0.1", self.health_port, "/metrics", timeout=5)
        if status != 200:
            return {}
        samples: dict[str, float] = {}
        for line in body.splitlines():
            if line.startswith("flannel_") and " " in line:
                name, _, value = line.rpartition(" ")
                try:
                    samples[name] = float(value)
                except ValueError:
                    continue
        return samples

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a clean exit, so cProfile writes its stats), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""


def reconcile_stats(samples: Mapping[str, float]) -> dict[str, float]:
    """Count, total and mean seconds of flannel_reconcile_duration_seconds."""
    count = sum(v for k, v in samples.items()
                if k.startswith("flannel_reconcile_duration_seconds_count"))
    total = sum(v for k, v in samples.items()
                if k.startswith("flannel_reconcile_duration_seconds_sum"))
    return {"count": count, "sum_s": round(total, 3),
            "mean_ms": round(1000 * total / count, 2) if count else 0.0}


# --- the lab ------------------------------------------------------------------------------


@dataclass(slots=True)
class Lab:
    prefix: str
    etcd_ns: str
    node_ns: str
    workdir: str
    etcd_thread: NsThread
    node_thread: NsThread
    etcd: EtcdProcess
    gateway: EtcdGateway

    def flanneld(self, extra: Sequence[str] = (), profile: str | None = None) -> Flanneld:
        return Flanneld(self.node_ns, self.workdir, extra=extra, profile=profile)

    def monitor(self) -> KernelMonitor:
        return KernelMonitor(self.node_thread)


@contextmanager
def lab(keep_workdir: bool = False) -> Iterator[Lab]:
    """Namespaces, underlay and etcd with the vxlan net-conf; everything removed afterwards."""
    prefix = unique_prefix()
    etcd_ns, node_ns = f"{prefix}-ul", f"{prefix}-n1"
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-")
    created: list[str] = []
    threads: list[NsThread] = []
    etcd: EtcdProcess | None = None
    gateway: EtcdGateway | None = None
    try:
        for ns in (etcd_ns, node_ns):
            create_netns(ns)
            created.append(ns)
        add_veth(etcd_ns, "ul0", node_ns, "ul0")
        add_address(etcd_ns, "ul0", ipaddress.IPv4Interface(f"{ETCD_IP}/24"))
        add_address(node_ns, "ul0", ipaddress.IPv4Interface(f"{NODE_IP}/24"))
        set_up(etcd_ns, "ul0")
        set_up(node_ns, "ul0")
        etcd_thread, node_thread = NsThread(etcd_ns), NsThread(node_ns)
        threads += [etcd_thread, node_thread]
        spec = EtcdSpec(prefix, os.path.join(workdir, "etcd"), ETCD_IP, ETCD_PORT, ETCD_PEER_PORT)
        etcd = EtcdProcess(spec, os.path.join(workdir, "etcd.log"))
        etcd_thread.run(etcd.start)  # forked from a thread inside the namespace
        gateway = EtcdGateway(etcd_thread, ETCD_IP, ETCD_PORT)
        gateway.put(CONFIG_KEY, json.dumps(NET_CONF))
        yield Lab(prefix, etcd_ns, node_ns, workdir, etcd_thread, node_thread, etcd, gateway)
    finally:
        if gateway is not None:
            with suppress(OSError, http.client.HTTPException):
                gateway.close()
        if etcd is not None:
            etcd.stop()
        for thread in threads:
            thread.close()
        for ns in created:
            delete_netns(ns)
        if not keep_workdir:
            subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)
        else:
            print(f"kept {workdir}")


def put_peers(gateway: EtcdGateway, peers: Sequence[Peer]) -> float:
    """Write ``peers`` in transactions; seconds taken."""
    started = time.monotonic()
    gateway.put_many([(p.key, p.value()) for p in peers])
    return time.monotonic() - started


@dataclass(frozen=True, slots=True)
class Sample:
    put_ms: float  # etcd round trip of the put/delete
    latency_ms: float  # from just before the request to the kernel notification
    extra_ms: float | None = None


def add_peer_sample(lab_: Lab, monitor: KernelMonitor, peer: Peer,
                    timeout: float) -> Sample | None:
    sent = time.monotonic()
    lab_.gateway.put(peer.key, peer.value())
    acked = time.monotonic()
    at = monitor.wait_peer_added(peer, timeout)
    if at is None:
        return None
    return Sample(1000 * (acked - sent), 1000 * (at - sent))


def delete_peer_sample(lab_: Lab, monitor: KernelMonitor, peer: Peer,
                       timeout: float) -> Sample | None:
    sent = time.monotonic()
    lab_.gateway.delete(peer.key)
    acked = time.monotonic()
    times = monitor.wait_peer_removed(peer, timeout)
    if times is None:
        return None
    route_at, all_at = times
    return Sample(1000 * (acked - sent), 1000 * (route_at - sent), 1000 * (all_at - sent))


# --- where the time goes --------------------------------------------------------------------


class PySpy:
    """``py-spy record`` attached to a PID (raw collapsed stacks); stopped with SIGINT."""

    def __init__(self, pid: int, out: str, rate: int = 100) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", out, "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)


def top_functions(collapsed_path: str, limit: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        with open(collapsed_path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return {"samples": 0, "self": [], "inclusive": []}
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [_short_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int], count: int) -> list[dict[str, Any]]:
        best = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:count]
        return [{"function": f, "samples": n, "share": round(n / total, 3)} for f, n in best]

    return {"samples": total, "self": ranked(own, limit), "inclusive": ranked(inclusive, 4 * limit)}


OUR_CODE = ("(backends/", "(flanneld/", "(subnet/")


def print_profile(title: str, prof: Mapping[str, Any], rows: int = 8) -> None:
    """The top self-time functions, then pyflannel's own functions by inclusive time."""
    if not prof.get("samples"):
        return
    top = [(f["function"], f"{100 * f['share']:.1f}%") for f in prof["self"][:rows]]
    print_table(f"{title} ({prof['samples']} samples, all threads): top self time",
                ["function", "share"], top)
    ours = [f for f in prof["inclusive"] if any(d in f["function"] for d in OUR_CODE)]
    print_table(f"{title}: pyflannel functions, inclusive time", ["function", "share"],
                [(f["function"], f"{100 * f['share']:.1f}%") for f in ours[:rows]])


def _short_frame(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``; thread markers kept as they are."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if not path:
        return name
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def peer_samples(
    lab: Any, monitor: Any, first: int, count: int, timeout: float, settle: float,
    budget: float,
) -> tuple[list[Sample], list[Sample], int]:
    """Add then delete one new peer ``count`` times (within ``budget`` seconds).

    Returns the add samples, the delete samples and how many timed out.
    """
    adds: list[Sample] = []
    deletes: list[Sample] = []
    timeouts = 0
    deadline = time.monotonic() + budget
    for k in range(count):
        if time.monotonic() > deadline:
            print(f"budget of {budget}s used up after {k} samples")
            break
        peer = Peer(first + k)
        added = add_peer_sample(lab, monitor, peer, timeout)
        time.sleep(settle)
        removed = delete_peer_sample(lab, monitor, peer, timeout)
        time.sleep(settle)
        if added is None or removed is None:
            timeouts += 1
            continue
        adds.append(added)
        deletes.append(removed)
    return adds, deletes, timeouts

