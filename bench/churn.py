"""flanneld (etcd, vxlan) memory and correctness under lease churn.

``--slots`` peer subnets (default 200), half of them present at start.  After
flanneld is ready, ``--events`` lease events (default 10 000) are written to
etcd at ``--rate`` per second at most: a random slot (seeded) is put when
absent; when present it is deleted (3 in 4) or re-put with a new VTEP MAC
(1 in 4).  The daemon's VmRSS/VmHWM are sampled every
``--interval`` seconds throughout.  After the last event we wait until the
kernel (routes, neighbours, FDB) equals the final lease set, then check that
with an ``ip``/``bridge`` dump and read the memory once more.

Usage (root): ``python3 bench/churn.py [--events 10000] [--slots 200]
[--rate 250] [--out bench/results/churn.json]``.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from daemon_proc import cpu_seconds, proc_status, reconcile_stats
from etcd_lab import Lab, put_peers, running_lab
from kernel_view import KernelView, compare_views, dump_kernel, expected_view
from peer_leases import Peer
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
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=200, help="peer subnets cycled over")
    parser.add_argument("--rate", type=float, default=250.0, help="events per second at most")
    parser.add_argument("--interval", type=float, default=0.25, help="RSS sampling period, s")
    parser.add_argument("--converge-timeout", type=float, default=60.0)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--tail", type=float, default=3.0,
                        help="seconds to wait after convergence before the last RSS reading")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=default_out("churn"))
    return parser.parse_args()


@dataclass(frozen=True, slots=True)
class MemSample:
    t: float  # seconds since the churn started (negative: before)
    rss_kib: int
    hwm_kib: int


class Sampler(threading.Thread):
    """Reads the daemon's /proc status every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float, origin: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._pid = pid
        self._interval = interval
        self.origin = origin
        self.samples: list[MemSample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self._interval):
            status = proc_status(self._pid)
            if not status:
                return
            self.samples.append(MemSample(round(time.monotonic() - self.origin, 3),
                                          status["VmRSS"], status["VmHWM"]))


def churn(lab: Lab, args: argparse.Namespace, present: dict[int, Peer],
          sent: list[tuple[float, bool, str]]) -> dict[str, Any]:
    """Write the events; ``present`` ends as the final lease set.

    ``sent`` gets (send time, added?, route dst) of every event that adds or
    removes a subnet (updates keep the route and are not listed).
    """
    rng = random.Random(args.seed)
    generation = {slot: 0 for slot in range(args.slots)}
    counts = {"put": 0, "update": 0, "delete": 0}
    started = time.monotonic()
    for k in range(args.events):
        due = started + k / args.rate
        ahead = due - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        slot = rng.randrange(args.slots)
        if slot in present and rng.random() < 0.75:
            gone = present.pop(slot)
            sent.append((time.monotonic(), False, str(gone.subnet)))
            lab.gateway.delete(gone.key)
            counts["delete"] += 1
            continue
        counts["update" if slot in present else "put"] += 1
        generation[slot] += 1
        peer = Peer(slot, generation[slot])
        if slot not in present:
            sent.append((time.monotonic(), True, str(peer.subnet)))
        # a new VTEP MAC each time: neighbour and FDB entry both change
        lab.gateway.put(peer.key, peer.value())
        present[slot] = peer
    elapsed = time.monotonic() - started
    return {"events": args.events, "seconds": round(elapsed, 2),
            "achieved_rate": round(args.events / elapsed, 1), **counts}


