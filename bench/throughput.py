"""Pod-to-pod TCP throughput and ping latency per backend, relative to the plain underlay.

For each backend a fresh set of four namespaces is built (names carry a
unique ``pfb<hex>`` prefix and are deleted afterwards, also on failure):

    pod-a --veth-- node-a ==veth underlay 198.18.0.0/24== node-b --veth-- pod-b
    10.244.1.2     10.244.1.1                    10.244.2.1     10.244.2.2

Each node runs the backend in a child process of its own, as flanneld
would (a Network per node, each with the other's lease as its only peer);
pod MTUs are the backend's FLANNEL_MTU.  Measured in the same topology:
iperf3 TCP node-a -> node-b over the underlay (the baseline) and pod-a ->
pod-b through the overlay (``--runs`` runs of ``-t --seconds``, median),
ping RTT p50/p99, and CPU seconds per GB moved: both iperf3 ends plus both
node processes (the udp forwarders) and, for wireguard, both wireguard-go
processes, so kernel work done in those processes' context counts and
softirq work elsewhere does not.

``udp`` is the udp backend as flanneld runs it (the offload path where the
kernel has the offloads); ``udp-plain`` forces the plain loop of one system
call per packet, the "before" figure.

Usage (root): ``python3 bench/throughput.py [--backends vxlan,host-gw,udp-plain,udp,wireguard]
[--runs 3] [--seconds 3] [--out results.md]``.  Every external command has
a timeout, so a run is bounded.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface
from multiprocessing.connection import Connection

import checkout  # noqa: F401 - this checkout's pyflannel first
from daemon_proc import cpu_seconds
from fakes import FakeSubnetManager
from report import emit_table, finish_facts, machine_facts

from backends.base import ExternalInterface, Network
from backends.hostgw import HostGwBackend
from backends.netlink import Netlink
from backends.udp import Endpoints, UdpBackend, open_endpoints
from backends.vxlan import VxlanBackend
from backends.wireguard import WireguardBackend
from backends.wireguard_go import WireguardGo, find_binary, running_pid, stop_recorded
from backends.wireguard_state import DEVICE as WG_DEVICE
from flanneld.lab.topology import (
    add_default_route,
    create_netns,
    delete_netns,
    link_index,
    run_in_netns,
    set_mtu,
    veth_link,
    write_sysctl,
)
from subnet.netconf import BackendConfig, NetConfig

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
PING_COUNT = 200
PING_INTERVAL = "0.005"
NODE_TIMEOUT = 60.0
WG_STATE_ROOT = "/run/pyflannel-bench"


@dataclass(frozen=True, slots=True)
class Measurement:
    gbps: float
    cpu_s_per_gb: float
    ping_p50_ms: float
    ping_p99_ms: float


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    mtu: int
    underlay: Measurement
    overlay: Measurement
    datapath: str  # the udp forwarders' path and counters, "" for kernel backends


def sh(*args: str, timeout: float = 30, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def in_ns(ns: str, *args: str, timeout: float = 30, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *args, timeout=timeout, check=check)


@dataclass(frozen=True, slots=True)
class Topology:
    node_a: str
    node_b: str
    pod_a: str
    pod_b: str

    def all(self) -> tuple[str, ...]:
        return (self.pod_a, self.pod_b, self.node_a, self.node_b)


@contextmanager
def topology(prefix: str) -> Iterator[Topology]:
    topo = Topology(f"{prefix}-na", f"{prefix}-nb", f"{prefix}-pa", f"{prefix}-pb")
    made: list[str] = []
    try:
        for ns in topo.all():
            made.append(ns)
            create_netns(ns)
        veth_link(topo.node_a, "ul0", underlay_address(1), topo.node_b, "ul0", underlay_address(2))
        for third, node, pod in ((1, topo.node_a, topo.pod_a), (2, topo.node_b, topo.pod_b)):
            gateway = ipaddress.IPv4Interface(f"10.244.{third}.1/24")
            veth_link(node, "cni0", gateway, pod, "eth0", IPv4Interface(f"10.244.{third}.2/24"))
            add_default_route(pod, gateway.ip)
            write_sysctl(node, "net.ipv4.ip_forward", "1")
        yield topo
    finally:
        for ns in made:
            delete_netns(ns)


def underlay_address(third: int) -> IPv4Interface:
    return IPv4Interface(f"198.18.0.{third}/24")


def make_backend(
    kind: str, ns: str, ext: ExternalInterface, netlink: Netlink
) -> VxlanBackend | HostGwBackend | UdpBackend | WireguardBackend:
    if kind == "vxlan":
        return VxlanBackend(ext, netlink, BackendConfig("vxlan", {"Type": "vxlan"}))
    if kind == "host-gw":
        return HostGwBackend(ext, netlink)
    if kind in ("udp", "udp-plain"):
        offload = kind == "udp"

        def opener(name: str, bind: tuple[str, int]) -> Endpoints:
            return run_in_netns(ns, lambda: open_endpoints(name, bind, offload))

        return UdpBackend(ext, netlink, BackendConfig("udp", {"Type": "udp"}), opener)
    if kind == "wireguard":  # the userspace driver (wireguard-go), in the node's namespace
        state = wireguard_state_dir(ns)
        return WireguardBackend(
            ext, netlink, BackendConfig("wireguard", {"Type": "wireguard"}),
            os.path.join(state, "wgkey"),
            userspace=lambda: WireguardGo(WG_DEVICE, state, find_binary(),
                                          netns=f"/var/run/netns/{ns}"),
        )
    raise ValueError(f"unknown backend {kind}")


def wireguard_state_dir(ns: str) -> str:
    """Where a node's WireGuard key and wireguard-go PID live during the run."""
    return os.path.join(WG_STATE_ROOT, ns)


