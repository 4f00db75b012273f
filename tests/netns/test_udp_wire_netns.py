"""The udp offload path on the wire, checked packet by packet against upstream's format.

Node ``a`` runs pyflannel's udp backend (offload path).  Node ``b`` is a
stand-in for an upstream udp node: a relay with a plain TUN ``flannel0``
that writes every datagram it receives to the TUN, as upstream does, after
checking it with scapy: one IPv4 packet per datagram, no longer than the TUN
MTU, and byte for byte what scapy rebuilds with fresh IP and TCP/UDP/ICMP
checksums.  Its own packets go out one per datagram, or (``gso``) packed into
UDP GSO sends, so that node ``a``'s GRO reads and merged TUN writes run.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from backends.netlink import Netlink
from backends.udp import Endpoints, UdpBackend, UdpNetwork, open_endpoints
from backends.udp_packet import Datapath
from bench.fakes import FakeSubnetManager
from flanneld.lab.topology import run_in_netns
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import BackendConfig, NetConfig
from tests.underlay import sh, veth_hosts

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
CONFIG = NetConfig(network=CLUSTER, subnet_len=24, backend=BackendConfig("udp", {"Type": "udp"}))
TRANSFER = 3_000_000
TCP_PORT = 5001

# Upstream's udp node reduced to its wire behaviour, plus a checker on what it receives.
RELAY = r"""
import fcntl, json, os, select, socket, struct, sys
from scapy.layers.inet import IP
peer, bind, mode = (sys.argv[1], 8285), (sys.argv[2], 8285), sys.argv[3]
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", b"flannel0", 0x0001 | 0x1000))
os.set_blocking(tun, False)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(bind)
seen, bad = {}, []

def check(dgram):
    pkt = IP(dgram)
    rebuilt = IP(dgram)
    del rebuilt.chksum
    if hasattr(rebuilt.payload, "chksum"):
        del rebuilt.payload.chksum
    kind = pkt.payload.name
    same = bytes(rebuilt) == dgram
    if not same and getattr(pkt.payload, "chksum", None) == 0xFFFF:
        # 0xffff and 0x0000 are the two one's-complement zeros (RFC 1624): a receiver's check
        # accepts both, scapy writes 0x0000; every other byte must still match
        zero = IP(dgram)
        zero.payload.chksum = 0
        same = bytes(zero) == bytes(rebuilt)
    if pkt.version != 4 or pkt.len != len(dgram) or len(dgram) > 1472 or not same:
        bad.append(f"{kind} {len(dgram)} {dgram[:64].hex()}")
    seen[kind] = seen.get(kind, 0) + 1

def flush(batch):
    # packets of one size, the last possibly shorter, go out in one UDP GSO send (< 64 KB)
    while batch:
        size, n = len(batch[0]), 1
        while n < len(batch) and n < 40 and len(batch[n]) == size:
            n += 1
        if n < len(batch) and n < 40 and len(batch[n]) < size:
            n += 1
        group, batch = batch[:n], batch[n:]
        cmsg = [(17, 103, struct.pack("=H", size))] if len(group) > 1 else []
        sock.sendmsg([b"".join(group)], cmsg, 0, peer)

print("ready", flush=True)
while True:
    ready, _, _ = select.select([tun, sock, sys.stdin], [], [])
    if sys.stdin in ready:
        sys.stdin.read()
        print(json.dumps({"seen": seen, "bad": bad[:5], "bad_count": len(bad)}), flush=True)
        break
    if tun in ready:
        batch = []
        while len(batch) < 256:
            try:
                batch.append(os.read(tun, 65535))
            except BlockingIOError:
                break
        if mode == "gso":
            flush(batch)
        else:
            for pkt in batch:
                sock.sendto(pkt, peer)
    if sock in ready:
        dgram = sock.recv(65535)
        check(dgram)
        os.write(tun, dgram)
"""

SERVER = r"""
import hashlib, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""

CLIENT = r"""
import socket, sys
data = bytes(range(256)) * (int(sys.argv[4]) // 256)
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=60,
                             source_address=(sys.argv[1], 0))
s.sendall(data)
s.close()
"""

