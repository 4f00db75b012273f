"""Data-path interop: pyflannel nodes next to a node programmed the way upstream flanneld is.

No upstream binary exists here, so the "upstream" node is built with iproute2
from the wire facts alone (reference flannel.md §3a lease key/value, §4.1
vxlan): ``flannel.1`` with VNI 1 on port 8472, a fixed locally administered
MAC, the subnet's network address as /32, a lease written with upstream's
exact bytes under an etcd lease, and per pyflannel peer the three commands
upstream's netlink calls amount to (neigh, fdb self, onlink route).  The
udp case (§4.3) pairs a 2-node pyflannel udp lab with a TUN ``flannel0`` and a
tiny relay that speaks upstream's wire format (raw IPv4 in UDP 8285).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import UNDERLAY_BRIDGE
from flanneld.lab.topology import link_address
from tests.conftest import RUN_PREFIX, needs_root
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PREFIX = RUN_PREFIX + "i"
UP_NETNS = f"{PREFIX}-up"  # not in the lab's naming scheme: removed here, not by down()
UP_POD_NETNS = f"{PREFIX}-upp"
UP_BRIDGE_PORT = "veth-up"
UP_UNDERLAY_IF = "ul0"
UP_POD_PORT = "vup"
UP_ADDRESS = "198.18.0.50"
UP_MAC = "0e:5f:00:00:c8:01"  # locally administered (bit 1 set), unicast (bit 0 clear)
VXLAN_DEV = "flannel.1"
# §3a: the lease key regex, anchored at the end of the full key.
KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
WAIT = 10.0


def run(
    argv: list[str], check: bool = True, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def ip(netns: str, *args: str) -> str:
    return run(["ip", "-n", netns, *args]).stdout


def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    text = ip(netns, "-j", *args).strip()
    return json.loads(text) if text else []


def fdb_json(netns: str) -> list[dict[str, Any]]:
    text = run(["bridge", "-n", netns, "-j", "fdb", "show", "dev", VXLAN_DEV]).stdout.strip()
    return json.loads(text) if text else []


def ping(netns: str, dst: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
            "-W", "1", dst]
    return run(argv, check=False, timeout=count + 5.0)


@dataclass(frozen=True, slots=True)
class Upstream:
    """The upstream-style node: its subnet and its pod's address."""

    subnet: ipaddress.IPv4Network
    pod_ip: str

    @property
    def vtep_ip(self) -> str:
        return str(self.subnet.network_address)


def etcd_leases(lab: Lab) -> dict[str, str]:
    with lab.etcd_gateway() as gateway:
        return gateway.get_prefix(lab.plan.etcd_prefix + "/subnets/")


def etcdctl(lab: Lab, *args: str) -> str:
    argv = ["ip", "netns", "exec", lab.plan.underlay_netns, "etcdctl",
            f"--endpoints={lab.plan.etcd_url}", "--command-timeout=5s", *args]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=15, check=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    return done.stdout


def upstream_lease_value(public_ip: str, mac: str) -> str:
    """§3: upstream's exact Attrs bytes for a vxlan IPv4-only lease."""
    return (
        f'{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
    )


def free_subnet(lab: Lab) -> ipaddress.IPv4Network:
    taken = {ipaddress.IPv4Network(k.rsplit("/", 1)[-1].replace("-", "/"))
             for k in etcd_leases(lab)}
    for third in range(200, 250):
        net = ipaddress.IPv4Network(f"10.244.{third}.0/24")
        if net not in taken:
            return net
    raise AssertionError(f"no free /24 among 10.244.200-249 ({taken})")


