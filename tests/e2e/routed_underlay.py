"""A routed underlay for end-to-end tests: two L2 segments joined by a router.

Unlike the lab (one flat segment), nodes here are not all on-link with each
other, which is what DirectRouting decides on::

    <p>-sa     segment A: bridge br0; ports p-n1, p-n2, p-rt     198.18.1.0/24
    <p>-sb     segment B: bridge br0; ports p-n3, p-rt           198.18.2.0/24
    <p>-rt     router: rt-a 198.18.1.1, rt-b 198.18.2.1, ip_forward, etcd on 198.18.1.1
    <p>-n<i>   node: ul0 .(10+i) on its segment, default route via the router,
               one flanneld, the CNI bridge of our plugin
    <p>-n<i>p  the node's pod, attached by our ``flannel`` CNI plugin

:class:`RoutedUnderlay` builds it, runs the daemons as its own children and
:meth:`RoutedUnderlay.teardown` removes exactly that (PIDs it started,
namespaces by name), also after a half-built start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from flanneld.lab import etcdgw, pods, procs, topology
from flanneld.lab.etcd import EtcdProcess, EtcdSpec
from flanneld.lab.lab import http_status, log_tail
from flanneld.lab.matrix import Endpoint
from subnet.errors import FlannelError

BRIDGE = "br0"
UNDERLAY_IF = "ul0"
POD_IF = "eth0"
ETCD_CLIENT_PORT = 22379
ETCD_PEER_PORT = 22380
HEALTHZ_PORT = 18082  # every node has its own namespace, so one port for all
ETCD_PREFIX = "/coreos.com/network"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
CNI_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Segment:
    """One underlay L2 segment: a bridge in its own namespace, and the router's leg on it."""

    name: str  # a
    netns: str
    network: ipaddress.IPv4Network

    @property
    def router(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.network[1]}/{self.network.prefixlen}")

    @property
    def router_if(self) -> str:
        return f"rt-{self.name}"


@dataclass(frozen=True, slots=True)
class Node:
    """A node: underlay veth on ``segment``, flanneld, and one pod."""

    name: str  # n1
    netns: str
    pod_netns: str
    segment: Segment
    address: ipaddress.IPv4Interface

    @property
    def public_ip(self) -> ipaddress.IPv4Address:
        return self.address.ip

    @property
    def port(self) -> str:
        """The node's veth end on its segment's bridge."""
        return f"p-{self.name}"


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str
    router_netns: str
    segments: tuple[Segment, ...]
    nodes: tuple[Node, ...]

    @property
    def etcd_host(self) -> ipaddress.IPv4Address:
        return self.segments[0].router.ip

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_host}:{ETCD_CLIENT_PORT}"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace, in the order to delete them (pods first, router last)."""
        return (
            tuple(n.pod_netns for n in self.nodes)
            + tuple(n.netns for n in self.nodes)
            + tuple(s.netns for s in self.segments)
            + (self.router_netns,)
        )


def two_segments(prefix: str) -> Layout:
    """n1, n2 on segment A (198.18.1.0/24); n3 on segment B (198.18.2.0/24)."""
    seg_a = Segment("a", f"{prefix}-sa", ipaddress.IPv4Network("198.18.1.0/24"))
    seg_b = Segment("b", f"{prefix}-sb", ipaddress.IPv4Network("198.18.2.0/24"))
    nodes = tuple(
        Node(
            name=f"n{i}",
            netns=f"{prefix}-n{i}",
            pod_netns=f"{prefix}-n{i}p",
            segment=seg,
            address=ipaddress.IPv4Interface(f"{seg.network[10 + i]}/{seg.network.prefixlen}"),
        )
        for i, seg in ((1, seg_a), (2, seg_a), (3, seg_b))
    )
    return Layout(prefix, f"{prefix}-rt", (seg_a, seg_b), nodes)


