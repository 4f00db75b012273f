"""Probe the model's reachability matrix: every ordered pair of pods, one port and protocol.

Each probe runs in a worker thread that first moves itself into the source
pod's network namespace (:func:`flanneld.lab.nsenter.enter_netns`), so its
socket is the source pod's, exactly as ``agnhost connect`` inside the pod
would be.  A TCP probe succeeds when the connection opens and the server
answers; a UDP probe when the server's reply datagram comes back.  A
rejected probe fails at once, a dropped one after ``timeout``: 72 probes over
a few dozen threads take about one timeout.  Loopback cells (a pod to
itself) are not probed: the e2e suite ignores them (kubernetes#95879).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flanneld.lab.nsenter import enter_netns

DEFAULT_TIMEOUT = 1.0
WORKERS = 24
UDP_TRIES = 2
PROBE_PAYLOAD = b"probe\n"


@dataclass(frozen=True, slots=True)
class Target:
    """One pod as a probe end: its e2e name, namespace and address."""

    key: str  # x/a
    netns: str
    ip: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    src: str
    dst: str
    port: int
    protocol: str
    ok: bool
    detail: str  # what the server answered, or why it failed

    def to_json(self) -> dict[str, object]:
        return {"from": self.src, "to": self.dst, "port": self.port,
                "protocol": self.protocol, "ok": self.ok, "detail": self.detail}


def sctp_error() -> str | None:
    """Why this kernel cannot open SCTP sockets, or None if it can."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError as err:
        return f"this kernel cannot open SCTP sockets ({errno.errorcode.get(err.errno or 0, '?')}:" \
               f" {err.strerror}); SCTP is not probed"
    return None


def _connect(ip: str, port: int, protocol: str, timeout: float) -> str:
    """Talk to the server once; its answer, or OSError/TimeoutError."""
    if protocol == "tcp":
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            return sock.recv(256).decode(errors="replace").strip()
    if protocol == "sctp":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP) as sock:
            sock.settimeout(timeout)
            sock.connect((ip, port))
            return sock.recv(256).decode(errors="replace").strip()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((ip, port))
        sock.settimeout(timeout / UDP_TRIES)
        for attempt in range(UDP_TRIES):
            sock.send(PROBE_PAYLOAD)
            try:
                return sock.recv(256).decode(errors="replace").strip()
            except TimeoutError:
                if attempt == UDP_TRIES - 1:
                    raise
        raise TimeoutError  # not reached: the loop returns or raises


def probe_once(src: Target, dst: Target, port: int, protocol: str,
               timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """One probe from ``src``'s namespace; call it from a thread of its own (it enters the
    namespace for good)."""
    try:
        enter_netns(src.netns)
        answer = _connect(dst.ip, port, protocol, timeout)
    except TimeoutError:
        return ProbeResult(src.key, dst.key, port, protocol, False, "timeout")
    except OSError as err:
        return ProbeResult(src.key, dst.key, port, protocol, False,
                           errno.errorcode.get(err.errno or 0, str(err)))
    return ProbeResult(src.key, dst.key, port, protocol, answer == dst.key, answer)


def serving(key: str, netns: str, ports: Sequence[int], timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether pod ``key``'s own server answers TCP on every port (from inside the pod)."""
    local = Target(key, netns, "127.0.0.1")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe") as pool:
        return all(pool.map(lambda port: probe_once(local, local, port, "tcp", timeout).ok, ports))


def probe_matrix(targets: Sequence[Target], port: int, protocol: str,
                 timeout: float = DEFAULT_TIMEOUT) -> list[ProbeResult]:
    """Every ordered pair (no loopback), probed in parallel; results in row order."""
    pairs = [(src, dst) for src in targets for dst in targets if src.key != dst.key]
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="probe") as pool:
        return list(pool.map(lambda pair: probe_once(pair[0], pair[1], port, protocol, timeout),
                             pairs))


def render(keys: Sequence[str], results: Sequence[ProbeResult]) -> str:
    """The truth table as upstream prints it: ``.`` reachable, ``X`` not, ``-`` loopback."""
    ok = {(r.src, r.dst): r.ok for r in results}
    width = max((len(k) for k in keys), default=1)
    lines = [" " * width + " " + " ".join(k.rjust(width) for k in keys)]
    for src in keys:
        cells = ["-" if src == dst else "." if ok.get((src, dst)) else "X" for dst in keys]
        lines.append(src.ljust(width) + " " + " ".join(c.rjust(width) for c in cells))
    return "\n".join(lines)
