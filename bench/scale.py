"""flanneld (etcd, vxlan) at 1000 and 5000 peers: cold start, memory, and per-peer latency.

For each size N (``--sizes``), in a fresh lab: N peer leases are written to
etcd (transactions of 128 puts), then flanneld is started and timed until
/readyz answers 200 and until the kernel holds all 3N objects (N routes,
N neighbours, N FDB entries; counted from rtnetlink notifications and
checked against an ``ip``/``bridge`` dump afterwards).  VmRSS/VmHWM are read
from /proc/PID/status after convergence.  Then ``--samples`` times one new
peer is added (put -> route+neigh+fdb) and deleted again (del -> route
gone), within ``--budget`` seconds per size.

Unless ``--no-py-spy``, py-spy samples the daemon during the cold start and
during the samples, and the functions with the most samples are reported.

Usage (root): ``python3 bench/scale.py [--sizes 1000,5000] [--samples 20]
[--out bench/results/scale.json]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import time
from typing import Any

from daemon_proc import cpu_seconds, proc_status, reconcile_stats
from etcd_lab import NODE_IP, peer_samples, put_peers, running_lab
from kernel_view import compare_views, dump_kernel, expected_view
from peer_leases import NETWORK, SUBNETS, Peer
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

from backends.model import DataplaneState
from backends.peers import usable_peers
from backends.plan import plan
from backends.vxlan_state import BACKEND_TYPE, desired_state, encode_backend_data, vxlan_peers
from subnet.lease import Lease, LeaseAttrs, decode_attrs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated peer counts")
    parser.add_argument("--samples", type=int, default=20, help="add/delete samples per size")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per sample")
    parser.add_argument("--ready-timeout", type=float, default=120.0,
                        help="seconds to wait for readiness and for all objects")
    parser.add_argument("--budget", type=float, default=50.0,
                        help="seconds of sampling per size at most")
    parser.add_argument("--settle", type=float, default=0.05)
    parser.add_argument("--no-py-spy", action="store_true", help="do not profile the daemon")
    parser.add_argument("--no-pure", action="store_true",
                        help="skip timing the backend's pure functions in this process")
    parser.add_argument("--out", default=default_out("scale"))
    return parser.parse_args()


def run_size(n: int, args: argparse.Namespace, profile_dir: str | None) -> dict[str, Any]:
    peers = [Peer(i) for i in range(n)]
    result: dict[str, Any] = {"peers": n}
    with running_lab() as lab:
        result["etcd_write_s"] = round(put_peers(lab.gateway, peers), 3)
        result["etcd_keys"] = lab.gateway.count_prefix(SUBNETS)
        monitor = lab.monitor()
        daemon = lab.flanneld()
        spy: PySpy | None = None
        try:
            daemon.start()
            if profile_dir:
                spy = PySpy(daemon.pid, os.path.join(profile_dir, f"scale-{n}-start.txt"))
            ready = daemon.wait_ready(lab.node_thread, args.ready_timeout)
            left = max(1.0, args.ready_timeout - (time.monotonic() - daemon.started_at))
            programmed = monitor.wait_counts(n, n, n, left)
            if spy is not None:
                spy.stop()
                result["profile_start"] = top_functions(spy.out)
                spy = None
            first_route = min(monitor.view.routes.values(), default=None)
            result["start_to_first_route_s"] = _since(daemon.started_at, first_route)
            result["start_to_ready_s"] = _since(daemon.started_at, ready)
            result["start_to_all_programmed_s"] = _since(daemon.started_at, programmed)
            result["kernel_counts_monitor"] = dict(
                zip(("routes", "neighbours", "fdb"), monitor.counts(), strict=True)
            )
            dump = dump_kernel(lab.node_ns)
            result["kernel_counts_dump"] = dict(
                zip(("routes", "neighbours", "fdb"), dump.counts(), strict=True)
            )
            result["kernel_vs_leases"] = compare_views(dump, expected_view(peers))
            result["status_after_convergence_kib"] = proc_status(daemon.pid)
            result["cpu_to_convergence_s"] = round(cpu_seconds(daemon.pid), 2)
            result["reconcile_at_convergence"] = reconcile_stats(daemon.metrics(lab.node_thread))
            if ready is None or programmed is None:
                result["error"] = "not converged in time"
                result["log_tail"] = daemon.log_tail()
                return result

            if profile_dir:
                spy = PySpy(daemon.pid, os.path.join(profile_dir, f"scale-{n}-samples.txt"))
            cpu_before = cpu_seconds(daemon.pid)
            adds, deletes, timeouts = peer_samples(
                lab, monitor, n, args.samples, args.timeout, args.settle, args.budget
            )
            if spy is not None:
                spy.stop()
                result["profile_samples"] = top_functions(spy.out)
                spy = None
            result["samples_ok"] = len(adds)
            result["samples_timed_out"] = timeouts
            result["add_ms"] = summary([s.latency_ms for s in adds])
            result["delete_route_ms"] = summary([s.latency_ms for s in deletes])
            result["etcd_put_rtt_ms"] = summary([s.put_ms for s in adds])
            result["cpu_during_samples_s"] = round(cpu_seconds(daemon.pid) - cpu_before, 2)
            result["status_end_kib"] = proc_status(daemon.pid)
            result["reconcile_end"] = reconcile_stats(daemon.metrics(lab.node_thread))
            result["monitor_overflows"] = monitor.overflows
        finally:
            if spy is not None:
                spy.stop()
            daemon.stop()
            monitor.close()
    return result


def time_pure(n: int) -> dict[str, float]:
    """Seconds one reconcile pass spends in the vxlan backend's pure steps, for N peers.

    The same functions VxlanNetwork.reconcile calls, on the same leases the
    daemon sees, run once each in this process (no kernel, no daemon).
    """
    own = Lease(
        ipaddress.IPv4Network("10.127.1.0/24"), None,
        LeaseAttrs(ipaddress.IPv4Address(NODE_IP), None, BACKEND_TYPE,
                   encode_backend_data(1, "0e:ff:00:00:00:01")),
    )
    leases = [Lease(p.subnet, None, decode_attrs(p.value())) for p in map(Peer, range(n))]
    networks = [NETWORK]
    timings: dict[str, float] = {}

    started = time.perf_counter()
    usable, _ = usable_peers(own, leases, networks, BACKEND_TYPE)
    timings["usable_peers_s"] = time.perf_counter() - started

    started = time.perf_counter()
    peers, _ = vxlan_peers(own, leases, networks, 1)
    timings["vxlan_peers_s"] = time.perf_counter() - started

    started = time.perf_counter()
    desired = desired_state(peers, 7, {})
    timings["desired_state_s"] = time.perf_counter() - started

    started = time.perf_counter()
    cold = plan(DataplaneState(), desired)
    timings["plan_cold_s"] = time.perf_counter() - started

    started = time.perf_counter()
    steady = plan(desired, desired)
    timings["plan_steady_s"] = time.perf_counter() - started
    if len(usable) != n or len(cold) != 3 * n or steady:
        raise RuntimeError(f"pure functions disagree: {len(usable)} usable, {len(cold)} puts, "
                           f"{len(steady)} steady changes for {n} peers")
    return {k: round(v, 4) for k, v in timings.items()}


def _since(start: float, at: float | None) -> float | None:
    return None if at is None else round(at - start, 3)


def main() -> int:
    args = parse_args()
    facts = machine_facts()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    profile_dir = None
    if not args.no_py_spy and shutil.which("py-spy"):
        profile_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "profiles")
        os.makedirs(profile_dir, exist_ok=True)
    results = []
    for n in sizes:
        print(f"--- {n} peers", flush=True)
        results.append(run_size(n, args, profile_dir))
        r = results[-1]
        if not args.no_pure:
            r["pure_functions"] = time_pure(n)
        print(f"    ready {r.get('start_to_ready_s')}s, all programmed "
              f"{r.get('start_to_all_programmed_s')}s, dump {r.get('kernel_counts_dump')}",
              flush=True)

    print_table(
        "flanneld cold start with N peer leases in etcd (vxlan; 3 kernel objects per peer)",
        ["peers", "etcd write s", "start->1st route s", "start->ready s", "start->all s",
         "routes/neigh/fdb", "kernel=leases", "VmRSS MiB", "VmHWM MiB", "CPU s"],
        [(r["peers"], r["etcd_write_s"], r.get("start_to_first_route_s"),
          r.get("start_to_ready_s"), r.get("start_to_all_programmed_s"),
          "/".join(str(v) for v in r["kernel_counts_dump"].values()),
          "yes" if not any(r["kernel_vs_leases"].values()) else r["kernel_vs_leases"],
          _mib(r["status_after_convergence_kib"].get("VmRSS")),
          _mib(r["status_after_convergence_kib"].get("VmHWM")),
          r["cpu_to_convergence_s"]) for r in results],
    )
    print_table(
        "one peer added/deleted at scale [ms]",
        ["peers", "n", "add p50", "add p99", "add max", "del p50", "del p99", "del max",
         "timeouts", "reconcile mean ms"],
        [(r["peers"], r.get("samples_ok", 0),
          *(fmt_ms(r.get("add_ms", {}).get(k)) for k in ("p50", "p99", "max")),
          *(fmt_ms(r.get("delete_route_ms", {}).get(k)) for k in ("p50", "p99", "max")),
          r.get("samples_timed_out", "-"), r.get("reconcile_end", {}).get("mean_ms", "-"))
         for r in results],
    )
    if not args.no_pure:
        names = list(results[0]["pure_functions"])
        print_table(
            "vxlan backend pure steps of ONE reconcile pass, timed in-process [s]"
            " (vxlan_peers includes usable_peers)",
            ["peers", *(k.removesuffix("_s") for k in names)],
            [(r["peers"], *(r["pure_functions"][k] for k in names)) for r in results],
        )
    for r in results:
        for phase in ("profile_start", "profile_samples"):
            prof = r.get(phase)
            if not prof or not prof["samples"]:
                continue
            print_profile(f"py-spy, {r['peers']} peers, {phase.removeprefix('profile_')}",
                             prof)
    write_json(args.out, {"bench": "scale", "machine": finish_facts(facts),
                             "params": vars(args), "results": results})
    return 0 if all("error" not in r for r in results) else 1


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