def wireguard_go_pids(nodes: tuple[str, ...]) -> tuple[int, ...]:
    """The running wireguard-go of each node (its CPU is the userspace driver's cost)."""
    found = (running_pid(wireguard_state_dir(ns), WG_DEVICE) for ns in nodes)
    return tuple(pid for pid in found if pid is not None)


def stop_wireguard(ns: str) -> None:
    """End the node's wireguard-go by its PID (flanneld would leave it running) and its files."""
    stop_recorded(wireguard_state_dir(ns), WG_DEVICE)
    shutil.rmtree(wireguard_state_dir(ns), ignore_errors=True)


def node_process(conn: Connection, kind: str, ns: str, third: int) -> None:
    """One node: register, send our lease, take the peer's, reconcile, wait for "stop".

    Replies: our lease, then (MTU, datapath); on "stop" the udp counters.
    """
    netlink = Netlink(ns)
    network: Network | None = None
    try:
        addr = underlay_address(third).ip
        ext = ExternalInterface("ul0", link_index(ns, "ul0"), 1500, addr, addr)
        backend = make_backend(kind, ns, ext, netlink)
        backend_type = "udp" if kind == "udp-plain" else kind
        config = NetConfig(
            network=CLUSTER, subnet_len=24,
            backend=BackendConfig(backend_type, {"Type": backend_type}),
        )
        network = backend.register_network(FakeSubnetManager(config, f"10.244.{third}.0/24"), config)
        conn.send(network.lease)
        network.reconcile([conn.recv()])
        stats = network.forward_stats
        conn.send((network.mtu, "" if stats is None else str(stats.path)))
        conn.recv()
        conn.send(
            None if stats is None else
            {"tx_packets": stats.tx.packets, "tx_batches": stats.tx.batches,
             "rx_packets": stats.rx.packets, "rx_batches": stats.rx.batches,
             "dropped": sum(sum(d.dropped.values()) for d in (stats.tx, stats.rx))}
        )
    finally:
        if network is not None:
            network.close()
        netlink.close()


