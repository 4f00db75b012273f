"""NetworkPolicy ruleset at scale: build, full apply, re-apply, one pod label change.

Usage (root; everything happens in a throw-away network namespace):

    .venv/bin/python -m bench.netpol_scale [--pods 5000] [--policies 500] [--nodes 50]

Pods are API objects spread over ``--nodes`` nodes (this node is node 0, so it
holds pods/nodes of them); namespaces ns0..ns49; each policy selects one app
label in its namespace and allows ingress from another app label (in all
namespaces for a third of them), on a port, a range or a named port.
Prints one JSON object with the timings (median of ``--runs``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import time
import uuid
from typing import Any

from flanneld.lab import topology
from flanneld.netpol.model import (
    Cluster,
    Pod,
    parse_namespace,
    parse_pod,
    parse_policy,
    selects,
)
from flanneld.netpol.ruleset import LocalNode, PeerCache, Ruleset, desired_ruleset
from flanneld.netpol.script import render
from flanneld.trafficmgr.policy import PolicyTable
from flanneld.trafficmgr.runner import CommandRunner

NAMESPACES = 47  # prime: namespaces spread over every node
APPS = 20


def build_cluster(pods: int, policies: int, nodes: int) -> Cluster:
    nss = [parse_namespace({"metadata": {"name": f"ns{i}", "labels": {"team": f"t{i % 5}"}}})[0]
           for i in range(NAMESPACES)]
    pod_values = []
    for i in range(pods):
        ip = ipaddress.ip_address(int(ipaddress.ip_address("10.128.0.0")) + 256 * (i % nodes)
                                  + 2 + i // nodes)
        obj = {"metadata": {"name": f"p{i}", "namespace": f"ns{i % NAMESPACES}",
                            "labels": {"app": f"a{i % APPS}", "tier": f"t{i % 3}"}},
               "spec": {"nodeName": f"node{i % nodes}", "containers": [{"ports": [
                   {"name": "http", "containerPort": 8080 + i % 3}]}]},
               "status": {"phase": "Running", "podIP": str(ip)}}
        pod_values.append(parse_pod(obj)[0])
    pols = []
    for i in range(policies):
        peer: dict[str, Any] = {"podSelector": {"matchLabels": {"app": f"a{(i + 1) % APPS}"}}}
        if i % 3 == 0:
            peer["namespaceSelector"] = {"matchLabels": {"team": f"t{i % 5}"}}
        ports: list[dict[str, Any]] = [{"port": 80 + i % 50}, {"port": 1000, "endPort": 1100},
                                       {"port": "http"}]
        port = ports[i % 3]
        obj = {"metadata": {"name": f"pol{i}", "namespace": f"ns{i % NAMESPACES}"},
               "spec": {"podSelector": {"matchLabels": {"app": f"a{i % APPS}"}},
                        "ingress": [{"from": [peer], "ports": [port]}]}}
        pols.append(parse_policy(obj)[0])
    return Cluster(tuple(p for p in pols if p), tuple(n for n in nss if n),
                   tuple(p for p in pod_values if p))


def relabel(cluster: Cluster, node: LocalNode, nth: int) -> Cluster:
    """A pod (remote if any) takes the label a peer of a policy enforced here selects."""
    local = [p for p in cluster.pods if node.owns(p)]
    policy = [p for p in cluster.policies if any(selects(p, pod) for pod in local)
              and p.ingress[0].peers[0].namespace_selector is None][nth]
    peer_selector = policy.ingress[0].peers[0].pod_selector
    assert peer_selector is not None
    want = dict(peer_selector.match_labels)["app"]
    pods = list(cluster.pods)
    candidates = [i for i, p in enumerate(pods) if p.namespace == policy.namespace
                  and dict(p.labels)["app"] != want]
    index = min(candidates, key=lambda i: node.owns(pods[i]))  # a remote pod where there is one
    old = pods[index]
    pods[index] = Pod(old.namespace, old.name, (("app", want), ("tier", "t0")), old.ips,
                      node_name=old.node_name, ports=old.ports)
    return Cluster(cluster.policies, cluster.namespaces, tuple(pods))


def with_allow_all_to(cluster: Cluster, pod: Pod) -> Cluster:
    """The cluster plus a policy letting everything reach ``pod`` (the measured path)."""
    extra, _ = parse_policy({"metadata": {"name": "bench-allow", "namespace": pod.namespace},
                             "spec": {"podSelector": {"matchLabels": dict(pod.labels)},
                                      "ingress": [{}]}})
    assert extra is not None
    return Cluster((*cluster.policies, extra), cluster.namespaces, cluster.pods)


def throughput(ns: str, table: PolicyTable, ruleset: Ruleset, client_ip: str, server_ip: str,
               seconds: int) -> dict[str, float]:
    """iperf3 between two pods bridged on the node, without and with the policy table."""
    client, server = f"{ns}c", f"{ns}s"
    gw = ipaddress.IPv4Interface("10.128.0.1/16")
    topology.add_bridge(ns, "br0")
    topology.add_address(ns, "br0", gw)
    topology.set_up(ns, "br0")
    made: list[str] = []
    try:
        for name, ip in ((client, client_ip), (server, server_ip)):
            made.append(name)
            topology.create_netns(name)
            topology.bridge_port(ns, "br0", f"v{name[-1]}", name, "eth0",
                                 ipaddress.IPv4Interface(f"{ip}/16"))
        table.remove()
        without = iperf(client, server, server_ip, seconds)
        table.apply(ruleset)
        with_table = iperf(client, server, server_ip, seconds)
        return {"gbps_without_policy": round(without, 2), "gbps_with_policy": round(with_table, 2),
                "ratio": round(with_table / without, 3)}
    finally:
        for name in made:
            topology.delete_netns(name)


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    """Gbit/s received in one iperf3 TCP run from ``client_ns`` to ``server_ns``."""
    server = subprocess.Popen(topology.netns_argv(server_ns, ["iperf3", "-s", "-1", "-B",
                                                              server_ip]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(topology.netns_argv(client_ns, [
                "iperf3", "-c", server_ip, "-t", str(seconds), "-J"]),
                capture_output=True, text=True, timeout=seconds + 60, check=False)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server was not listening yet
        done.check_returncode()
    finally:
        server.kill()
        server.wait(10)
    end = json.loads(done.stdout)["end"]
    if "sum_received" not in end:
        raise RuntimeError(f"iperf3 gave no result: {done.stdout[-2000:]}")
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def unreclaimable_kib() -> int:
    """The kernel's unreclaimable slab (``SUnreclaim`` in /proc/meminfo): where nf_tables
    keeps tables, chains, rules, sets and their elements."""
    with open("/proc/meminfo", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["SUnreclaim"].split()[0])


def memory(text: str, tables: int) -> dict[str, float]:
    """Load the rendered table into ``tables`` fresh namespaces one by one.

    Per table: SUnreclaim after minus before (the median over the loads, as other
    processes on a shared machine move it too), and the peak RSS of the ``nft -f``
    process that loaded it (the userspace side, ru_maxrss from wait4).
    """
    deltas: list[int] = []
    rss: list[int] = []
    made: list[str] = []
    try:
        for _ in range(tables):
            ns = f"npmem{uuid.uuid4().hex[:6]}"
            topology.create_netns(ns)
            made.append(ns)
            before = unreclaimable_kib()
            proc = subprocess.Popen(topology.netns_argv(ns, ["nft", "-f", "-"]),
                                    stdin=subprocess.PIPE, text=True)
            assert proc.stdin is not None
            proc.stdin.write(text)
            proc.stdin.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            assert proc.returncode == 0, proc.returncode
            deltas.append(unreclaimable_kib() - before)
            rss.append(usage.ru_maxrss)
    finally:
        for ns in made:
            topology.delete_netns(ns)
    return {"kernel_kib_per_table_median": statistics.median(deltas),
            "kernel_kib_per_table_min": min(deltas), "kernel_kib_per_table_max": max(deltas),
            "nft_peak_rss_kib": max(rss)}


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=0, metavar="TABLES",
                    help="also load the full table into this many fresh namespaces and report "
                         "the kernel memory (SUnreclaim delta) per table and nft's peak RSS")
    ap.add_argument("--throughput", type=int, default=0, metavar="SECONDS",
                    help="also iperf3 between two local pods without and with the table")
    args = ap.parse_args()
    cluster = build_cluster(args.pods, args.policies, args.nodes)
    node = LocalNode("node0")
    ns = f"npbench{uuid.uuid4().hex[:6]}"
    topology.create_netns(ns)
    try:
        table = PolicyTable(CommandRunner(prefix=tuple(topology.netns_argv(ns, []))))
        results: dict[str, list[float]] = {k: [] for k in (
            "build_s", "render_s", "full_apply_s", "noop_apply_verified_s",
            "label_change_build_s", "label_change_apply_s", "label_change_apply_verified_s")}
        for run in range(args.runs):
            cache = PeerCache()  # the daemon keeps one across builds
            t, desired = timed(desired_ruleset, cluster, node, cache)
            results["build_s"].append(t)
            t, text = timed(render, desired.ruleset)
            results["render_s"].append(t)
            subprocess.run(topology.netns_argv(ns, ["nft", "flush", "ruleset"]), check=True)
            t, res = timed(table.apply, desired.ruleset)
            assert res.kind == "full", res
            results["full_apply_s"].append(t)
            t, res = timed(table.apply, desired.ruleset)
            assert res.kind == "none", res
            results["noop_apply_verified_s"].append(t)
            moved = relabel(cluster, node, run)  # a pod on another node: elements only
            t, changed = timed(desired_ruleset, moved, node, cache)
            results["label_change_build_s"].append(t)
            t, res = timed(table.apply, changed.ruleset, verify=False)  # the daemon's path
            assert res.kind == "incremental", res
            results["label_change_apply_s"].append(t)
            t, res = timed(table.apply, desired.ruleset, verify=True)  # and back, read first
            assert res.kind == "incremental", res
            results["label_change_apply_verified_s"].append(t)
        summary: dict[str, Any] = {k: round(statistics.median(v), 4) for k, v in results.items()}
        summary.update(pods=args.pods, policies=args.policies, nodes=args.nodes,
                       rules=desired.ruleset.rule_count, sets=len(desired.ruleset.sets),
                       chains=len(desired.ruleset.chains), script_bytes=len(text))
        if args.memory:
            summary.update(memory(text, args.memory))
        if args.throughput:
            local = [p for p in cluster.pods if node.owns(p)]
            server, client = local[0], local[1]
            loaded = desired_ruleset(with_allow_all_to(cluster, server), node).ruleset
            summary.update(throughput(ns, table, loaded, str(client.ips[0]), str(server.ips[0]),
                                      args.throughput))
        print(json.dumps(summary))
    finally:
        topology.delete_netns(ns)


if __name__ == "__main__":
    main()
