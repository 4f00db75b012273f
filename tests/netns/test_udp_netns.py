"""The udp backend in a real kernel: two node namespaces on a veth underlay.

Node ``a`` (198.18.0.1) owns 10.244.1.0/24, node ``b`` (198.18.0.2) owns
10.244.2.0/24; each has its subnet's .1 on ``lo`` as a stand-in pod.  The
TUN and UDP socket of each node are opened inside its namespace (the
backend's opener seam); the forwarder threads run in this process.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from backends.base import ExternalInterface
from backends.netlink import Netlink
from backends.udp import Endpoints, UdpBackend, UdpNetwork, open_endpoints
from backends.udp_packet import Datapath, Drop
from bench.fakes import FakeSubnetManager
from flanneld.lab.topology import run_in_netns
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import BackendConfig, NetConfig
from tests.underlay import ip_json, sh, veth_hosts
from tests.waiting import wait_until

pytestmark = pytest.mark.netns

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
CONFIG = NetConfig(network=CLUSTER, subnet_len=24, backend=BackendConfig("udp", {"Type": "udp"}))


@dataclass
class Node:
    ns: str
    third: int
    netlink: Netlink
    ext: ExternalInterface
    offload: bool
    backend: UdpBackend | None = None

    def register(self) -> tuple[UdpNetwork, FakeSubnetManager]:
        ns, offload = self.ns, self.offload

        def opener(name: str, bind: tuple[str, int]) -> Endpoints:
            return run_in_netns(ns, lambda: open_endpoints(name, bind, offload))

        self.backend = UdpBackend(self.ext, self.netlink, CONFIG.backend, opener)
        manager = FakeSubnetManager(CONFIG, f"10.244.{self.third}.0/24")
        return self.backend.register_network(manager, CONFIG), manager

    def lease(self, backend_type: str = "") -> Lease:
        assert self.ext.ext_addr is not None
        return Lease(
            ipaddress.IPv4Network(f"10.244.{self.third}.0/24"),
            None,
            LeaseAttrs(public_ip=self.ext.ext_addr, backend_type=backend_type),
        )


def ping(ns: str, src: str, dst: str, count: int = 2) -> subprocess.CompletedProcess[str]:
    return sh(
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        str(count),
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        src,
        dst,
        check=False,
    )


@pytest.fixture(params=[True, False], ids=["offload", "plain"])
def pair(
    request: pytest.FixtureRequest, netns_factory: Callable[[str], str]
) -> Iterator[tuple[Node, Node]]:
    """Two nodes, on the offload path (the default where the kernel has it) or the plain one."""
    nodes = [
        Node(ns, third, Netlink(ns), ext, request.param)
        for ns, third, ext in veth_hosts(netns_factory, "ud")
    ]
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            if node.backend is not None:
                node.backend.stop()
            node.netlink.close()


def up_pair(pair: tuple[Node, Node]) -> tuple[UdpNetwork, UdpNetwork]:
    a, b = pair
    net_a, _ = a.register()
    net_b, _ = b.register()
    net_a.reconcile([b.lease("vxlan")])  # udp accepts peers of any backend type
    net_b.reconcile([a.lease()])
    return net_a, net_b


def test_device_address_route_and_lease(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    network, manager = a.register()
    assert manager.acquired == [LeaseAttrs(public_ip=ipaddress.IPv4Address("198.18.0.1"))]
    assert network.lease.attrs.backend_type == "" and network.mtu == 1472
    link = ip_json(a.ns, "-d", "link", "show", "flannel0")[0]
    assert link["mtu"] == 1472 and "UP" in link["flags"]
    assert link["linkinfo"]["info_kind"] == "tun"
    addrs = ip_json(a.ns, "addr", "show", "flannel0")[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs if x["family"] == "inet"] == [
        ("10.244.1.0", 32)
    ]
    routes = ip_json(a.ns, "route", "show", "proto", "44")
    assert [(r["dst"], r["dev"]) for r in routes] == [("10.244.0.0/16", "flannel0")]
    again = network.reconcile([])
    assert (again.added, again.removed, again.device_recreated) == (0, 0, False)


def test_ping_across_and_route_repair(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, net_b = up_pair(pair)
    assert ping(a.ns, "10.244.1.1", "10.244.2.1").returncode == 0
    assert ping(b.ns, "10.244.2.1", "10.244.1.1").returncode == 0
    assert net_a.forward_stats.tx.packets >= 2 and net_a.forward_stats.rx.packets >= 2
    assert net_a.forward_stats.path is (Datapath.OFFLOAD if a.offload else Datapath.PLAIN)
    assert net_b.forward_stats.rx.packets >= 2

    sh("ip", "-n", a.ns, "route", "del", "10.244.0.0/16")
    assert ping(a.ns, "10.244.1.1", "10.244.2.1", count=1).returncode != 0
    assert net_a.reconcile([b.lease()]).added == 1
    assert ping(a.ns, "10.244.1.1", "10.244.2.1").returncode == 0


UDP_PROBE = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.settimeout(3)
s.bind(("10.244.1.1", 0))
s.connect((sys.argv[1], 9))
s.send(b"probe")
try:
    s.recv(100)
    print("answer")
except TimeoutError:
    print("timeout")
except OSError as err:
    print(errno.errorcode[err.errno])
"""


