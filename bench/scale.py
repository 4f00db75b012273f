"""flanneld (vxlan) at 1000 and 5000 peers: cold start, memory, events, idle cost, and the limit.

For each size N (``--sizes``), in a fresh lab (``--mode etcd``: N peer leases
in etcd, written in transactions of 128 puts; ``--mode kube``: N peer Node
objects in the lab's Kubernetes API server double, reached by ``--kube-api-url``
or with ``--kubeconfig`` by a kubeconfig file), flanneld is started and
timed until /readyz answers 200 and until the kernel holds all 3N objects
(N routes, N neighbours, N FDB entries; counted from rtnetlink notifications
and checked against an ``ip``/``bridge`` dump afterwards), with the daemon's
own start-up phases (``flannel_start_phase_seconds``) and issue 13's targets
next to the figures.  VmRSS/VmHWM are
read from /proc/PID/status after convergence.  Then:

* ``--samples`` times one new peer is added (put -> route+neigh+fdb) and
  deleted again (del -> route gone), within ``--budget`` seconds;
* 100 new peers at once: seconds from the last write to all their routes,
  then the same for deleting them;
* converged and left alone for whole resync periods (from just after one
  periodic full pass to just after another, at least ``--idle`` seconds
  apart): CPU share of the daemon, the share of the time its full passes took
  (``flannel_resync_seconds_total``), and the last pass's duration;
* one peer added/deleted while full passes run (the daemon restarted with
  ``--resync-interval 0.1 --resync-max-cpu 50``: a full pass half of the
  time), ``--samples`` times, with the share of the time in full passes;
* a burst of N more peers written while it runs (``--no-burst`` skips it):
  seconds from the last write to all 2N peers programmed;
* the physical limit: the same 3N objects written by ``bridge -batch`` and
  ``ip -batch`` into a namespace of their own, in the same run.

Unless ``--no-py-spy``, py-spy samples the daemon during the cold start and
during the samples, and the functions with the most samples are reported.

Usage (root): ``python3 bench/scale.py [--mode etcd|kube [--kubeconfig]] [--sizes 1000,5000]
[--samples 20] [--out bench/results/scale.json]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from daemon_proc import Flanneld, cpu_seconds, proc_status, reconcile_stats
from etcd_lab import peer_samples, running_lab
from ipbatch import ip_batch_seconds
from kernel_view import compare_views, dump_kernel, expected_view
from kube_lab import running_kube_lab
from nsthread import NODE_IP
from peer_leases import NETWORK, Peer
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
    parser.add_argument("--mode", choices=("etcd", "kube"), default="etcd",
                        help="subnet manager: leases in etcd, or Node objects in the API double")
    parser.add_argument("--kubeconfig", action="store_true",
                        help="kube mode: flanneld reads a kubeconfig file (default: "
                        "--kube-api-url alone, which loads what a pod's in-cluster config does)")
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated peer counts")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds converged and left alone, for the idle CPU share")
    parser.add_argument("--no-burst", action="store_true",
                        help="skip writing N more peers while the daemon runs")
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
    parser.add_argument("--out", help="JSON results (default bench/results/scale.json, "
                        "scale-kube.json in kube mode)")
    args = parser.parse_args()
    if args.out is None:
        args.out = default_out("scale" if args.mode == "etcd" else "scale-kube")
    return args


def _mode(args: argparse.Namespace) -> str:
    if args.mode == "etcd":
        return "etcd mode"
    return "kube mode, " + ("kubeconfig file" if args.kubeconfig else "--kube-api-url")


def run_size(n: int, args: argparse.Namespace, profile_dir: str | None) -> dict[str, Any]:
    peers = [Peer(i) for i in range(n)]
    result: dict[str, Any] = {"peers": n, "mode": _mode(args)}
    with running_kube_lab(args.kubeconfig) if args.mode == "kube" else running_lab() as lab:
        result["store_write_s"] = round(lab.put_peers(peers), 3)
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
            samples = daemon.metrics(lab.node_thread)
            result["reconcile_at_convergence"] = reconcile_stats(samples)
            result["start_phases_s"] = start_phases(samples)
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
            result["store_rtt_ms"] = summary([s.put_ms for s in adds])
            result["cpu_during_samples_s"] = round(cpu_seconds(daemon.pid) - cpu_before, 2)
            result.update(_hundred_at_once(lab, monitor, n, args.timeout))
            result.update(_idle(lab, daemon, args.idle))
            result["status_end_kib"] = proc_status(daemon.pid)
            result["reconcile_end"] = reconcile_stats(daemon.metrics(lab.node_thread))
            daemon.stop()
            daemon = lab.flanneld(extra=FREQUENT_FULL_PASSES)
            result.update(_during_full_passes(lab, monitor, daemon, n, args))
            daemon.stop()
            daemon = lab.flanneld()
            daemon.start()
            if daemon.wait_ready(lab.node_thread, args.ready_timeout) is None:
                result["error"] = "not ready again after the full-pass samples"
                return result
            if not args.no_burst:
                burst = [Peer(i) for i in range(n + 100, 2 * n + 100)]
                lab.put_peers(burst)
                written = time.monotonic()
                done = monitor.wait_counts(2 * n, 2 * n, 2 * n, args.ready_timeout)
                result["burst_last_write_to_all_s"] = _since(written, done)
            result["monitor_overflows"] = monitor.overflows
        finally:
            if spy is not None:
                spy.stop()
            daemon.stop()
            monitor.close()
        result["ip_batch_s"] = round(ip_batch_seconds(lab.prefix, peers), 3)
    return result


def _hundred_at_once(lab: Any, monitor: Any, n: int, timeout: float) -> dict[str, Any]:
    """100 new peers written back to back, then deleted: seconds after the last write."""
    batch = [Peer(i) for i in range(n, n + 100)]
    lab.put_peers(batch)
    written = time.monotonic()
    added = monitor.wait_counts(n + 100, n + 100, n + 100, timeout)
    for peer in batch:
        lab.delete_peer(peer)
    deleted = time.monotonic()
    gone = monitor.wait(lambda m: time.monotonic() if len(m.view.routes) <= n else None, timeout)
    return {"hundred_add_after_last_s": _since(written, added),
            "hundred_delete_after_last_s": _since(deleted, gone)}


FREQUENT_FULL_PASSES = ("--resync-interval", "0.1", "--resync-max-cpu", "50")
RESYNC_TOTAL = "flannel_resync_seconds_total"
POLL_S = 1.0  # how often /metrics is read while waiting for a full pass to end


def _idle(lab: Any, daemon: Flanneld, seconds: float) -> dict[str, Any]:
    """The daemon left alone over whole resync periods: its CPU share, the share its full
    passes took, and the last pass's duration.

    The window runs from just after one periodic full pass to just after another, at
    least ``seconds`` apart, so it holds whole periods (a window of arbitrary length holds
    one pass more or less, and at 5000 peers a period is about a minute).  The period is
    measured first, so that inside the window /metrics is read (which costs the daemon
    CPU) only in the last seconds before the pass that ends it.
    """
    before = _after_full_pass(lab, daemon, seconds + 300)
    first = _after_full_pass(lab, daemon, seconds + 300)
    period = max(POLL_S, first.at - before.at)
    time.sleep(max(0.0, math.ceil(seconds / period) * period - 3 * POLL_S))
    last = _after_full_pass(lab, daemon, seconds + 300)
    wall = last.at - first.at
    resync = daemon.metrics(lab.node_thread).get("flannel_resync_duration_seconds")
    return {"idle_cpu_percent": round(100 * (last.cpu - first.cpu) / wall, 2),
            "idle_full_pass_percent": round(100 * (last.resync - first.resync) / wall, 2),
            "idle_seconds": round(wall, 1), "idle_aligned": first.aligned and last.aligned,
            "last_full_pass_s": None if not resync else round(resync, 3)}


@dataclass(frozen=True)
class Reading:
    at: float
    cpu: float
    resync: float  # flannel_resync_seconds_total
    aligned: bool  # just after a full pass ended (else the wait for one timed out)


def _after_full_pass(lab: Any, daemon: Flanneld, timeout: float) -> Reading:
    """The clock, the daemon's CPU seconds and its full-pass seconds just after its next
    full pass ends (read every POLL_S seconds)."""
    before = daemon.metrics(lab.node_thread).get(RESYNC_TOTAL, 0.0)
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(POLL_S)
        now = daemon.metrics(lab.node_thread).get(RESYNC_TOTAL, 0.0)
        if now != before or time.monotonic() > deadline:
            return Reading(time.monotonic(), cpu_seconds(daemon.pid), now, now != before)


def _during_full_passes(
    lab: Any, monitor: Any, daemon: Flanneld, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One peer added/deleted ``--samples`` times while the daemon runs a full pass half of
    the time: the latency, and the share of the sampling time its full passes took."""
    daemon.start()
    if daemon.wait_ready(lab.node_thread, args.ready_timeout) is None:
        return {"full_pass_samples_error": "not ready"}
    before = daemon.metrics(lab.node_thread).get(RESYNC_TOTAL, 0.0)
    started = time.monotonic()
    adds, deletes, timeouts = peer_samples(
        lab, monitor, n + 200, args.samples, args.timeout, args.settle, args.budget
    )
    wall = time.monotonic() - started
    busy = daemon.metrics(lab.node_thread).get(RESYNC_TOTAL, 0.0) - before
    return {"full_pass_add_ms": summary([s.latency_ms for s in adds]),
            "full_pass_delete_route_ms": summary([s.latency_ms for s in deletes]),
            "full_pass_samples_timed_out": timeouts,
            "full_pass_share_percent": round(100 * busy / wall, 1)}


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