def main() -> int:
    args = parse_args()
    facts = machine_facts()
    initial = {slot: Peer(slot) for slot in range(0, args.slots, 2)}
    result: dict[str, Any] = {}
    with running_lab() as lab:
        put_peers(lab.gateway, list(initial.values()))
        monitor = lab.monitor()
        daemon = lab.flanneld()
        sampler: Sampler | None = None
        try:
            daemon.start()
            ready = daemon.wait_ready(lab.node_thread, args.ready_timeout)
            if ready is None:
                raise RuntimeError(f"flanneld not ready:\n{daemon.log_tail()}")
            n = len(initial)
            monitor.wait_counts(n, n, n, args.ready_timeout)
            time.sleep(1.0)
            start_status = proc_status(daemon.pid)
            metrics_before = daemon.metrics(lab.node_thread)
            cpu_before = cpu_seconds(daemon.pid)
            origin = time.monotonic()
            sampler = Sampler(daemon.pid, args.interval, origin)
            sampler.start()
            present = dict(initial)
            sent: list[tuple[float, bool, str]] = []
            result["churn"] = churn(lab, args, present, sent)
            last_event = time.monotonic()
            expected = expected_view(list(present.values()))
            converged = monitor.wait(
                lambda mon: time.monotonic() if _equal(mon.view, expected) else None,
                args.converge_timeout,
            )
            result["last_event_to_converged_s"] = (
                None if converged is None else round(converged - last_event, 3)
            )
            dump = dump_kernel(lab.node_ns)
            result["final_kernel_vs_leases"] = compare_views(dump, expected)
            result["final_equal"] = not any(result["final_kernel_vs_leases"].values())
            result["final_leases"] = len(present)
            result["final_kernel_counts"] = dict(
                zip(("routes", "neighbours", "fdb"), dump.counts(), strict=True)
            )
            time.sleep(args.tail)
            sampler.halt.set()
            sampler.join(5)
            end_status = proc_status(daemon.pid)
            metrics_after = daemon.metrics(lab.node_thread)
            result["daemon_cpu_during_churn_s"] = round(cpu_seconds(daemon.pid) - cpu_before, 2)
            result["daemon_alive"] = daemon.alive()
            result["monitor_overflows"] = monitor.overflows
            result["route_lag"] = route_lags(sent, monitor.route_log)
        finally:
            if sampler is not None:
                sampler.halt.set()
            daemon.stop()
            monitor.close()

    samples = sampler.samples if sampler else []
    during = [s for s in samples if s.t <= result["churn"]["seconds"]]
    peak = max((s.rss_kib for s in samples), default=start_status.get("VmRSS", 0))
    half = [s.rss_kib for s in during[len(during) // 2 :]]
    quartiles = _quartiles(during)
    memory: dict[str, Any] = {
        "start_rss_kib": start_status.get("VmRSS"),
        "peak_rss_kib": peak,
        "end_rss_kib": end_status.get("VmRSS"),
        "end_hwm_kib": end_status.get("VmHWM"),
        "rss_at_mid_churn_kib": half[0] if half else None,
        "rss_at_end_of_churn_kib": during[-1].rss_kib if during else None,
        "growth_second_half_kib": (during[-1].rss_kib - half[0]) if half else None,
        "quartiles_kib": quartiles,
    }
    events_seen = _event_counts(metrics_after, metrics_before)
    reconcile_before = reconcile_stats(metrics_before)
    reconcile_after = reconcile_stats(metrics_after)
    reconciles = reconcile_after["count"] - reconcile_before["count"]
    reconcile_s = reconcile_after["sum_s"] - reconcile_before["sum_s"]

    c = result["churn"]
    print(f"\nchurn: {c['events']} events ({c['put']} put, {c['update']} update, "
          f"{c['delete']} delete) over {args.slots} subnets in {c['seconds']}s "
          f"({c['achieved_rate']}/s; target {args.rate}/s)")
    print(f"daemon: {events_seen} watch messages handled, {reconciles:.0f} reconciles "
          f"(mean {1000 * reconcile_s / reconciles if reconciles else 0:.1f} ms), "
          f"CPU {result['daemon_cpu_during_churn_s']}s")
    print_table(
        "flanneld memory under churn [MiB]",
        ["start", "25%", "50%", "75%", "end of churn", "peak", "after converge+tail", "VmHWM"],
        [[_mib(memory["start_rss_kib"]), *(_mib(q) for q in quartiles[1:4]),
          _mib(memory["rss_at_end_of_churn_kib"]), _mib(memory["peak_rss_kib"]),
          _mib(memory["end_rss_kib"]), _mib(memory["end_hwm_kib"])]],
    )
    lag = result["route_lag"]
    print_table(
        "lease event -> route notification during churn [ms]",
        ["direction", "n", "p50", "p99", "max", "mean"],
        [(name, lag[k]["n"], *(fmt_ms(lag[k][q]) for q in ("p50", "p99", "max", "mean")))
         for name, k in (("add", "add_ms"), ("remove", "remove_ms"))],
    )
    print(f"  ({lag['coalesced']} add/remove pairs coalesced by the daemon, "
          f"{lag['unmatched']} unmatched)")
    print(f"\nfinal: {result['final_leases']} leases, kernel {result['final_kernel_counts']}, "
          f"equal to leases: {'yes' if result['final_equal'] else 'NO'} "
          f"{result['final_kernel_vs_leases']}; converged "
          f"{result['last_event_to_converged_s']}s after the last event")
    write_json(args.out, {
        "bench": "churn",
        "machine": finish_facts(facts),
        "params": vars(args),
        **result,
        "memory": memory,
        "watch_messages_handled": events_seen,
        "reconciles_during": reconciles,
        "reconcile_seconds_during": round(reconcile_s, 3),
        "rss_samples": [[s.t, s.rss_kib, s.hwm_kib] for s in samples],
    })
    return 0 if result["final_equal"] and result["daemon_alive"] else 1


def route_lags(sent: list[tuple[float, bool, str]],
               log: list[tuple[float, bool, str]]) -> dict[str, Any]:
    """Lease event -> route notification latency under churn, per direction.

    Per subnet, the events alternate add/remove and so do the kernel's route
    notifications; they are matched in order.  An event whose notification
    only comes after the NEXT event of the same direction on that subnet was
    sent is counted as coalesced (the daemon saw the add and the remove in one
    batch and rightly did nothing), so very large lags would hide there.
    """
    notes: dict[str, list[tuple[float, bool]]] = {}
    for at, added, dst in log:
        notes.setdefault(dst, []).append((at, added))
    events: dict[str, list[tuple[float, bool]]] = {}
    for at, added, dst in sent:
        events.setdefault(dst, []).append((at, added))
    lags: dict[bool, list[float]] = {True: [], False: []}
    coalesced = unmatched = 0
    for dst, evs in events.items():
        seen = notes.get(dst, [])
        pointer = 0
        for i, (at, added) in enumerate(evs):
            later_same = evs[i + 2][0] if i + 2 < len(evs) else float("inf")
            found = next((j for j in range(pointer, len(seen))
                          if seen[j][1] == added and seen[j][0] >= at), None)
            if found is None:
                unmatched += 1
                continue
            if seen[found][0] >= later_same:
                coalesced += 1
                continue
            lags[added].append(1000 * (seen[found][0] - at))
            pointer = found + 1
    return {"add_ms": summary(lags[True]), "remove_ms": summary(lags[False]),
            "coalesced": coalesced, "unmatched": unmatched}


def _equal(actual: KernelView, expected: KernelView) -> bool:
    return (actual.routes.keys() == expected.routes.keys()
            and actual.neighbours == expected.neighbours and actual.fdb == expected.fdb)


def _quartiles(samples: list[MemSample]) -> list[int | None]:
    if not samples:
        return [None] * 5
    last = len(samples) - 1
    return [samples[round(q * last)].rss_kib for q in (0, 0.25, 0.5, 0.75, 1)]


def _event_counts(after: dict[str, float], before: dict[str, float]) -> float:
    def total(samples: dict[str, float]) -> float:
        return sum(v for k, v in samples.items()
                   if k.startswith("flannel_lease_events_total"))

    return total(after) - total(before)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