UDP_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for size in (1, 100, 1000, 1444):
    s.sendto(bytes(range(256)) * (size // 256) + b"u" * (size % 256), (sys.argv[2], 9))
"""


@dataclass
class Relay:
    proc: subprocess.Popen[str]
    mode: str

    def finish(self) -> dict[str, object]:
        """Stop the relay; what it saw and what failed the check."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        line = self.proc.stdout.readline()
        self.proc.wait(10)
        report: dict[str, object] = json.loads(line)
        return report


@dataclass
class World:
    a: str
    b: str
    network: UdpNetwork
    relay: Relay


def relay_node(ns: str, mode: str) -> Relay:
    """Start the relay in ``ns`` and give its TUN the address and route upstream would."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", RELAY, "198.18.0.1", "198.18.0.2", mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    sh("ip", "-n", ns, "link", "set", "flannel0", "mtu", "1472", "up")
    sh("ip", "-n", ns, "addr", "add", "10.244.2.0/32", "dev", "flannel0")
    sh("ip", "-n", ns, "route", "add", str(CLUSTER), "dev", "flannel0")
    return Relay(proc, mode)


@pytest.fixture(params=["one-per-datagram", "gso"])
def world(request: pytest.FixtureRequest, netns_factory: Callable[[str], str]) -> Iterator[World]:
    (a, _, ext), (b, _, _) = veth_hosts(netns_factory, "uw")
    netlink = Netlink(a)
    backend: UdpBackend | None = None
    relay: Relay | None = None
    try:
        relay = relay_node(b, "gso" if request.param == "gso" else "plain")

        def opener(name: str, bind: tuple[str, int]) -> Endpoints:
            return run_in_netns(a, lambda: open_endpoints(name, bind))

        backend = UdpBackend(ext, netlink, CONFIG.backend, opener)
        network = backend.register_network(FakeSubnetManager(CONFIG, "10.244.1.0/24"), CONFIG)
        peer = Lease(
            ipaddress.IPv4Network("10.244.2.0/24"), None,
            LeaseAttrs(public_ip=ipaddress.IPv4Address("198.18.0.2")),
        )
        network.reconcile([peer])
        yield World(a, b, network, relay)
    finally:
        if backend is not None:
            backend.stop()
        netlink.close()
        if relay is not None:
            if relay.proc.poll() is None:
                relay.proc.kill()
                relay.proc.wait(10)
            for pipe in (relay.proc.stdin, relay.proc.stdout):
                if pipe is not None:
                    pipe.close()


def transfer(server_ns: str, server_ip: str, client_ns: str, client_ip: str) -> str:
    """Send TRANSFER bytes over TCP; the server's "<bytes> <sha256>" line."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c", SERVER, server_ip, str(TCP_PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = sh("ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT,
                    client_ip, server_ip, str(TCP_PORT), str(TRANSFER), timeout=120, check=False)
        assert client.returncode == 0, client.stdout + client.stderr
        return server.stdout.readline().strip()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def expected_digest() -> str:
    data = bytes(range(256)) * (TRANSFER // 256)
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_offload_path_speaks_upstreams_wire_format(world: World) -> None:
    stats = world.network.forward_stats
    assert stats is not None
    assert stats.path is Datapath.OFFLOAD, "this kernel lacks UDP GSO/GRO or TUN vnet headers"
    # an upstream-format datagram in (ICMP echo request), a checked one out (the reply)
    ping = sh("ip", "netns", "exec", world.b, "ping", "-c", "3", "-i", "0.2", "-W", "2",
              "-I", "10.244.2.1", "10.244.1.1", check=False)
    assert ping.returncode == 0, ping.stdout
    # UDP of several sizes, a to b
    sh("ip", "netns", "exec", world.a, sys.executable, "-c", UDP_SEND, "10.244.1.1", "10.244.2.1")
    # TCP both ways: pod-side TSO super-frames, segmented by the kernel, batched by us
    assert transfer(world.b, "10.244.2.1", world.a, "10.244.1.1") == expected_digest()
    assert transfer(world.a, "10.244.1.1", world.b, "10.244.2.1") == expected_digest()
    report = world.relay.finish()
    assert report["bad_count"] == 0, report["bad"]
    seen = report["seen"]
    assert isinstance(seen, dict)
    assert seen.get("ICMP", 0) >= 3 and seen.get("UDP", 0) >= 4
    assert seen.get("TCP", 0) >= TRANSFER // 1472, seen
    assert stats.tx.batches > 0  # what the relay checked was sent many per UDP GSO call
    assert stats.rx.packets >= TRANSFER // 1472
    if world.relay.mode == "gso":
        assert stats.rx.batches > 0  # GRO reads merged into TCP super-frames


def test_plain_path_when_offload_is_off(netns_factory: Callable[[str], str]) -> None:
    (a, _, _), _ = veth_hosts(netns_factory, "up")
    endpoints = run_in_netns(a, lambda: open_endpoints("flannel0", ("198.18.0.1", 8285), False))
    try:
        assert endpoints.path is Datapath.PLAIN
    finally:
        endpoints.close()