def udp_probe(ns: str, dst: str) -> str:
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", UDP_PROBE, dst).stdout.strip()


def test_unknown_destination_gets_net_unreachable(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    net_a, _ = up_pair(pair)
    accept_local = sh(
        "ip", "netns", "exec", a.ns, "sysctl", "-n", "net.ipv4.conf.flannel0.accept_local"
    )
    assert accept_local.stdout.strip() == "1"
    assert udp_probe(a.ns, "10.244.77.1") == "ENETUNREACH"
    assert net_a.forward_stats.tx.dropped[Drop.NO_ROUTE] == 1
    # ICMP itself is never answered with ICMP: ping just times out
    done = ping(a.ns, "10.244.1.1", "10.244.77.1", count=1)
    assert done.returncode != 0 and "Unreachable" not in done.stdout
    assert net_a.forward_stats.tx.dropped[Drop.NO_ROUTE] == 2


def test_removed_peer_is_unreachable(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    net_a, _ = up_pair(pair)
    assert ping(a.ns, "10.244.1.1", "10.244.2.1").returncode == 0
    net_a.reconcile([])
    assert udp_probe(a.ns, "10.244.2.1") == "ENETUNREACH"


SPOOF = """
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!10H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0,
                socket.inet_aton("10.244.2.1"), socket.inet_aton("10.244.1.1")))
struct.pack_into("!H", hdr, 10, csum(bytes(hdr)))
pkt = bytes(hdr) + struct.pack("!HHHH", 9, 9, 8, 0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 8285))
for _ in range(3):
    s.sendto(pkt, ("198.18.0.1", 8285))
"""


def test_datagram_from_unknown_sender_is_dropped_and_counted(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = a.register()  # b runs no forwarder: the test sends from its port 8285
    net_a.reconcile([b.lease()])
    sh("ip", "-n", b.ns, "addr", "add", "198.18.0.99/24", "dev", "ul0")
    before = net_a.forward_stats.rx.packets
    sh("ip", "netns", "exec", b.ns, sys.executable, "-c", SPOOF, "198.18.0.99")
    wait_until(lambda: net_a.forward_stats.rx.dropped[Drop.UNKNOWN_SENDER] >= 3, 30.0,
               "3 datagrams from an unknown sender dropped")
    assert net_a.forward_stats.rx.dropped[Drop.UNKNOWN_SENDER] == 3
    assert net_a.forward_stats.rx.packets == before
    # the same packet from the known peer's address is forwarded
    sh("ip", "netns", "exec", b.ns, sys.executable, "-c", SPOOF, "198.18.0.2")
    wait_until(lambda: net_a.forward_stats.rx.packets >= before + 3, 30.0,
               "3 datagrams from the known peer forwarded")
    assert net_a.forward_stats.rx.packets == before + 3


HOSTILE = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 8285))
to = ("198.18.0.1", 8285)
for payload in (b"", b"x", bytes(1400), b"\\x45" + bytes(19), b"\\x45" * 1400):
    s.sendto(payload, to)
# five garbage datagrams in one UDP GSO send: one GRO read on the offload path
s.sendmsg([b"\\x45\\x00" * 3500], [(17, 103, struct.pack("=H", 1400))], 0, to)
"""


def test_hostile_datagrams_are_counted_and_the_forwarder_lives_on(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    net_a, _ = a.register()  # b runs no forwarder: the test sends from its port 8285
    net_a.reconcile([b.lease()])
    stats = net_a.forward_stats
    sh("ip", "-n", b.ns, "addr", "add", "198.18.0.99/24", "dev", "ul0")
    sh("ip", "netns", "exec", b.ns, sys.executable, "-c", HOSTILE, "198.18.0.2")
    sh("ip", "netns", "exec", b.ns, sys.executable, "-c", HOSTILE, "198.18.0.99")
    wait_until(
        lambda: stats.rx.dropped[Drop.UNKNOWN_SENDER] >= 10 and stats.rx.packets >= 6,
        10, "the hostile datagrams to be handled",
    )
    assert stats.rx.dropped[Drop.NOT_IPV4] == 3  # empty, one byte, version 0
    assert stats.rx.dropped[Drop.TTL_EXPIRED] == 1
    assert stats.rx.packets == 6  # plausible IPv4 goes to the TUN; the kernel judges it
    assert stats.rx.dropped[Drop.UNKNOWN_SENDER] == 10
    # the thread survived: a real packet still gets through
    sh("ip", "netns", "exec", b.ns, sys.executable, "-c", SPOOF, "198.18.0.2")
    wait_until(lambda: stats.rx.packets >= 9, 10, "the real packets to be forwarded")
    assert stats.rx.packets == 9


def test_deleted_tun_is_reopened(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = up_pair(pair)
    sh("ip", "-n", a.ns, "link", "del", "flannel0")
    report = net_a.reconcile([b.lease()])
    assert report.device_recreated
    assert ping(a.ns, "10.244.1.1", "10.244.2.1").returncode == 0


def test_close_stops_threads_and_removes_the_tun(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    net_a, _ = up_pair(pair)

    def forwarders() -> int:
        return sum(t.name in ("udp-tx", "udp-rx") and t.is_alive() for t in threading.enumerate())

    before = forwarders()
    started = time.monotonic()
    net_a.close()
    assert time.monotonic() - started < 10  # generous: a stuck thread shows in the count below
    assert before - forwarders() == 2
    assert sh("ip", "-n", a.ns, "link", "show", "flannel0", check=False).returncode != 0


def test_throughput_smoke(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = up_pair(pair)
    server = subprocess.Popen(
        ["ip", "netns", "exec", b.ns, "iperf3", "-s", "-1", "-B", "10.244.2.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: "10.244.2.1:5201" in sh("ip", "netns", "exec", b.ns, "ss", "-Hltn").stdout,
            20.0, "iperf3 listening in b",
        )
        done = sh(
            "ip",
            "netns",
            "exec",
            a.ns,
            "iperf3",
            "-c",
            "10.244.2.1",
            "-B",
            "10.244.1.1",
            "-t",
            "2",
            "-J",
            timeout=30,
        )
        result = json.loads(done.stdout)
    finally:
        server.kill()
        server.wait(5)
    bps = result["end"]["sum_received"]["bits_per_second"]
    assert bps > 1e6
    assert net_a.forward_stats.tx.bytes > 1_000_000
    assert socket.AF_INET  # the forwarder only speaks IPv4
