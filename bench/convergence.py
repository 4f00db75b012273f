"""Convergence of one flanneld (etcd subnet manager, vxlan backend) on single peer changes.

``--ip-family dual`` runs a dual-stack cluster instead (``--backend vxlan``, the
default, or ``host-gw``): every peer lease has an IPv4 /24 and an IPv6 /64 with
an address (and for vxlan a VTEP MAC) of each family, and an add counts when
BOTH families' objects are in the kernel (a delete: when all are gone).
With ``--peers 1000`` its cold start is the "1000 dual-stack leases from cold
start" figure (time, and the daemon's RSS once everything is programmed).

With ``--peers`` leases already in etcd, flanneld is started in a node
namespace (start -> /readyz 200, and start -> every route/neighbour/FDB
entry programmed).  Then ``--samples`` times: put ONE new peer lease and
time until the kernel announces its route (with its neighbour and FDB entry
already present), then delete it and time until its route, and then all
three objects, are gone.  Times run from just before the etcd request;
the etcd round trip itself is reported separately.  After the samples the
daemon is restarted ``--restarts`` times on the programmed node (warm start).

Kernel changes are observed with an rtnetlink socket opened in the node
namespace (notifications, timestamped on arrival), not by polling.

Usage (root): ``python3 bench/convergence.py [--peers 10] [--samples 50]
[--restarts 2] [--ip-family ipv4|dual] [--backend vxlan|host-gw]
[--out bench/results/convergence.json]``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from daemon_proc import Flanneld, cpu_seconds, proc_status, reconcile_stats
from etcd_lab import Lab, Sample, peer_samples, put_peers, running_lab
from kernel_view import KernelMonitor, compare_views, dump_kernel, expected_view
from peer_leases import Peer
from profiling import PySpy, print_profile, top_functions
from report import (
    default_out,
    finish_facts,
    fmt_ms,
    machine_facts,
    print_table,
    summary,
    write_json,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--peers", type=int, default=10, help="existing peer leases (N)")
    parser.add_argument("--samples", type=int, default=50, help="add/delete samples")
    parser.add_argument("--restarts", type=int, default=2, help="warm restarts to time")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per sample")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=0.02,
                        help="pause between steps, seconds")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="stop sampling after this many seconds")
    parser.add_argument("--profile", help="run flanneld under cProfile, write stats here")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample the daemon with py-spy during the add/delete samples")
    parser.add_argument("--ip-family", choices=("ipv4", "dual"), default="ipv4",
                        help="dual: every peer has an IPv4 and an IPv6 subnet")
    parser.add_argument("--backend", choices=("vxlan", "host-gw"), default="vxlan",
                        help="host-gw needs --ip-family dual")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.backend != "vxlan" and args.ip_family != "dual":
        parser.error("--backend host-gw needs --ip-family dual")
    if args.out is None:
        args.out = default_out("convergence" if args.ip_family == "ipv4"
                               else f"convergence-dual-{args.backend}")
    return args


def expected_counts(peers: int, make_peer: Callable[[int], Peer]) -> tuple[int, int, int]:
    """(routes, neighbours, FDB entries) the node holds for ``peers`` peers."""
    one = make_peer(0)
    return (peers * len(one.routes), peers * len(one.neighbours()), peers * len(one.fdb()))


def start_and_time(lab: Lab, monitor: KernelMonitor, peers: int, timeout: float,
                   *, cold: bool, profile: str | None = None,
                   make_peer: Callable[[int], Peer] = Peer) -> tuple[Flanneld, dict[str, Any]]:
    daemon = lab.flanneld(profile=profile)
    daemon.start()
    ready = daemon.wait_ready(lab.node_thread, timeout)
    # on a warm restart everything is programmed already: nothing to time
    counts = expected_counts(peers, make_peer)
    programmed = monitor.wait_counts(*counts, timeout) if cold else None
    if ready is None:
        raise RuntimeError(f"flanneld not ready after {timeout}s:\n{daemon.log_tail()}")
    return daemon, {
        "start_to_ready_ms": round(1000 * (ready - daemon.started_at), 1),
        "start_to_programmed_ms": (
            None if programmed is None else round(1000 * (programmed - daemon.started_at), 1)
        ),
    }


def main() -> int:
    args = parse_args()
    facts = machine_facts()
    dual = args.ip_family == "dual"
    make_peer = partial(Peer, dual=dual, backend=args.backend)
    base = [make_peer(i) for i in range(args.peers)]
    adds: list[Sample] = []
    deletes: list[Sample] = []
    timeouts = 0
    restarts: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    with running_lab(args.backend if dual else None) as lab:
        put_peers(lab.gateway, base)
        monitor = lab.monitor()
        daemon: Flanneld | None = None
        try:
            daemon, cold = start_and_time(lab, monitor, args.peers, args.ready_timeout,
                                          cold=True, profile=args.profile, make_peer=make_peer)
            cpu_at_ready = cpu_seconds(daemon.pid)
            status_ready = proc_status(daemon.pid)
            spy = None
            if args.py_spy:
                profile_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "profiles")
                os.makedirs(profile_dir, exist_ok=True)
                spy = PySpy(daemon.pid, os.path.join(profile_dir, "convergence-samples.txt"))
            adds, deletes, timeouts = peer_samples(
                lab, monitor, args.peers, args.samples, args.timeout, args.settle, args.budget,
                make_peer,
            )
            if spy is not None:
                spy.stop()
                profile = top_functions(spy.out)
            final = compare_views(dump_kernel(lab.node_ns), expected_view(base))
            metrics = daemon.metrics(lab.node_thread)
            cpu_total = cpu_seconds(daemon.pid)
            status_end = proc_status(daemon.pid)
            daemon.stop()
            daemon = None
            for _ in range(args.restarts):
                daemon, warm = start_and_time(lab, monitor, args.peers, args.ready_timeout,
                                              cold=False, make_peer=make_peer)
                restarts.append(warm)
                daemon.stop()
                daemon = None
        finally:
            if daemon is not None:
                daemon.stop()
            monitor.close()

    add_e2e = summary([s.latency_ms for s in adds])
    del_route = summary([s.latency_ms for s in deletes])
    del_all = summary([s.extra_ms for s in deletes if s.extra_ms is not None])
    put_rtt = summary([s.put_ms for s in adds])
    del_rtt = summary([s.put_ms for s in deletes])
    objects = "route+neigh+fdb" if args.backend == "vxlan" else "route"
    both = " of both families" if dual else ""
    rows = [
        (f"add: put -> {objects}{both}", add_e2e),
        (f"delete: del -> route{'s' if dual else ''} gone", del_route),
        *([(f"delete: del -> all gone{both}", del_all)] if args.backend == "vxlan" else []),
        ("etcd put round trip", put_rtt),
        ("etcd delete round trip", del_rtt),
    ]
    print_table(
        f"flanneld convergence, {'dual-stack ' if dual else ''}{args.backend}, etcd, "
        f"{args.peers} existing peers, "
        f"{len(adds)} samples ({timeouts} timed out) [ms]",
        ["measure", "n", "p50", "p99", "max", "mean"],
        [(name, s["n"], fmt_ms(s["p50"]), fmt_ms(s["p99"]), fmt_ms(s["max"]),
          fmt_ms(s["mean"])) for name, s in rows],
    )
    routes = expected_counts(args.peers, make_peer)[0]
    start_rows = [("cold", cold["start_to_ready_ms"], cold["start_to_programmed_ms"],
                   _mib(status_ready.get("VmRSS")), _mib(status_ready.get("VmHWM")))]
    start_rows += [(f"warm restart {i + 1}", r["start_to_ready_ms"], r["start_to_programmed_ms"],
                    "-", "-") for i, r in enumerate(restarts)]
    print_table(
        f"flanneld start with {args.peers} {'dual-stack ' if dual else ''}{args.backend} peers "
        f"({routes} routes) [ms; RSS once programmed]",
        ["start", "start -> /readyz 200", "start -> all programmed", "VmRSS MiB", "VmHWM MiB"],
        start_rows,
    )
    if profile:
        print_profile("py-spy during the samples", profile)
    reconcile = reconcile_stats(metrics)
    print(f"\nreconciles: {reconcile['count']:.0f}, mean {reconcile['mean_ms']} ms; "
          f"daemon CPU {cpu_total:.2f}s ({cpu_total - cpu_at_ready:.2f}s during samples); "
          f"RSS at ready {status_ready.get('VmRSS')} KiB, end {status_end.get('VmRSS')} KiB; "
          f"final kernel state vs leases: {final}")
    write_json(args.out, {
        "bench": "convergence",
        "machine": finish_facts(facts),
        "params": vars(args),
        "samples_ok": len(adds),
        "samples_timed_out": timeouts,
        "add_ms": add_e2e,
        "delete_route_ms": del_route,
        "delete_all_ms": del_all,
        "etcd_put_rtt_ms": put_rtt,
        "etcd_delete_rtt_ms": del_rtt,
        "cold_start": cold,
        "warm_restarts": restarts,
        "reconcile": reconcile,
        "daemon_cpu_s": round(cpu_total, 3),
        "daemon_cpu_during_samples_s": round(cpu_total - cpu_at_ready, 3),
        "rss_kib": {"ready": status_ready.get("VmRSS"), "end": status_end.get("VmRSS"),
                    "hwm": status_end.get("VmHWM")},
        "final_kernel_vs_leases": final,
        "monitor_overflows": monitor.overflows,
        "profile_samples": profile,
        "raw": {"add_ms": [round(s.latency_ms, 3) for s in adds],
                "delete_route_ms": [round(s.latency_ms, 3) for s in deletes]},
    })
    return 0 if timeouts == 0 and not any(final.values()) else 1


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
