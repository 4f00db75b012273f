"""Time from a NetworkPolicy created (or deleted) in the API to the kernel enforcing it.

Usage (root; the table lives in a throw-away network namespace):

    .venv/bin/python -m bench.netpol_latency [--cycles 30] [--pods 200]

The Kubernetes API double holds ``--pods`` pods of this node; the daemon's
informers, reconciler and PolicyTable (the same code as flanneld
--network-policy) run in this process.  Each cycle creates a default-deny
policy and waits until the pod's address is in the table's ingress map (read
with ``nft`` in the namespace), then deletes it and waits until it is gone.
Polling costs one ``nft`` run (a few ms), which bounds the resolution.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from flanneld.lab import topology
from flanneld.lab.apiserver import KubeAPIDouble
from flanneld.netpol.controller import policy_threads
from flanneld.netpol.table import FAMILY, TABLE
from flanneld.trafficmgr.policy import PolicyTable
from flanneld.trafficmgr.runner import CommandRunner
from subnet.kube import KubeSubnetManager
from subnet.kube_state import KubeSettings


def in_map(ns: str, ip: str) -> bool:
    out = subprocess.run(topology.netns_argv(ns, ["nft", "list", "map", FAMILY, TABLE,
                                                  "ingress4"]),
                         capture_output=True, text=True, timeout=30, check=False).stdout
    return f"{ip} :" in out


def wait(predicate: Callable[[], bool], deadline: float = 30.0) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > deadline:
            raise TimeoutError("not enforced in time")
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--pods", type=int, default=200)
    args = ap.parse_args()
    ns = f"nplat{uuid.uuid4().hex[:6]}"
    topology.create_netns(ns)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        with KubeAPIDouble() as api, tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "net-conf.json"
            conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
            api.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
            for i in range(args.pods):
                api.put_object({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": f"p{i}", "namespace": "x", "labels": {"app": f"a{i % 10}"}},
                    "spec": {"nodeName": "me"},
                    "status": {"phase": "Running", "podIP": f"10.244.{i // 250}.{i % 250 + 2}"}})
            manager = KubeSubnetManager.connect(
                KubeSettings(api_url=api.url, net_config_path=str(conf)), {"NODE_NAME": "me"})
            table = PolicyTable(CommandRunner(prefix=tuple(topology.netns_argv(ns, []))))
            _, threads = policy_threads(manager, table, lambda: (), None, stop, resync=10.0)
            for t in threads:
                t.start()
            created, deleted = [], []
            for _ in range(args.cycles):
                api.put_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                "metadata": {"name": "deny", "namespace": "x"},
                                "spec": {"podSelector": {"matchLabels": {"app": "a0"}}}})
                created.append(wait(lambda: in_map(ns, "10.244.0.2")))
                api.delete_object("networkpolicies", "deny", "x")
                deleted.append(wait(lambda: not in_map(ns, "10.244.0.2")))
            stop.set()
            for t in threads:
                t.join(timeout=10)
            manager.close()
        print(json.dumps({
            "cycles": args.cycles, "pods": args.pods,
            "created_to_enforced_p50_s": round(statistics.median(created), 4),
            "created_to_enforced_p99_s": round(percentile(created, 0.99), 4),
            "deleted_to_lifted_p50_s": round(statistics.median(deleted), 4),
            "deleted_to_lifted_p99_s": round(percentile(deleted, 0.99), 4),
        }))
    finally:
        stop.set()
        topology.delete_netns(ns)


if __name__ == "__main__":
    main()
