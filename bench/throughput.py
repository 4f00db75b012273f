"""Pod-to-pod TCP throughput and ping latency per backend, relative to the plain underlay.

For each backend a fresh set of four namespaces is built (names carry a
unique ``pfb<hex>`` prefix and are deleted afterwards, also on failure):

    pod-a --veth-- node-a ==veth underlay 198.18.0.0/24== node-b --veth-- pod-b
    10.244.1.2     10.244.1.1                    10.244.2.1     10.244.2.2

The two nodes run the backend in this process (a Network per node, each
with the other's lease as its only peer); pod MTUs are the backend's
FLANNEL_MTU.  Measured in the same topology: iperf3 TCP node-a -> node-b
over the underlay (the baseline) and pod-a -> pod-b through the overlay
(``--runs`` runs of ``-t --seconds``, median), and ping RTT p50/p99.

Usage (root): ``python3 bench/throughput.py [--backends vxlan,host-gw,udp,wireguard]
[--runs 3] [--seconds 3] [--out results.md]``.  Every external command has
a timeout, so a run is bounded.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface

import checkout  # noqa: F401 - this checkout's pyflannel first
from fakes import FakeSubnetManager

from backends.base import ExternalInterface, Network
from backends.hostgw import HostGwBackend
from backends.netlink import Netlink
from backends.udp import Endpoints, UdpBackend, open_endpoints
from backends.vxlan import VxlanBackend
from backends.wireguard import WireguardBackend
from backends.wireguard_go import WireguardGo, find_binary, stop_recorded
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
WG_STATE_ROOT = "/run/pyflannel-bench"


@dataclass(frozen=True, slots=True)
class Measurement:
    gbps: float
    ping_p50_ms: float
    ping_p99_ms: float


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    mtu: int
    underlay: Measurement
    overlay: Measurement


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


def make_backend(kind: str, ns: str, ext: ExternalInterface, netlink: Netlink) -> object:
    if kind == "vxlan":
        return VxlanBackend(ext, netlink, BackendConfig("vxlan", {"Type": "vxlan"}))
    if kind == "host-gw":
        return HostGwBackend(ext, netlink)
    if kind == "udp":

        def opener(name: str, bind: tuple[str, int]) -> Endpoints:
            return run_in_netns(ns, lambda: open_endpoints(name, bind))

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


def stop_wireguard(ns: str) -> None:
    """End the node's wireguard-go by its PID (flanneld would leave it running) and its files."""
    stop_recorded(wireguard_state_dir(ns), WG_DEVICE)
    shutil.rmtree(wireguard_state_dir(ns), ignore_errors=True)


def iperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    """Received throughput in Gbit/s of one iperf3 TCP run."""
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
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


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


def measure(client: str, server: str, server_ip: str, runs: int, seconds: int) -> Measurement:
    gbps = statistics.median(iperf(client, server, server_ip, seconds) for _ in range(runs))
    p50, p99 = ping_stats(client, server_ip)
    return Measurement(gbps, p50, p99)


def run_backend(kind: str, prefix: str, runs: int, seconds: int) -> Result:
    with topology(f"{prefix}-{kind.replace('-', '')[:5]}") as topo:
        underlay = measure(topo.node_a, topo.node_b, "198.18.0.2", runs, seconds)
        netlinks: list[Netlink] = []
        networks: list[Network] = []
        try:
            for third, node in ((1, topo.node_a), (2, topo.node_b)):
                netlink = Netlink(node)
                netlinks.append(netlink)
                addr = underlay_address(third).ip
                ext = ExternalInterface("ul0", link_index(node, "ul0"), 1500, addr, addr)
                backend = make_backend(kind, node, ext, netlink)
                config = NetConfig(
                    network=CLUSTER, subnet_len=24, backend=BackendConfig(kind, {"Type": kind})
                )
                register: Callable[..., Network] = backend.register_network  # type: ignore[attr-defined]
                networks.append(register(FakeSubnetManager(config, f"10.244.{third}.0/24"), config))
            networks[0].reconcile([networks[1].lease])
            networks[1].reconcile([networks[0].lease])
            mtu = networks[0].mtu
            for pod in (topo.pod_a, topo.pod_b):
                set_mtu(pod, "eth0", mtu)
            overlay = measure(topo.pod_a, topo.pod_b, "10.244.2.2", runs, seconds)
        finally:
            for network in networks:
                network.close()
            for netlink in netlinks:
                netlink.close()
            if kind == "wireguard":
                for node in (topo.node_a, topo.node_b):
                    stop_wireguard(node)
    return Result(kind, mtu, underlay, overlay)


def table(results: list[Result]) -> str:
    lines = [
        "| backend | MTU | TCP Gbit/s (underlay) | ratio | ping p50 ms (underlay) | ratio"
        + " | ping p99 ms (underlay) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        u, o = r.underlay, r.overlay
        lines.append(
            f"| {r.backend} | {r.mtu} | {o.gbps:.2f} ({u.gbps:.2f}) | {o.gbps / u.gbps:.2f} | "
            f"{o.ping_p50_ms:.3f} ({u.ping_p50_ms:.3f}) | {o.ping_p50_ms / u.ping_p50_ms:.2f} | "
            f"{o.ping_p99_ms:.3f} ({u.ping_p99_ms:.3f}) | {o.ping_p99_ms / u.ping_p99_ms:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="vxlan,host-gw,udp")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    prefix = "pfb" + uuid.uuid4().hex[:5]
    results = [
        run_backend(kind, prefix, args.runs, args.seconds) for kind in args.backends.split(",")
    ]
    text = table(results)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