def build_upstream(lab: Lab) -> Upstream:
    """The node namespace, flannel.1 as upstream makes it, a pod, and the lease in etcd."""
    ul = lab.plan.underlay_netns
    subnet = free_subnet(lab)
    gw = str(subnet.network_address + 1)
    pod_ip = str(subnet.network_address + 2)
    for name in (UP_NETNS, UP_POD_NETNS):
        run(["ip", "netns", "add", name])
        ip(name, "link", "set", "lo", "up")
    ip(ul, "link", "add", UP_BRIDGE_PORT, "type", "veth", "peer", "name", UP_UNDERLAY_IF,
       "netns", UP_NETNS)
    ip(ul, "link", "set", UP_BRIDGE_PORT, "master", UNDERLAY_BRIDGE, "up")
    ip(UP_NETNS, "addr", "add", f"{UP_ADDRESS}/24", "dev", UP_UNDERLAY_IF)
    ip(UP_NETNS, "link", "set", UP_UNDERLAY_IF, "up")
    run(["ip", "netns", "exec", UP_NETNS, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    # §4.1: the device exactly as upstream creates it.
    ip(UP_NETNS, "link", "add", VXLAN_DEV, "type", "vxlan", "id", "1", "local", UP_ADDRESS,
       "dev", UP_UNDERLAY_IF, "dstport", "8472", "nolearning")
    ip(UP_NETNS, "link", "set", VXLAN_DEV, "address", UP_MAC, "mtu", "1450")
    ip(UP_NETNS, "addr", "add", f"{subnet.network_address}/32", "dev", VXLAN_DEV)
    ip(UP_NETNS, "link", "set", VXLAN_DEV, "up")
    # A pod behind a veth; the node side plays cni0's role (first address of the subnet).
    ip(UP_NETNS, "link", "add", UP_POD_PORT, "type", "veth", "peer", "name", "eth0",
       "netns", UP_POD_NETNS)
    ip(UP_NETNS, "addr", "add", f"{gw}/{subnet.prefixlen}", "dev", UP_POD_PORT)
    ip(UP_NETNS, "link", "set", UP_POD_PORT, "up")
    ip(UP_POD_NETNS, "addr", "add", f"{pod_ip}/{subnet.prefixlen}", "dev", "eth0")
    ip(UP_POD_NETNS, "link", "set", "eth0", "up")
    ip(UP_POD_NETNS, "route", "add", "default", "via", gw)
    # §3a: the lease, upstream's bytes, attached to a 24 h etcd lease as upstream does.
    granted = etcdctl(lab, "lease", "grant", "86400")
    lease_id = granted.split()[1]
    key = f"{lab.plan.etcd_prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    etcdctl(lab, "put", f"--lease={lease_id}", key, upstream_lease_value(UP_ADDRESS, UP_MAC))
    return Upstream(subnet, pod_ip)


def remove_upstream(lab: Lab) -> None:
    for name in (UP_POD_NETNS, UP_NETNS):
        run(["ip", "netns", "del", name], check=False)
    run(["ip", "-n", lab.plan.underlay_netns, "link", "del", UP_BRIDGE_PORT], check=False)


@dataclass(frozen=True, slots=True)
class Peer:
    """A pyflannel lease as upstream parses it."""

    subnet: ipaddress.IPv4Network
    public_ip: str
    mac: str


def program_peer(peer: Peer) -> None:
    """What upstream's vxlan backend does for a lease Added (§4.1), as iproute2."""
    vtep = str(peer.subnet.network_address)
    ip(UP_NETNS, "neigh", "replace", vtep, "dev", VXLAN_DEV, "lladdr", peer.mac,
       "nud", "permanent")
    run(["bridge", "-n", UP_NETNS, "fdb", "replace", peer.mac, "dev", VXLAN_DEV, "self",
         "dst", peer.public_ip, "permanent"])
    ip(UP_NETNS, "route", "replace", str(peer.subnet), "via", vtep, "dev", VXLAN_DEV, "onlink")


def pyflannel_peers(lab: Lab, upstream: Upstream) -> list[Peer]:
    """Parse every pyflannel lease strictly as upstream would, checking the exact bytes."""
    prefix = lab.plan.etcd_prefix + "/subnets/"
    peers = []
    for key, value in sorted(etcd_leases(lab).items()):
        assert key.startswith(prefix), key
        match = KEY_RE.search(key)
        assert match is not None and match.start() == len(prefix), key
        assert match.group(3) is None, key  # IPv4-only lab: no v6 part
        subnet = ipaddress.IPv4Network(f"{match.group(1)}/{match.group(2)}")
        if subnet == upstream.subnet:
            continue
        doc = json.loads(value)
        assert list(doc) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData"], value
        mac = doc["BackendData"]["VtepMAC"]
        assert MAC_RE.fullmatch(mac), mac
        first = int(mac[:2], 16)
        assert first & 0b01 == 0 and first & 0b10 == 0b10, mac  # unicast, locally administered
        assert value == upstream_lease_value(doc["PublicIP"], mac), value
        peers.append(Peer(subnet, doc["PublicIP"], mac))
    return peers


@dataclass(frozen=True, slots=True)
class World:
    lab: Lab
    upstream: Upstream
    peers: tuple[Peer, ...]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    needs_root()
    lab: Lab | None = None
    try:
        lab = up(nodes=2, backend="vxlan", pods_per_node=1, prefix=PREFIX)
        upstream = build_upstream(lab)
        peers = tuple(pyflannel_peers(lab, upstream))
        for peer in peers:
            program_peer(peer)
        yield World(lab, upstream, peers)
    finally:
        if lab is not None:
            remove_upstream(lab)
        else:
            for name in (UP_POD_NETNS, UP_NETNS):
                run(["ip", "netns", "del", name], check=False)
        down(PREFIX)
    leftovers = [n for n in run(["ip", "netns", "list"]).stdout.split() if n.startswith(PREFIX)]
    assert not leftovers, leftovers


def programmed_for_upstream(netns: str, upstream: Upstream) -> bool:
    routes = ip_json(netns, "route", "show", str(upstream.subnet))
    route_ok = any(
        r.get("gateway") == upstream.vtep_ip and r.get("dev") == VXLAN_DEV
        and "onlink" in (r.get("flags") or [])
        for r in routes
    )
    neigh_ok = any(
        n.get("lladdr") == UP_MAC and "PERMANENT" in (n.get("state") or [])
        for n in ip_json(netns, "neigh", "show", upstream.vtep_ip, "dev", VXLAN_DEV)
    )
    fdb_ok = any(
        f.get("mac") == UP_MAC and f.get("dst") == UP_ADDRESS
        and "self" in (f.get("flags") or []) and f.get("state") == "permanent"
        for f in fdb_json(netns)
    )
    return route_ok and neigh_ok and fdb_ok


def test_pyflannel_leases_parse_as_upstream_expects(world: World) -> None:
    lab = world.lab
    assert len(world.peers) == 2
    by_ip = {p.public_ip: p for p in world.peers}
    assert set(by_ip) == {str(n.public_ip) for n in lab.plan.nodes}
    for node in lab.plan.nodes:
        peer = by_ip[str(node.public_ip)]
        assert link_address(node.netns, VXLAN_DEV) == peer.mac
        assert peer.subnet == lab.node_lease(node.name).subnet


def test_pyflannel_nodes_program_the_upstream_node_like_upstream(world: World) -> None:
    for node in world.lab.plan.nodes:
        wait_until(
            partial(programmed_for_upstream, node.netns, world.upstream),
            WAIT,
            f"{node.name} programs {world.upstream.subnet}",
        )
        link = ip_json(node.netns, "-d", "link", "show", VXLAN_DEV)[0]
        vxlan = link["linkinfo"]["info_data"]
        assert vxlan["id"] == 1 and vxlan["port"] == 8472, vxlan


def test_pods_reach_the_upstream_pod_and_back(world: World) -> None:
    for node in world.lab.plan.nodes:
        wait_until(
            partial(programmed_for_upstream, node.netns, world.upstream),
            WAIT,
            f"{node.name} programs {world.upstream.subnet}",
        )
    for ep in world.lab.endpoints():
        there = ping(ep.netns, world.upstream.pod_ip)
        assert there.returncode == 0 and " 0% packet loss" in there.stdout, (ep, there.stdout)
        back = ping(UP_POD_NETNS, str(ep.ip))
        assert back.returncode == 0 and " 0% packet loss" in back.stdout, (ep, back.stdout)


def test_removing_the_upstream_fdb_entry_breaks_only_that_peer(world: World) -> None:
    victim, other = world.peers
    eps = {ep.ip: ep for ep in world.lab.endpoints()}
    victim_pod = next(ep for ip_, ep in eps.items() if ip_ in victim.subnet)
    other_pod = next(ep for ip_, ep in eps.items() if ip_ in other.subnet)
    run(["bridge", "-n", UP_NETNS, "fdb", "del", victim.mac, "dev", VXLAN_DEV, "self",
         "dst", victim.public_ip])
    try:
        assert ping(UP_POD_NETNS, str(victim_pod.ip), count=2).returncode != 0
        assert ping(victim_pod.netns, world.upstream.pod_ip, count=2).returncode != 0
        assert ping(UP_POD_NETNS, str(other_pod.ip)).returncode == 0
    finally:
        program_peer(victim)
    assert ping(UP_POD_NETNS, str(victim_pod.ip)).returncode == 0
    assert ping(victim_pod.netns, world.upstream.pod_ip).returncode == 0


# --- udp (§4.3): raw IPv4 in UDP 8285, relayed by a stand-in for upstream's proxy ---------

UDP_PREFIX = RUN_PREFIX + "j"
UDP_DEV = "flannel0"
UDP_PORT = 8285
# Upstream's udp proxy, reduced to its wire behaviour: TUN packet -> look up the peer by the
# destination's subnet -> decrement TTL -> send the raw IPv4 packet to <peer>:8285; and back.
UDP_PROXY = r"""
import fcntl, ipaddress, json, os, select, socket, struct, sys
peers = {ipaddress.IPv4Network(k): v for k, v in json.loads(sys.argv[1]).items()}
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", b"flannel0", 0x0001 | 0x1000))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[2], int(sys.argv[3])))
print("ready", flush=True)

def hop(pkt):
    hdr = bytearray(pkt[: (pkt[0] & 15) * 4])
    if len(pkt) < 20 or hdr[8] <= 1:
        return None
    hdr[8] -= 1
    hdr[10:12] = b"\0\0"
    total = sum(struct.unpack("!%dH" % (len(hdr) // 2), bytes(hdr)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    hdr[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(hdr) + pkt[len(hdr):]

while True:
    ready, _, _ = select.select([tun, sock], [], [])
    if tun in ready:
        pkt = os.read(tun, 65535)
        if len(pkt) >= 20 and pkt[0] >> 4 == 4:
            dst = ipaddress.IPv4Address(pkt[16:20])
            peer = next((ip for net, ip in peers.items() if dst in net), None)
            out = hop(pkt) if peer else None
            if out:
                sock.sendto(out, (peer, int(sys.argv[3])))
    if sock in ready:
        out = hop(sock.recv(65535))
        if out:
            os.write(tun, out)
"""


def test_udp_pods_reach_an_upstream_style_udp_node_and_back() -> None:
    needs_root()
    up_ns, up_pod = f"{UDP_PREFIX}-up", f"{UDP_PREFIX}-upp"
    lab: Lab | None = None
    proxy: subprocess.Popen[str] | None = None
    try:
        lab = up(nodes=2, backend="udp", pods_per_node=1, prefix=UDP_PREFIX)
        ul = lab.plan.underlay_netns
        subnet = free_subnet(lab)
        gw, pod_ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
        # pyflannel's udp leases: upstream's bytes (no BackendType, no BackendData).
        peers: dict[str, str] = {}
        prefix = lab.plan.etcd_prefix + "/subnets/"
        for key, value in etcd_leases(lab).items():
            match = KEY_RE.search(key)
            assert match is not None and match.start() == len(prefix), key
            doc = json.loads(value)
            assert value == f'{{"PublicIP":"{doc["PublicIP"]}","PublicIPv6":null}}', value
            peers[f"{match.group(1)}/{match.group(2)}"] = doc["PublicIP"]
        assert set(peers.values()) == {str(n.public_ip) for n in lab.plan.nodes}
        for name in (up_ns, up_pod):
            run(["ip", "netns", "add", name])
            ip(name, "link", "set", "lo", "up")
        ip(ul, "link", "add", UP_BRIDGE_PORT, "type", "veth", "peer", "name", UP_UNDERLAY_IF,
           "netns", up_ns)
        ip(ul, "link", "set", UP_BRIDGE_PORT, "master", UNDERLAY_BRIDGE, "up")
        ip(up_ns, "addr", "add", f"{UP_ADDRESS}/24", "dev", UP_UNDERLAY_IF)
        ip(up_ns, "link", "set", UP_UNDERLAY_IF, "up")
        run(["ip", "netns", "exec", up_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        ip(up_ns, "tuntap", "add", "dev", UDP_DEV, "mode", "tun")
        ip(up_ns, "link", "set", UDP_DEV, "mtu", "1472")
        ip(up_ns, "addr", "add", f"{subnet.network_address}/32", "dev", UDP_DEV)
        ip(up_ns, "link", "set", UDP_DEV, "up")
        ip(up_ns, "route", "add", str(lab.plan.network), "dev", UDP_DEV)
        ip(up_ns, "link", "add", UP_POD_PORT, "type", "veth", "peer", "name", "eth0",
           "netns", up_pod)
        ip(up_ns, "addr", "add", f"{gw}/{subnet.prefixlen}", "dev", UP_POD_PORT)
        ip(up_ns, "link", "set", UP_POD_PORT, "up")
        ip(up_pod, "addr", "add", f"{pod_ip}/{subnet.prefixlen}", "dev", "eth0")
        ip(up_pod, "link", "set", "eth0", "up")
        ip(up_pod, "route", "add", "default", "via", gw)
        proxy = subprocess.Popen(
            ["ip", "netns", "exec", up_ns, sys.executable, "-c", UDP_PROXY,
             json.dumps(peers), UP_ADDRESS, str(UDP_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        key = f"{prefix}{subnet.network_address}-{subnet.prefixlen}"
        granted = etcdctl(lab, "lease", "grant", "86400")
        etcdctl(lab, "put", f"--lease={granted.split()[1]}", key,
                f'{{"PublicIP":"{UP_ADDRESS}","PublicIPv6":null}}')
        endpoints = lab.endpoints()
        wait_until(
            lambda: ping(endpoints[0].netns, pod_ip, count=1).returncode == 0,
            WAIT,
            "a pyflannel pod reaches the udp upstream pod",
        )
        for ep in endpoints:
            there = ping(ep.netns, pod_ip)
            assert there.returncode == 0 and " 0% packet loss" in there.stdout, (ep, there.stdout)
            back = ping(up_pod, str(ep.ip))
            assert back.returncode == 0 and " 0% packet loss" in back.stdout, (ep, back.stdout)
        # Without the upstream-style relay the path is gone: the test can fail.
        proxy.kill()
        proxy.wait(timeout=5)
        assert ping(up_pod, str(endpoints[0].ip), count=2).returncode != 0
    finally:
        if proxy is not None:
            if proxy.poll() is None:
                proxy.kill()
                proxy.wait(timeout=5)
            if proxy.stdout is not None:
                proxy.stdout.close()
        for name in (up_pod, up_ns):
            run(["ip", "netns", "del", name], check=False)
        down(UDP_PREFIX)
    leftovers = [n for n in run(["ip", "netns", "list"]).stdout.split()
                 if n.startswith(UDP_PREFIX)]
    assert not leftovers, leftovers