# Issue 13's targets for a cold start (seconds to all programmed) and RSS, by peer count.
START_TARGET_S = {1000: 0.4, 5000: 1.5}
RSS_TARGET_MIB = {5000: 60.0}
BURST_TARGET_S = 3.0
PHASE_METRIC = 'flannel_start_phase_seconds{phase="'


def start_phases(samples: dict[str, float]) -> dict[str, float]:
    """The daemon's own start-up phases (flannel_start_phase_seconds), in seconds."""
    return {name[len(PHASE_METRIC):-2]: round(value, 3) for name, value in samples.items()
            if name.startswith(PHASE_METRIC)}


def _target(targets: dict[int, float], n: int) -> str:
    return f"<= {targets[n]:g}" if n in targets else "-"


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
        f"flanneld cold start with N peers ({_mode(args)}, vxlan; 3 kernel objects per peer)"
        " next to ip -batch of the same objects",
        ["peers", "store write s", "start->1st route s", "start->ready s", "start->all s",
         "target s", "ip -batch s", "routes/neigh/fdb", "kernel=leases", "VmRSS MiB",
         "target MiB", "VmHWM MiB", "CPU s"],
        [(r["peers"], r["store_write_s"], r.get("start_to_first_route_s"),
          r.get("start_to_ready_s"), r.get("start_to_all_programmed_s"),
          _target(START_TARGET_S, r["peers"]), r.get("ip_batch_s"),
          "/".join(str(v) for v in r["kernel_counts_dump"].values()),
          "yes" if not any(r["kernel_vs_leases"].values()) else r["kernel_vs_leases"],
          _mib(r["status_after_convergence_kib"].get("VmRSS")),
          _target(RSS_TARGET_MIB, r["peers"]),
          _mib(r["status_after_convergence_kib"].get("VmHWM")),
          r["cpu_to_convergence_s"]) for r in results],
    )
    phases = list(dict.fromkeys(p for r in results for p in r.get("start_phases_s", {})))
    print_table(
        "where the cold start goes: the daemon's own phases (flannel_start_phase_seconds) [s];"
        " 'imports' runs from the process start (interpreter and module imports)",
        ["peers", *phases, "sum"],
        [(r["peers"], *(r.get("start_phases_s", {}).get(p, "-") for p in phases),
          round(sum(r.get("start_phases_s", {}).values()), 3)) for r in results],
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
    print_table(
        "one peer added/deleted while full passes run (--resync-interval 0.1 --resync-max-cpu 50)"
        " [ms]; targets: add p50 <= 20, p99 <= 50",
        ["peers", "add p50", "add p99", "add max", "del p50", "del p99", "timeouts",
         "time in full passes %"],
        [(r["peers"],
          *(fmt_ms(r.get("full_pass_add_ms", {}).get(k)) for k in ("p50", "p99", "max")),
          *(fmt_ms(r.get("full_pass_delete_route_ms", {}).get(k)) for k in ("p50", "p99")),
          r.get("full_pass_samples_timed_out", "-"), r.get("full_pass_share_percent", "-"))
         for r in results],
    )
    print_table(
        "bursts and idle (seconds after the last write; idle CPU in % of one core over whole"
        f" resync periods; targets: N more added <= {BURST_TARGET_S:g} s, full pass <= 0.5 s,"
        " idle CPU <= 1 %)",
        ["peers", "100 added s", "100 deleted s", "N more added s", "full pass s",
         "idle CPU %", "in full passes, % of time", "idle window s", "VmRSS end MiB"],
        [(r["peers"], r.get("hundred_add_after_last_s"), r.get("hundred_delete_after_last_s"),
          r.get("burst_last_write_to_all_s", "-"), r.get("last_full_pass_s"),
          r.get("idle_cpu_percent"), r.get("idle_full_pass_percent"),
          f"{r.get('idle_seconds')}{'' if r.get('idle_aligned') else ' (not aligned)'}",
          _mib(r.get("status_end_kib", {}).get("VmRSS")))
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
