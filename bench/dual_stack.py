"""Dual-stack lab figures: IPv4 and IPv6 pod-to-pod TCP throughput and ping on vxlan and
host-gw, each next to the underlay of the same family, in one run.

Per backend a two-node lab (``flannelctl lab up --backend <b> --ip-family dual``,
prefix ``pfd<hex>``, torn down afterwards, also on failure) with one pod per node.
Per family: iperf3 TCP node n1 -> node n2 over the underlay (the baseline) and pod
n1p1 -> pod n2p1 through the overlay (``--runs`` runs of ``-t --seconds``, median),
and ping RTT p50/p99 for both paths.  The ratio is pod-to-pod over the underlay of
the same family (IPv6 pods over the IPv6 underlay).

Usage (root): ``python3 bench/dual_stack.py [--backends vxlan,host-gw]
[--subnet-mgr etcd|kube] [--runs 3] [--seconds 3] [--out results.md]``.  Every
external command has a timeout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import uuid
from dataclasses import dataclass

import checkout  # noqa: F401 - this checkout's pyflannel first
from report import emit_table, finish_facts, machine_facts
from throughput import iperf, ping_stats

from flanneld.lab.lab import Lab, down, up
from flanneld.lab.matrix import Endpoint


@dataclass(frozen=True, slots=True)
class Path:
    gbps: float
    ping_p50_ms: float
    ping_p99_ms: float


def measure(client_ns: str, server_ns: str, server_ip: str, runs: int, seconds: int) -> Path:
    gbps = statistics.median(iperf(client_ns, server_ns, server_ip, seconds).gbps
                             for _ in range(runs))
    p50, p99 = ping_stats(client_ns, server_ip)
    return Path(gbps, p50, p99)


def pod(lab: Lab, name: str, version: int) -> Endpoint:
    return next(e for e in lab.endpoints() if e.name == name and e.ip.version == version)


def run(lab: Lab, runs: int, seconds: int) -> list[tuple[int, Path, Path]]:
    n1, n2 = lab.plan.nodes[:2]
    rows = []
    for version in (4, 6):
        underlay_ip = n2.address.ip if version == 4 else n2.address6.ip if n2.address6 else None
        if underlay_ip is None:
            raise RuntimeError("the lab has no IPv6 underlay")
        under = measure(n1.netns, n2.netns, str(underlay_ip), runs, seconds)
        src, dst = pod(lab, "n1p1", version), pod(lab, "n2p1", version)
        over = measure(src.netns, dst.netns, str(dst.ip), runs, seconds)
        rows.append((version, under, over))
    return rows


def table(rows: list[tuple[str, int, Path, Path]]) -> str:
    lines = [
        ("| backend | family | underlay Gbit/s | pod-to-pod Gbit/s | ratio "
         "| ping p50/p99 underlay ms | ping p50/p99 pod-to-pod ms |"),
        "|---|---|---|---|---|---|---|",
    ]
    for backend, version, under, over in rows:
        lines.append(
            f"| {backend} | IPv{version} | {under.gbps:.2f} | {over.gbps:.2f} "
            f"| {over.gbps / under.gbps:.2f} "
            f"| {under.ping_p50_ms:.3f}/{under.ping_p99_ms:.3f} "
            f"| {over.ping_p50_ms:.3f}/{over.ping_p99_ms:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="vxlan,host-gw",
                        help="comma-separated backends, one dual-stack lab each")
    parser.add_argument("--subnet-mgr", choices=("etcd", "kube"), default="etcd")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    facts = machine_facts()
    rows: list[tuple[str, int, Path, Path]] = []
    for backend in backends:
        prefix = "pfd" + uuid.uuid4().hex[:5]
        try:
            lab = up(nodes=2, backend=backend, pods_per_node=1, prefix=prefix,
                     subnet_mgr=args.subnet_mgr, ip_family="dual")
            rows += [(backend, *row) for row in run(lab, args.runs, args.seconds)]
        finally:
            down(prefix)
    emit_table(table(rows), finish_facts(facts), args.out,
               f"{', '.join(backends)}, {args.subnet_mgr} mode; ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
