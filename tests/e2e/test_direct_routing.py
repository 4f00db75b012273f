"""vxlan with DirectRouting across a routed underlay (issue 4, item 5).

n1 and n2 share segment A; n3 sits on segment B behind a router (see
:mod:`tests.e2e.routed_underlay`).  With ``"DirectRouting": true`` n1 must
reach n2's pods by a plain route via n2's public address and n3's pods
through ``flannel.1``; a capture on n1's port of segment A's bridge shows
which packets were encapsulated.
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from backends.model import ROUTE_PROTOCOL
from flanneld.lab.matrix import matrix_jobs, ping_argv, run_ping, run_pings
from flanneld.lab.topology import link_address, list_netns, netns_argv
from tests.conftest import RUN_PREFIX, needs_root
from tests.e2e.routed_underlay import (
    UNDERLAY_IF,
    RoutedUnderlay,
    bridge_fdb,
    ip_json,
    two_segments,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

NET_CONF = json.dumps(
    {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}},
    separators=(",", ":"),
)
VXLAN_DEVICE = "flannel.1"
VXLAN_PORT = 8472  # the Linux default, which flannel keeps (Port 0)
VXLAN_HEADER = 8
CONVERGE_TIMEOUT = 30.0  # measured well under a second; generous for a loaded machine
CAPTURE_START_TIMEOUT = 5.0
PINGS = 5


@pytest.fixture(scope="module")
def underlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutedUnderlay]:
    needs_root()
    layout = two_segments(RUN_PREFIX + "dr")
    routed = RoutedUnderlay(layout, str(tmp_path_factory.mktemp("direct")), NET_CONF)
    try:
        routed.build()
        _wait_converged(routed)
        yield routed
    finally:
        left = routed.teardown()
    assert not left, left
    assert not set(layout.namespaces()) & set(list_netns())


def _peer_routes(routed: RoutedUnderlay, node_name: str) -> dict[str, dict[str, object]]:
    """``node``'s flannel routes (protocol 44), by destination."""
    node = routed.layout.node(node_name)
    return {
        str(r["dst"]): r for r in ip_json(node.netns, "route", "show", "proto", str(ROUTE_PROTOCOL))
    }


def _wait_converged(routed: RoutedUnderlay) -> None:
    """Until every node has a flannel route to every other node's subnet (bounded)."""
    nodes = routed.layout.nodes
    want = {n.name: {str(routed.subnet(p)) for p in nodes if p != n} for n in nodes}

    def converged() -> bool:
        have = {n.name: set(_peer_routes(routed, n.name)) for n in nodes}
        return all(want[name] <= have[name] for name in want)

    wait_until(converged, CONVERGE_TIMEOUT, f"every node to route to every other: {want}")


