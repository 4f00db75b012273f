"""Pod-to-pod reachability: ``ping`` run inside the source pod's namespace.

Parsing is pure; :func:`run_pings` runs a bounded number of pings at a
time, each bounded by ping's own deadline and a hard timeout.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flanneld.lab.topology import netns_argv

PING = "ping"
MAX_PARALLEL = 16

_COUNTS_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT_RE = re.compile(r"(?:rtt|round-trip) min/avg/max/(?:mdev|stddev) = [\d.]+/([\d.]+)/")


@dataclass(frozen=True, slots=True)
class PingStats:
    """What one ping run reported."""

    sent: int
    received: int
    rtt_ms: float | None  # average round trip, None without replies

    @property
    def lost(self) -> int:
        return self.sent - self.received


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A pod as a ping source or target."""

    name: str
    netns: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class PingJob:
    src: Endpoint
    dst: Endpoint
    argv: tuple[str, ...]
    count: int


@dataclass(frozen=True, slots=True)
class Cell:
    """One matrix entry: did ``src`` reach ``dst`` ``count`` times, and how fast."""

    src: str
    dst: str
    ok: bool
    rtt_ms: float | None
    sent: int
    received: int
    family: int = 4  # the IP version pinged

    def to_json(self) -> dict[str, object]:
        return {
            "src": self.src,
            "dst": self.dst,
            "family": f"ipv{self.family}",
            "ok": self.ok,
            "rtt_ms": self.rtt_ms,
            "sent": self.sent,
            "received": self.received,
        }


def parse_ping(output: str) -> PingStats:
    """Parse iputils ping's summary; no summary means nothing was received."""
    counts = _COUNTS_RE.search(output)
    if counts is None:
        return PingStats(sent=0, received=0, rtt_ms=None)
    rtt = _RTT_RE.search(output)
    received = int(counts.group(2))
    return PingStats(
        sent=int(counts.group(1)),
        received=received,
        rtt_ms=float(rtt.group(1)) if rtt and received else None,
    )


def ping_argv(
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address, count: int, interval: float, deadline: float | None
) -> tuple[str, ...]:
    """``ping -q -n``; with a deadline ping retries until ``count`` replies or time is up."""
    argv = [PING, "-q", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1"]
    if deadline is not None:
        argv += ["-w", f"{max(1, round(deadline))}"]
    return (*argv, str(dst))


def matrix_jobs(
    endpoints: Sequence[Endpoint], count: int, interval: float, deadline: float
) -> list[PingJob]:
    """Every ordered pair of distinct pods, per address family both have."""
    return [
        PingJob(src, dst, ping_argv(dst.ip, count, interval, deadline), count)
        for src in endpoints
        for dst in endpoints
        if src.name != dst.name and src.ip.version == dst.ip.version
    ]


def cell_from(job: PingJob, stats: PingStats) -> Cell:
    return Cell(
        src=job.src.name,
        dst=job.dst.name,
        ok=stats.received >= job.count,
        rtt_ms=stats.rtt_ms,
        sent=stats.sent,
        received=stats.received,
        family=job.dst.ip.version,
    )


def run_ping(src_netns: str, argv: Sequence[str], timeout: float) -> PingStats:
    """Run one ping inside ``src_netns``; a ping killed by ``timeout`` counts as failed."""
    try:
        done = subprocess.run(
            netns_argv(src_netns, argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return parse_ping(out)
    return parse_ping(done.stdout)


def run_pings(jobs: Sequence[PingJob], timeout: float) -> list[Cell]:
    """Run ``jobs`` at most :data:`MAX_PARALLEL` at a time; each is killed after ``timeout``."""
    cells: dict[int, Cell] = {}
    pending = list(enumerate(jobs))
    running: list[tuple[int, PingJob, subprocess.Popen[str], float]] = []
    while pending or running:
        while pending and len(running) < MAX_PARALLEL:
            idx, job = pending.pop(0)
            proc = subprocess.Popen(
                netns_argv(job.src.netns, job.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            running.append((idx, job, proc, time.monotonic() + timeout))
        still: list[tuple[int, PingJob, subprocess.Popen[str], float]] = []
        for idx, job, proc, deadline in running:
            if proc.poll() is None and time.monotonic() < deadline:
                still.append((idx, job, proc, deadline))
                continue
            if proc.poll() is None:
                proc.kill()
            out, _ = proc.communicate()
            cells[idx] = cell_from(job, parse_ping(out))
        running = still
        if running:
            time.sleep(0.02)
    return [cells[i] for i in range(len(jobs))]