def ip(netns: str, *args: str) -> str:
    """Run ``ip -n <netns> args`` (setup and inspection only); its stdout."""
    done = subprocess.run(
        ["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise FlannelError(f"ip -n {netns} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ip_json(netns: str, *args: str) -> list[dict[str, object]]:
    """``ip -j`` output as a list of objects."""
    out = ip(netns, "-j", *args).strip()
    doc = json.loads(out) if out else []
    if not isinstance(doc, list):
        raise FlannelError(f"ip -j {' '.join(args)} printed {out!r}")
    return doc


def bridge_fdb(netns: str, dev: str) -> list[dict[str, object]]:
    """``bridge -j fdb show dev <dev>`` inside ``netns``."""
    done = subprocess.run(
        ["bridge", "-n", netns, "-j", "fdb", "show", "dev", dev],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    doc = json.loads(done.stdout or "[]")
    return doc if isinstance(doc, list) else []


class RoutedUnderlay:
    """The running topology; everything it makes lives under ``workdir`` or in its namespaces."""

    def __init__(self, layout: Layout, workdir: str, net_conf: str) -> None:
        self.layout = layout
        self._workdir = workdir
        self._net_conf = net_conf
        self._etcd: EtcdProcess | None = None
        self._flanneld: dict[str, subprocess.Popen[bytes]] = {}
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        self._env["PYTHONUNBUFFERED"] = "1"

    # --- paths ----------------------------------------------------------------------

    def _node_dir(self, node: Node) -> str:
        return os.path.join(self._workdir, node.name)

    def subnet_file(self, node: Node) -> str:
        return os.path.join(self._node_dir(node), "subnet.env")

    def log_file(self, node: Node) -> str:
        return os.path.join(self._node_dir(node), "flanneld.log")

    @property
    def _bin_dir(self) -> str:
        return os.path.join(self._workdir, "bin")

    # --- building -------------------------------------------------------------------

    def build(self) -> None:
        """Namespaces and links, etcd with the net-conf, flanneld per node, one pod each."""
        self._build_router_and_segments()
        for node in self.layout.nodes:
            self._build_node(node)
        self._start_etcd()
        for node in self.layout.nodes:
            self._start_flanneld(node)
        for node in self.layout.nodes:
            self._wait_ready(node)
        pods.write_plugin_wrapper(
            self._bin_dir, procs.launcher(sys.executable, "flannel", "cni.plugin")
        )
        for node in self.layout.nodes:
            self._attach_pod(node)

    def _build_router_and_segments(self) -> None:
        router = self.layout.router_netns
        topology.create_netns(router)
        topology.write_sysctl(router, "net.ipv4.ip_forward", "1")
        for seg in self.layout.segments:
            topology.create_netns(seg.netns)
            topology.add_bridge(seg.netns, BRIDGE)
            topology.bridge_port(seg.netns, BRIDGE, "p-rt", router, seg.router_if, seg.router)

    def _build_node(self, node: Node) -> None:
        seg = node.segment
        topology.create_netns(node.netns)
        topology.bridge_port(seg.netns, BRIDGE, node.port, node.netns, UNDERLAY_IF, node.address)
        topology.add_default_route(node.netns, seg.router.ip)
        topology.write_sysctl(node.netns, "net.ipv4.ip_forward", "1")
        os.makedirs(self._node_dir(node), mode=0o755, exist_ok=True)

    def _start_etcd(self) -> None:
        spec = EtcdSpec(
            name=f"{self.layout.prefix}-etcd",
            data_dir=os.path.join(self._workdir, "etcd"),
            host=str(self.layout.etcd_host),
            client_port=ETCD_CLIENT_PORT,
            peer_port=ETCD_PEER_PORT,
        )
        etcd = EtcdProcess(spec, os.path.join(self._workdir, "etcd.log"))
        self._etcd = etcd
        # A child inherits the forking thread's namespace, and the health
        # check needs the router's addresses: start it from inside.
        topology.run_in_netns(self.layout.router_netns, etcd.start)
        with etcdgw.EtcdGateway(self.layout.etcd_url, netns=self.layout.router_netns) as gw:
            gw.put(f"{ETCD_PREFIX}/config", self._net_conf)

    def _start_flanneld(self, node: Node) -> None:
        argv = [
            sys.executable,
            "-m",
            "flanneld.cli",
            f"-etcd-endpoints={self.layout.etcd_url}",
            f"-etcd-prefix={ETCD_PREFIX}",
            f"-iface={UNDERLAY_IF}",
            f"-subnet-file={self.subnet_file(node)}",
            f"-healthz-port={HEALTHZ_PORT}",
            # As kube-flannel.yml: flanneld masquerades only traffic leaving the
            # cluster network, so pod addresses stay visible on the underlay
            # (otherwise the CNI bridge would masquerade pod-to-pod traffic).
            "-ip-masq",
            "-v=1",
        ]
        with open(self.log_file(node), "ab") as log:
            self._flanneld[node.name] = subprocess.Popen(
                topology.netns_argv(node.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )

    def _wait_ready(self, node: Node) -> None:
        proc = self._flanneld[node.name]
        url = f"http://127.0.0.1:{HEALTHZ_PORT}/readyz"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FlannelError(
                    f"flanneld on {node.name} exited {proc.returncode}:\n"
                    + log_tail(self.log_file(node), 15)
                )
            if os.path.exists(self.subnet_file(node)) and (
                topology.run_in_netns(node.netns, lambda: http_status(url)) == 200
            ):
                return
            time.sleep(0.1)
        raise FlannelError(
            f"flanneld on {node.name} not ready after {READY_TIMEOUT:g}s:\n"
            + log_tail(self.log_file(node), 15)
        )

    def _attach_pod(self, node: Node) -> None:
        """CNI ADD for the node's pod, run the way a container runtime runs it."""
        topology.create_netns(node.pod_netns)
        node_dir = self._node_dir(node)
        netconf = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.subnet_file(node),
            "dataDir": os.path.join(node_dir, "cni"),
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
            "ipam": {"dataDir": os.path.join(node_dir, "ipam")},
        }
        env = {
            "PATH": self._env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": node.pod_netns,
            "CNI_NETNS": topology.netns_path(node.pod_netns),
            "CNI_IFNAME": POD_IF,
            "CNI_PATH": pods.cni_path(self._bin_dir),
        }
        done = subprocess.run(
            topology.netns_argv(node.netns, [os.path.join(self._bin_dir, pods.PLUGIN_NAME)]),
            input=json.dumps(netconf).encode(),
            capture_output=True,
            env=env,
            timeout=CNI_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise FlannelError(
                f"CNI ADD for {node.pod_netns} exited {done.returncode}: "
                f"{done.stdout.decode(errors='replace')} {done.stderr.decode(errors='replace')}"
            )
        pods.result_ipv4(json.loads(done.stdout))

    # --- inspecting -----------------------------------------------------------------

    def subnet(self, node: Node) -> ipaddress.IPv4Network:
        """The node's lease subnet, from FLANNEL_SUBNET in its subnet.env."""
        with open(self.subnet_file(node), encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.strip().partition("=")
                if key == "FLANNEL_SUBNET":
                    return ipaddress.IPv4Interface(value).network
        raise FlannelError(f"no FLANNEL_SUBNET in {self.subnet_file(node)}")

    def pod_ip(self, node: Node) -> ipaddress.IPv4Address:
        addrs = topology.ipv4_addresses(node.pod_netns, POD_IF)
        if not addrs:
            raise FlannelError(f"pod of {node.name} has no IPv4 address")
        return addrs[0].ip

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(n.name, n.pod_netns, self.pod_ip(n)) for n in self.layout.nodes]

    # --- tearing down ---------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Stop our processes (by PID), delete our namespaces; the namespaces still left."""
        procs.stop_children(list(self._flanneld.values()), timeout=STOP_TIMEOUT)
        self._flanneld.clear()
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None
        for name in self.layout.namespaces():
            try:
                topology.delete_netns(name)
            except FlannelError:
                pass  # reported below: it is still listed
        present = set(topology.list_netns())
        return [name for name in self.layout.namespaces() if name in present]