def _vxlan_entries(
    routed: RoutedUnderlay, node_name: str
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """On ``node``'s flannel.1: neighbours as (ip, mac) and FDB entries as (mac, dst)."""
    netns = routed.layout.node(node_name).netns
    neigh = {
        (str(n["dst"]), str(n.get("lladdr")))
        for n in ip_json(netns, "neigh", "show", "dev", VXLAN_DEVICE)
    }
    fdb = {(str(f["mac"]), str(f.get("dst"))) for f in bridge_fdb(netns, VXLAN_DEVICE)}
    return neigh, fdb


def _flags(route: dict[str, object]) -> list[object]:
    flags = route.get("flags", [])
    return flags if isinstance(flags, list) else []


def test_same_segment_peer_gets_a_plain_route_via_its_public_ip(
    underlay: RoutedUnderlay,
) -> None:
    layout = underlay.layout
    for here, there in (("n1", "n2"), ("n2", "n1")):
        peer = layout.node(there)
        route = _peer_routes(underlay, here)[str(underlay.subnet(peer))]
        assert route["gateway"] == str(peer.public_ip), (here, route)
        assert route["dev"] == UNDERLAY_IF, (here, route)
        assert "onlink" not in _flags(route), (here, route)
        # Nothing on flannel.1 points at the direct peer.
        peer_mac = link_address(peer.netns, VXLAN_DEVICE)
        assert peer_mac is not None
        neigh, fdb = _vxlan_entries(underlay, here)
        gateway = str(underlay.subnet(peer).network_address)
        assert not [n for n in neigh if gateway == n[0] or peer_mac == n[1]], (here, neigh)
        assert not [f for f in fdb if peer_mac == f[0] or str(peer.public_ip) == f[1]], fdb


def test_peer_behind_the_router_goes_through_vxlan(underlay: RoutedUnderlay) -> None:
    layout = underlay.layout
    for here, there in (("n1", "n3"), ("n2", "n3"), ("n3", "n1"), ("n3", "n2")):
        peer = layout.node(there)
        gateway = str(underlay.subnet(peer).network_address)
        route = _peer_routes(underlay, here)[str(underlay.subnet(peer))]
        assert route["gateway"] == gateway, (here, route)
        assert route["dev"] == VXLAN_DEVICE, (here, route)
        assert "onlink" in _flags(route), (here, route)
        peer_mac = link_address(peer.netns, VXLAN_DEVICE)
        assert peer_mac is not None
        neigh, fdb = _vxlan_entries(underlay, here)
        assert (gateway, peer_mac) in neigh, (here, neigh)
        assert (peer_mac, str(peer.public_ip)) in fdb, (here, fdb)


def test_pods_ping_across_all_pairs(underlay: RoutedUnderlay) -> None:
    jobs = matrix_jobs(underlay.endpoints(), count=3, interval=0.1, deadline=10.0)
    cells = run_pings(jobs, timeout=12.0)
    assert len(cells) == 6
    failed = [c for c in cells if not c.ok]
    assert not failed, failed


# --- what the wire shows ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One captured ICMP packet: its (inner) addresses and, if encapsulated, the outer ones."""

    src: str
    dst: str
    outer: tuple[str, str] | None  # (src, dst) of the VXLAN packet, None for plain IP


def classify(pcap: bytes) -> Counter[Seen]:
    """Count the ICMP packets in a capture, plain and inside VXLAN on :data:`VXLAN_PORT`."""
    seen: Counter[Seen] = Counter()
    for pkt in rdpcap(io.BytesIO(pcap)):
        if IP not in pkt:
            continue
        outer = pkt[IP]
        if UDP in outer and VXLAN_PORT in (outer[UDP].dport, outer[UDP].sport):
            # Raw bytes: independent of which ports scapy binds VXLAN to.
            inner = Ether(bytes(outer[UDP].payload)[VXLAN_HEADER:])
            if IP in inner and ICMP in inner:
                seen[Seen(inner[IP].src, inner[IP].dst, (outer.src, outer.dst))] += 1
        elif ICMP in outer:
            seen[Seen(outer.src, outer.dst, None)] += 1
    return seen


def _start_capture(netns: str, ifname: str, bpf: str) -> subprocess.Popen[bytes]:
    """tcpdump writing pcap to its stdout; returns once it says it is listening."""
    proc = subprocess.Popen(
        # --immediate-mode: no buffer timeout, so nothing is pending when we stop it.
        netns_argv(
            netns,
            ["tcpdump", "-i", ifname, "-n", "--immediate-mode", "-U", "-s", "256", "-w", "-", bpf],
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    said = b""
    deadline = time.monotonic() + CAPTURE_START_TIMEOUT
    while b"listening on" not in said:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            _stop_capture(proc)
            raise AssertionError(f"tcpdump did not start: {said!r}")
        ready, _, _ = select.select([proc.stderr], [], [], left)
        if ready:
            said += os.read(proc.stderr.fileno(), 4096)
    return proc


def _stop_capture(proc: subprocess.Popen[bytes]) -> bytes:
    """End our tcpdump (by its PID) and return what it wrote."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    return out


def test_capture_shows_plain_ip_on_segment_and_vxlan_across_router(
    underlay: RoutedUnderlay, tmp_path: Path
) -> None:
    layout = underlay.layout
    n1, n2, n3 = (layout.node(name) for name in ("n1", "n2", "n3"))
    p1, p2, p3 = (str(underlay.pod_ip(n)) for n in (n1, n2, n3))
    # n1's port on segment A's bridge: everything n1 puts on (or gets from) the wire.
    capture = _start_capture(n1.segment.netns, n1.port, f"icmp or udp port {VXLAN_PORT}")
    try:
        for dst in (n2, n3):
            argv = ping_argv(underlay.pod_ip(dst), PINGS, interval=0.05, deadline=5.0)
            stats = run_ping(n1.pod_netns, argv, timeout=8.0)
            assert stats.received == PINGS, (dst.name, stats)
    finally:
        pcap = _stop_capture(capture)
    (tmp_path / "n1-port.pcap").write_bytes(pcap)  # for a human when this fails
    seen = classify(pcap)

    # n1 <-> n2 pods: plain IP on the segment, never in VXLAN.
    assert seen[Seen(p1, p2, None)] >= PINGS, seen
    assert seen[Seen(p2, p1, None)] >= PINGS, seen
    assert not [s for s in seen if {s.src, s.dst} == {p1, p2} and s.outer is not None], seen

    # n1 <-> n3 pods: VXLAN between the public addresses, never plain.
    n1_ip, n3_ip = str(n1.public_ip), str(n3.public_ip)
    assert seen[Seen(p1, p3, (n1_ip, n3_ip))] >= PINGS, seen
    assert seen[Seen(p3, p1, (n3_ip, n1_ip))] >= PINGS, seen
    assert not [s for s in seen if {s.src, s.dst} == {p1, p3} and s.outer is None], seen