@dataclass(frozen=True, slots=True)
class Run:
    gbps: float
    gigabytes: float
    iperf_cpu_s: float


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> Run:
    """One iperf3 TCP run: received Gbit/s, GB moved, CPU seconds of both iperf3 ends."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out = in_ns(
            client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-J", timeout=seconds + 20
        )
    finally:
        server.kill()
        server.wait(5)
    end = json.loads(out)["end"]
    received, cpu = end["sum_received"], end["cpu_utilization_percent"]
    return Run(
        float(received["bits_per_second"]) / 1e9,
        float(received["bytes"]) / 1e9,
        (float(cpu["host_total"]) + float(cpu["remote_total"])) / 100 * float(received["seconds"]),
    )
def ping_stats(ns: str, dst: str) -> tuple[float, float]:
    out = in_ns(
        ns,
        "ping",
        "-n",
        "-c",
        str(PING_COUNT),
        "-i",
        PING_INTERVAL,
        "-W",
        "1",
        dst,
        timeout=60,
        check=False,
    )
    rtts = sorted(
        float(part.split("=")[1])
        for line in out.splitlines()
        for part in line.split()
        if part.startswith("time=")
    )
    if len(rtts) < PING_COUNT // 2:
        raise RuntimeError(f"ping {dst} from {ns}: only {len(rtts)} replies")
    return percentile(rtts, 50), percentile(rtts, 99)


def percentile(sorted_values: list[float], pct: int) -> float:
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


def measure(
    client: str, server: str, server_ip: str, runs: int, seconds: int, workers: tuple[int, ...] = ()
) -> Measurement:
    """Median throughput over ``runs``; CPU per GB over all runs (iperf3 + ``workers`` PIDs)."""
    before = sum(cpu_seconds(pid) for pid in workers)
    done = [iperf(client, server, server_ip, seconds) for _ in range(runs)]
    workers_cpu = sum(cpu_seconds(pid) for pid in workers) - before
    cpu = workers_cpu + sum(r.iperf_cpu_s for r in done)
    gigabytes = sum(r.gigabytes for r in done)
    p50, p99 = ping_stats(client, server_ip)
    return Measurement(
        statistics.median(r.gbps for r in done), cpu / gigabytes if gigabytes else 0.0, p50, p99
    )


def run_backend(kind: str, prefix: str, runs: int, seconds: int) -> Result:
    context = multiprocessing.get_context("fork")
    with topology(f"{prefix}-{kind.replace('-', '')[:5]}") as topo:
        underlay = measure(topo.node_a, topo.node_b, "198.18.0.2", runs, seconds)
        nodes: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        try:
            for third, ns in ((1, topo.node_a), (2, topo.node_b)):
                parent, child = context.Pipe()
                proc = context.Process(target=node_process, args=(child, kind, ns, third))
                proc.start()
                nodes.append((proc, parent))
            leases = [receive(conn) for _, conn in nodes]
            nodes[0][1].send(leases[1])
            nodes[1][1].send(leases[0])
            mtu, path = receive(nodes[0][1])
            receive(nodes[1][1])
            for pod in (topo.pod_a, topo.pod_b):
                set_mtu(pod, "eth0", mtu)
            pids = tuple(proc.pid for proc, _ in nodes if proc.pid is not None)
            if kind == "wireguard":
                pids += wireguard_go_pids((topo.node_a, topo.node_b))
            overlay = measure(topo.pod_a, topo.pod_b, "10.244.2.2", runs, seconds, pids)
            counters = []
            for _, conn in nodes:
                conn.send("stop")
                counters.append(receive(conn))
        finally:
            for proc, conn in nodes:
                proc.join(NODE_TIMEOUT)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
                conn.close()
            if kind == "wireguard":
                for node in (topo.node_a, topo.node_b):
                    stop_wireguard(node)
    datapath = f"{path}: {counters[0]} / {counters[1]}" if path else ""
    return Result(kind, mtu, underlay, overlay, datapath)


def receive(conn: Connection) -> object:
    if not conn.poll(NODE_TIMEOUT):
        raise RuntimeError(f"a node process did not answer in {NODE_TIMEOUT:.0f} s")
    return conn.recv()


def table(results: list[Result]) -> str:
    lines = [
        "| backend | MTU | TCP Gbit/s (underlay) | ratio | CPU s/GB (underlay)"
        + " | ping p50 ms (underlay) | ping p99 ms (underlay) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        u, o = r.underlay, r.overlay
        lines.append(
            f"| {r.backend} | {r.mtu} | {o.gbps:.2f} ({u.gbps:.2f}) | {o.gbps / u.gbps:.2f} | "
            f"{o.cpu_s_per_gb:.2f} ({u.cpu_s_per_gb:.2f}) | "
            f"{o.ping_p50_ms:.3f} ({u.ping_p50_ms:.3f}) | {o.ping_p99_ms:.3f} ({u.ping_p99_ms:.3f}) |"
        )
    lines += [f"\n{r.backend} datapath {r.datapath}" for r in results if r.datapath]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="vxlan,host-gw,udp-plain,udp")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    prefix = "pfb" + uuid.uuid4().hex[:5]
    facts = machine_facts()
    results = [
        run_backend(kind, prefix, args.runs, args.seconds) for kind in args.backends.split(",")
    ]
    emit_table(table(results), finish_facts(facts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
