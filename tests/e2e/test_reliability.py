"""Issue 5's reliability cases against the lab: real etcd, real flanneld per node.

Every case breaks something on purpose, measures what happened (lost
packets, seconds until repaired, log lines) and asserts a bound.  Figures
are printed with a ``FIGURE`` tag (``pytest -s`` shows them) so the
README's reliability table can be regenerated from one run.

Most cases share one 3-node vxlan lab; a function fixture puts it back into
shape after each case (daemons running, etcd up, test-made keys deleted).
The device/route cases also run on 2-node host-gw and udp labs.  The restart,
etcd outage, compaction and fifty-daemon cases also run dual-stack (vxlan,
``--ip-family dual``), where IPv6 pings, routes, neighbours and FDB entries
count as well as IPv4 ones.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import HEALTHZ_PORT
from flanneld.lab.topology import link_address, netns_argv, run_in_netns
from subnet.lease import parse_subnet_key, subnet_key
from tests.conftest import RUN_PREFIX, needs_root
from tests.waiting import assert_backs_off, klog_gaps, wait_pinging, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PREFIX = RUN_PREFIX + "r"
RESYNC = 10.0  # flanneld's default --resync-interval
VXLAN_DEV = "flannel.1"
VXLAN6_DEV = "flannel-v6.1"
UDP_DEV = "flannel0"
PROTO = "44"  # our route protocol id
# The kernel watch reconciles at once (measured ~0.2 s); a repair that waits
# for the resync tick instead would take up to RESYNC and fail this bound.
KERNEL_WATCH_BOUND = 3.0
OWN_LEASE_LOSS_BOUND = 5  # packets at 100 pps, i.e. a 50 ms gap
# A watch that reconnects is back within etcd's retry cap (2 s) plus a pass;
# one that never reconnects never programs the peer.  Measured 1.7-3.7 s.
ETCD_BACK_BOUND = 15.0
# Re-acquiring our own lease is one watch event and one etcd write (measured
# 0.05-0.09 s); a daemon that only noticed it at a renewal would take hours.
OWN_LEASE_BOUND = 5.0


def figure(name: str, value: object) -> None:
    print(f"FIGURE {name}: {value}")


# --- plumbing ------------------------------------------------------------------


def ip(netns: str, *args: str) -> str:
    done = subprocess.run(
        ["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


def ip_json(netns: str, *args: str) -> list[dict[str, object]]:
    text = ip(netns, "-j", *args).strip()
    return json.loads(text) if text else []


def etcdctl(lab: Lab, *args: str, stdin: str | None = None) -> str:
    argv = netns_argv(
        lab.plan.underlay_netns,
        ["etcdctl", f"--endpoints={lab.plan.etcd_url}", "--command-timeout=5s", *args],
    )
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=20, check=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    return done.stdout


def subnets_prefix(lab: Lab) -> str:
    return lab.plan.etcd_prefix + "/subnets/"


def etcd_put(lab: Lab, name: str, value: str) -> None:
    with lab.etcd_gateway() as gateway:
        gateway.put(subnets_prefix(lab) + name, value)


def etcd_del(lab: Lab, name: str) -> None:
    etcdctl(lab, "del", subnets_prefix(lab) + name)


def etcd_leases(lab: Lab) -> dict[str, str]:
    prefix = subnets_prefix(lab)
    with lab.etcd_gateway() as gateway:
        found = gateway.get_prefix(prefix)
    return {key.removeprefix(prefix): value for key, value in found.items()}


def etcd_revision(lab: Lab) -> int:
    doc = json.loads(etcdctl(lab, "get", "/", "-w", "json"))
    return int(doc["header"]["revision"])


def http_get(lab: Lab, node: str, path: str) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{HEALTHZ_PORT}{path}"

    def get() -> str:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode(errors="replace"))
        except OSError as err:  # HTTPError included: its body is not needed
            return f"(error: {err})"

    return run_in_netns(lab.plan.node(node).netns, get)


# --- kernel state: observed and expected ---------------------------------------------


@dataclass(frozen=True)
class Kernel:
    device: bool
    routes: frozenset[str]  # destinations of our (proto 44) routes, both families
    neighbours: frozenset[tuple[str, str]]  # (address, MAC), permanent, on the vxlan device
    fdb: frozenset[tuple[str, str]]  # (MAC, remote) on the vxlan device
    gateways: frozenset[tuple[str, str]] = frozenset()  # (destination, via): host-gw


def observe(lab: Lab, node: str) -> Kernel:
    netns = lab.plan.node(node).netns
    found = ip_json(netns, "route", "show", "proto", PROTO)
    if lab.plan.ipv6:
        found += ip_json(netns, "-6", "route", "show", "proto", PROTO)
    routes = frozenset(str(r["dst"]) for r in found)
    links = {str(link.get("ifname")) for link in ip_json(netns, "link", "show")}
    if lab.plan.backend != "vxlan":
        present = lab.plan.backend == "host-gw" or UDP_DEV in links
        gateways = frozenset((str(r["dst"]), str(r.get("gateway"))) for r in found)
        return Kernel(present, routes, frozenset(), frozenset(),
                      gateways if lab.plan.backend == "host-gw" else frozenset())
    devices = (VXLAN_DEV, VXLAN6_DEV) if lab.plan.ipv6 else (VXLAN_DEV,)
    if not set(devices) <= links:
        return Kernel(False, routes, frozenset(), frozenset())
    neigh, fdb = set(), set()
    for dev in devices:
        neigh |= {(str(n["dst"]), str(n["lladdr"])) for n in ip_json(netns, "neigh", "show", "dev", dev)
                  if "PERMANENT" in str(n.get("state")) and "lladdr" in n}
        done = subprocess.run(
            ["bridge", "-n", netns, "-j", "fdb", "show", "dev", dev],
            capture_output=True, text=True, timeout=10, check=True,
        )
        fdb |= {(str(f["mac"]), str(f["dst"])) for f in json.loads(done.stdout or "[]")
                if "dst" in f}
    return Kernel(True, routes, frozenset(neigh), frozenset(fdb))


def lease_key(net: ipaddress.IPv4Network) -> str:
    return f"{net.network_address}-{net.prefixlen}"


def key_net(key: str) -> ipaddress.IPv4Network:
    return parse_subnet_key(key)[0]


def key_nets(key: str) -> list[str]:
    """Both subnets of a dual-stack key, the IPv4 one of an IPv4 key."""
    return [str(net) for net in parse_subnet_key(key) if net is not None]


def expected(lab: Lab, node: str, leases: dict[str, str] | None = None) -> Kernel:
    """What ``node`` should program for the (all valid) leases in etcd."""
    own = lab.node_lease(node).subnet
    leases = etcd_leases(lab) if leases is None else leases
    routes, neigh, fdb, gateways = set(), set(), set(), set()
    for key, value in leases.items():
        net, net6 = parse_subnet_key(key)
        if net == own:
            continue
        if lab.plan.backend == "udp":
            continue
        routes.add(str(net))
        doc = json.loads(value)
        if lab.plan.backend == "vxlan":
            mac = doc["BackendData"]["VtepMAC"]
            neigh.add((str(net.network_address), mac))
            fdb.add((mac, doc["PublicIP"]))
            if lab.plan.ipv6 and net6 is not None and doc.get("BackendV6Data"):
                mac6 = doc["BackendV6Data"]["VtepMAC"]
                routes.add(str(net6))
                neigh.add((str(net6.network_address), mac6))
                fdb.add((mac6, doc["PublicIPv6"]))
        if lab.plan.backend == "host-gw":
            gateways.add((str(net), doc["PublicIP"]))
            if lab.plan.ipv6 and net6 is not None and doc.get("PublicIPv6"):
                routes.add(str(net6))
                gateways.add((str(net6), doc["PublicIPv6"]))
    if lab.plan.backend == "udp":
        routes.add(str(lab.plan.network))
    return Kernel(True, frozenset(routes), frozenset(neigh), frozenset(fdb), frozenset(gateways))


def converged(lab: Lab, node: str) -> Callable[[], bool]:
    return lambda: observe(lab, node) == expected(lab, node)


def routed(lab: Lab, node: str, net: str) -> Callable[[], bool]:
    return lambda: net in observe(lab, node).routes


def logged(lab: Lab, node: str, text: str, start: int) -> Callable[[], bool]:
    return lambda: text in lab.logs(node)[start:]


# --- fake peers --------------------------------------------------------------------


def vxlan_value(public_ip: str, mac: str, vni: int = 1, backend: str = "vxlan",
                public_ipv6: str | None = None, mac6: str | None = None) -> str:
    doc: dict[str, object] = {"PublicIP": public_ip, "PublicIPv6": public_ipv6,
                              "BackendType": backend, "BackendData": {"VNI": vni, "VtepMAC": mac}}
    if mac6 is not None:
        doc["BackendV6Data"] = {"VNI": vni, "VtepMAC": mac6}
    return json.dumps(doc, separators=(",", ":"))


def hostgw_value(public_ip: str, public_ipv6: str | None) -> str:
    return json.dumps({"PublicIP": public_ip, "PublicIPv6": public_ipv6,
                       "BackendType": "host-gw"}, separators=(",", ":"))


def peer_value(lab: Lab, index: int, host: int, public_ipv6: str = "") -> str:
    """A valid lease value of the lab's backend for underlay host ``host`` (VTEP MACs from
    ``index``; ``public_ipv6`` replaces the address of ``host`` in a dual-stack lab)."""
    v6 = (public_ipv6 or f"fd00:198:18::{host:x}") if lab.plan.ipv6 else None
    if lab.plan.backend == "host-gw":
        return hostgw_value(f"198.18.0.{host}", v6)
    return vxlan_value(f"198.18.0.{host}", f"0e:00:00:00:00:{index:02x}", public_ipv6=v6,
                       mac6=f"0e:00:00:00:01:{index:02x}" if v6 else None)


def fake_peer(lab: Lab, index: int) -> str:
    """Write a valid, TTL-less lease (both families in a dual-stack lab) for a node that
    does not exist; its key."""
    net = ipaddress.IPv4Network(f"10.244.{200 + index}.0/24")
    net6 = ipaddress.IPv6Network(f"fd00:10:244:{200 + index:x}::/64") if lab.plan.ipv6 else None
    key = subnet_key(net, net6)
    assert key not in etcd_leases(lab), key
    etcd_put(lab, key, peer_value(lab, index, 200 + index))
    return key


def dup_mac_key(lab: Lab, owner: str) -> str:
    """A free /24 key that sorts after ``owner`` (the first claimant in key order keeps a MAC)."""
    taken = etcd_leases(lab)
    for octet in range(1, 200):  # clear of the other test keys (200 and up)
        key = f"10.244.{octet}.0-24"
        if key > owner and key not in taken:
            return key
    pytest.skip(f"no free key sorts after {owner}")


def node_ips(lab: Lab) -> set[str]:
    return {str(node.public_ip) for node in lab.plan.nodes}


def restore(lab: Lab) -> None:
    """Back to the healthy baseline: etcd up, test keys gone, every daemon running."""
    if lab.etcd_pid() is None:
        lab.start_etcd()
    for node in lab.plan.nodes:
        pid = lab.flanneld_pid(node.name)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
    etcdctl(lab, "put", lab.plan.etcd_prefix + "/config", lab.plan.net_conf())
    for key, value in etcd_leases(lab).items():
        try:
            mine = json.loads(value).get("PublicIP") in node_ips(lab)
        except (ValueError, AttributeError, RecursionError):
            mine = False
        if not mine or not re.fullmatch(r"10\.244\.\d+\.0-24(&fd00:10:244:[0-9a-f]*::-64)?", key):
            etcd_del(lab, key)
    for node in lab.plan.nodes:
        if lab.flanneld_pid(node.name) is None:
            lab.start_flanneld(node.name)


def assert_matrix(lab: Lab) -> None:
    cells = lab.matrix(count=3, timeout=10.0)
    failed = [c for c in cells if not c.ok]
    assert not failed, failed


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vxlan_lab() -> Iterator[Lab]:
    needs_root()
    try:
        yield up(nodes=3, backend="vxlan", pods_per_node=1, prefix=PREFIX)
    finally:
        down(PREFIX)


@pytest.fixture(scope="module")
def dual_lab() -> Iterator[Lab]:
    """Three dual-stack vxlan nodes, pinging in both families before any case starts."""
    needs_root()
    prefix = RUN_PREFIX + "rd"
    try:
        shared = up(nodes=3, backend="vxlan", pods_per_node=1, prefix=prefix, ip_family="dual")
        # a fresh pod's first IPv6 packets wait for duplicate address detection (~1 s)
        wait_until(lambda: all(c.ok for c in shared.matrix(count=1, timeout=5.0)), 60.0,
                   "every pod reaching every other in both families")
        yield shared
    finally:
        down(prefix)


def _restored(shared: Lab) -> Iterator[Lab]:
    try:
        yield shared
    finally:
        restore(shared)
    for node in shared.plan.nodes:
        wait_until(converged(shared, node.name), RESYNC, f"{node.name} converged after restore")


@pytest.fixture
def lab(vxlan_lab: Lab) -> Iterator[Lab]:
    """The shared vxlan lab, restored after the case whatever it did."""
    yield from _restored(vxlan_lab)


@pytest.fixture
def dual(dual_lab: Lab) -> Iterator[Lab]:
    """The shared dual-stack lab, restored after the case."""
    yield from _restored(dual_lab)


@pytest.fixture(params=["ipv4", "dual"])
def family_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The case on the IPv4 vxlan lab, then on the dual-stack one."""
    yield request.getfixturevalue("lab" if request.param == "ipv4" else "dual")


def families(lab: Lab) -> tuple[int, ...]:
    return (4, 6) if lab.plan.ipv6 else (4,)


def _small_lab(backend: str) -> Iterator[Lab]:
    needs_root()
    prefix = RUN_PREFIX + backend[0]
    try:
        yield up(nodes=2, backend=backend, pods_per_node=1, prefix=prefix)
    finally:
        down(prefix)


@pytest.fixture(params=["host-gw", "udp"])
def other_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield from _small_lab(str(request.param))


@pytest.fixture
def udp_lab() -> Iterator[Lab]:
    yield from _small_lab("udp")


# --- 1. SIGKILL and restart under traffic ---------------------------------------------


def test_sigkill_restart_loses_no_packet_to_or_from_the_node(family_lab: Lab) -> None:
    lab = family_lab
    before, before_env = lab.node_lease("n1"), lab.subnet_env("n1")
    devices = [VXLAN_DEV, VXLAN6_DEV][: len(families(lab))]
    macs = [link_address(lab.plan.node("n1").netns, dev) for dev in devices]
    count = 600  # 100 pps for 6 s, in both directions (and families) across the restart
    streams = [(src, dst, family) for family in families(lab)
               for src, dst in (("n1p1", "n2p1"), ("n3p1", "n1p1"))]
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        pings = [pool.submit(lab.ping, src, dst, count, 0.01, 40.0, family)
                 for src, dst, family in streams]
        wait_pinging(lab, "n1p1")
        wait_pinging(lab, "n3p1")
        started = time.monotonic()
        lab.kill_flanneld("n1", signal.SIGKILL)
        lab.start_flanneld("n1")
        restart = time.monotonic() - started
        stats = [p.result(timeout=60) for p in pings]
    tag = "dual-stack " if lab.plan.ipv6 else ""
    figure(f"{tag}sigkill restart to ready (s)", f"{restart:.2f}")
    figure(f"{tag}sigkill packets lost out/in per family", ", ".join(
        f"IPv{family} {src}->{dst} {s.lost}/{s.sent}" for (src, dst, family), s in zip(
            streams, stats, strict=True)))
    assert all(s.sent == count for s in stats), stats
    assert all(s.lost == 0 for s in stats), stats
    after = lab.node_lease("n1")
    assert after.subnet == before.subnet
    assert lab.subnet_env("n1") == before_env  # the IPv6 subnet too
    assert after.vtep_mac == before.vtep_mac == macs[0]
    assert [link_address(lab.plan.node("n1").netns, dev) for dev in devices] == macs


# --- 2. etcd down for 10 s --------------------------------------------------------


def test_etcd_outage_keeps_routes_and_a_later_peer_is_programmed_quickly(
    family_lab: Lab,
) -> None:
    lab = family_lab
    names = [node.name for node in lab.plan.nodes]
    before = {name: observe(lab, name) for name in names}
    outage = 10.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        pinging = [pool.submit(lab.ping, "n1p1", "n3p1", int((outage + 3) / 0.05), 0.05, 40.0,
                               family) for family in families(lab)]
        wait_pinging(lab, "n1p1")
        lab.stop_etcd(signal.SIGKILL)
        changed: list[str] = []
        deadline = time.monotonic() + outage
        while time.monotonic() < deadline:
            changed += [n for n in names if observe(lab, n) != before[n]]
            time.sleep(0.5)  # sampling through the 10 s outage (the scenario)
        lab.start_etcd()
        # Written as soon as etcd is back: the daemons' watches are still reconnecting.
        put_at = time.monotonic()
        key = fake_peer(lab, 1)
        for name in names:
            for net in key_nets(key):
                wait_until(routed(lab, name, net), ETCD_BACK_BOUND, f"{net} programmed on {name}")
        took = time.monotonic() - put_at
        stats = [p.result(timeout=60) for p in pinging]
    assert not changed, f"kernel state changed during the outage on {sorted(set(changed))}"
    assert all(lab.flanneld_pid(n) is not None for n in names), "a daemon exited"
    tag = "dual-stack " if lab.plan.ipv6 else ""
    figure(f"{tag}etcd outage ping loss", ", ".join(
        f"IPv{family} {s.lost}/{s.sent}" for family, s in zip(families(lab), stats, strict=True)))
    assert all(s.lost == 0 for s in stats), stats
    figure(f"{tag}peer added after etcd restart programmed on all nodes (s)", f"{took:.2f}")
    assert took <= ETCD_BACK_BOUND
    for name in names:
        assert observe(lab, name) == expected(lab, name)


# --- 3. watch history compacted while the daemon was away ------------------------------


def test_compacted_watch_relists_without_missed_or_stale_peers(family_lab: Lab) -> None:
    lab = family_lab
    gone, changed = fake_peer(lab, 2), fake_peer(lab, 3)
    wait_until(converged(lab, "n1"), RESYNC, "fake peers programmed")
    log_start = len(lab.logs("n1"))
    pid = lab.flanneld_pid("n1")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # A restart of etcd breaks n1's watch stream while n1 cannot notice.
        lab.stop_etcd(signal.SIGKILL)
        lab.start_etcd()
        etcd_del(lab, gone)
        etcd_put(lab, changed, peer_value(lab, 0x33, 233))
        added = fake_peer(lab, 4)
        etcdctl(lab, "compact", str(etcd_revision(lab)), "--physical")
        etcdctl(lab, "defrag")
    finally:
        os.kill(pid, signal.SIGCONT)
    took = wait_until(converged(lab, "n1"), 2 * RESYNC, "n1 equals the lease set")
    figure(f"{'dual-stack ' if lab.plan.ipv6 else ''}re-list after compaction converged (s)",
           f"{took:.2f}")
    state = observe(lab, "n1")
    assert not set(key_nets(gone)) & state.routes
    assert set(key_nets(added)) <= state.routes
    assert ("0e:00:00:00:00:33", "198.18.0.233") in state.fdb
    if lab.plan.ipv6:  # the changed peer's IPv6 VTEP is at its new address too
        assert ("0e:00:00:00:01:33", "fd00:198:18::e9") in state.fdb
    assert "fell behind etcd compaction" in lab.logs("n1")[log_start:]
    assert lab.flanneld_pid("n1") == pid


# --- 4. a peer's lease deleted while our daemon is down ---------------------------------


def test_peer_deleted_while_down_is_removed_after_start(lab: Lab) -> None:
    key = fake_peer(lab, 5)
    wait_until(converged(lab, "n1"), RESYNC, "fake peer programmed")
    lab.kill_flanneld("n1", signal.SIGKILL)
    etcd_del(lab, key)
    stale = observe(lab, "n1")
    assert str(key_net(key)) in stale.routes  # still there: nobody removed it yet
    started = time.monotonic()
    lab.start_flanneld("n1")
    wait_until(converged(lab, "n1"), RESYNC, "stale peer removed")
    took = time.monotonic() - started
    figure("stale peer removed after start (s from spawn)", f"{took:.2f}")
    state = observe(lab, "n1")
    assert str(key_net(key)) not in state.routes
    assert not [e for e in state.fdb if e[0] == "0e:00:00:00:00:05"]
    assert not [n for n in state.neighbours if n[1] == "0e:00:00:00:00:05"]
    assert took <= RESYNC


# --- 5. the device deleted by hand ------------------------------------------------


def _delete_device_and_time(lab: Lab, dev: str) -> float:
    netns = lab.plan.node("n1").netns
    want = expected(lab, "n1")
    ip(netns, "link", "del", dev)
    started = time.monotonic()
    wait_until(lambda: observe(lab, "n1") == want, 10.0, f"{dev} back with every peer")
    return time.monotonic() - started


def test_vxlan_device_deleted_is_recreated_with_all_peers(lab: Lab) -> None:
    fake_peer(lab, 6)
    wait_until(converged(lab, "n1"), RESYNC, "fake peer programmed")
    lease = lab.node_lease("n1")
    took = _delete_device_and_time(lab, VXLAN_DEV)
    figure("vxlan flannel.1 deleted -> recreated + peers (s)", f"{took:.2f}")
    assert took <= 5.0
    assert link_address(lab.plan.node("n1").netns, VXLAN_DEV) == lease.vtep_mac
    assert lab.node_lease("n1") == lease
    assert_matrix(lab)


def test_udp_device_deleted_is_recreated(udp_lab: Lab) -> None:
    took = _delete_device_and_time(udp_lab, UDP_DEV)
    figure("udp flannel0 deleted -> recreated + route (s)", f"{took:.2f}")
    assert took <= 5.0
    assert_matrix(udp_lab)


# --- 6. one route, FDB or neighbour entry deleted by hand ---------------------------------


def _restore_time(lab: Lab, argv: list[str], present: Callable[[Kernel], bool]) -> float:
    netns = lab.plan.node("n1").netns
    assert present(observe(lab, "n1"))
    if argv[0] == "bridge":
        subprocess.run(["bridge", "-n", netns, *argv[1:]], check=True, timeout=10)
    else:
        ip(netns, *argv)
    started = time.monotonic()
    wait_until(lambda: present(observe(lab, "n1")), RESYNC + 2, f"{' '.join(argv)} restored")
    return time.monotonic() - started


def test_vxlan_route_fdb_and_neighbour_deleted_are_restored(lab: Lab) -> None:
    peer = lab.node_lease("n2")
    assert peer.subnet is not None and peer.vtep_mac is not None
    net, gw, mac = str(peer.subnet), str(peer.subnet.network_address), peer.vtep_mac
    remote = str(peer.public_ip)
    times = {
        "route": _restore_time(
            lab, ["route", "del", net], lambda k: net in k.routes
        ),
        "fdb": _restore_time(
            lab, ["bridge", "fdb", "del", mac, "dev", VXLAN_DEV, "dst", remote],
            lambda k: (mac, remote) in k.fdb,
        ),
        "neighbour": _restore_time(
            lab, ["neigh", "del", gw, "dev", VXLAN_DEV], lambda k: (gw, mac) in k.neighbours
        ),
    }
    for what, took in times.items():
        figure(f"vxlan {what} deleted -> restored (s)", f"{took:.2f}")
        assert took <= KERNEL_WATCH_BOUND, (what, took)
    assert converged(lab, "n1")()
    assert_matrix(lab)


def test_other_backend_route_deleted_is_restored(other_lab: Lab) -> None:
    if other_lab.plan.backend == "udp":
        net = str(other_lab.plan.network)
    else:
        peer = other_lab.node_lease("n2").subnet
        assert peer is not None
        net = str(peer)
    took = _restore_time(other_lab, ["route", "del", net], lambda k: net in k.routes)
    figure(f"{other_lab.plan.backend} route deleted -> restored (s)", f"{took:.2f}")
    assert took <= KERNEL_WATCH_BOUND
    assert_matrix(other_lab)


# --- 9. our own lease deleted from etcd -----------------------------------------------


def test_own_lease_deleted_is_reacquired_without_exiting(lab: Lab) -> None:
    before = lab.node_lease("n2")
    pid = lab.flanneld_pid("n2")
    log_start = len(lab.logs("n2"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pinging = pool.submit(lab.ping, "n1p1", "n2p1", 300, 0.01, 30.0)
        wait_pinging(lab, "n1p1")
        deleted_at = time.monotonic()
        etcd_del(lab, lease_key(before.subnet))
        wait_until(lambda: lease_key(before.subnet) in etcd_leases(lab), OWN_LEASE_BOUND,
                   "n2's lease back in etcd")
        took = time.monotonic() - deleted_at
        stats = pinging.result(timeout=40)
    figure("own lease deleted -> re-acquired (s)", f"{took:.2f}")
    figure("own lease deleted ping loss", f"{stats.lost}/{stats.sent}")
    assert took <= OWN_LEASE_BOUND
    # n2 keeps its routes, but its peers see the lease deleted and drop their
    # route to n2 until it is back (~10 ms): at 100 pps that may cost a packet.
    assert stats.lost <= OWN_LEASE_LOSS_BOUND, stats
    assert lab.flanneld_pid("n2") == pid
    after = lab.node_lease("n2")
    assert (after.subnet, after.vtep_mac) == (before.subnet, before.vtep_mac)
    log = lab.logs("n2")[log_start:]
    assert "was deleted or expired in the store; re-acquiring" in log
    assert "re-acquired the same lease" in log


# --- 10. malformed leases written straight into etcd --------------------------------------


def put_until_logged(lab: Lab, bad: dict[str, str]) -> tuple[dict[str, int | None],
                                                             dict[str, int]]:
    """Write ``bad`` leases; wait until every daemon's log names each.  The daemons' PIDs
    before, and where each log stood."""
    pids = {n.name: lab.flanneld_pid(n.name) for n in lab.plan.nodes}
    starts = {n.name: len(lab.logs(n.name)) for n in lab.plan.nodes}
    for key, value in bad.items():
        etcd_put(lab, key, value)
    for node in lab.plan.nodes:
        for key in bad:
            short = key if len(key) < 60 else key[:30]
            wait_until(logged(lab, node.name, key, starts[node.name]), RESYNC,
                       f"{node.name} logs {short}", step=0.2)
    return pids, starts


def test_malformed_leases_are_logged_and_skipped_by_every_daemon(lab: Lab) -> None:
    own = lab.node_lease("n1")
    other = lab.node_lease("n2")
    assert own.subnet is not None
    base = str(own.subnet.network_address).rsplit(".", 1)[0]  # 10.244.X
    valid = etcd_leases(lab)
    good = vxlan_value  # shorthand
    bad = {
        "garbage": good("198.18.0.240", "0e:00:00:00:01:01"),
        "10.244.240.0-33": good("198.18.0.240", "0e:00:00:00:01:02"),
        "10.244.241.0-24&zz::-64": good("198.18.0.241", "0e:00:00:00:01:03"),
        "10.244.242.0-24": "not json {",
        "10.244.243.0-24": '["a", "list"]',
        "10.244.244.0-24": '{"PublicIP": 5, "BackendType": "vxlan"}',
        "10.244.245.0-24": '{"PublicIP": "' + "1" * 1_000_000 + '"}',
        "10.244.239.0-24": "[" * 100_000,  # deeper than the JSON parser's recursion limit
        "10.244.238.0-24": good("198.18.0.238", "0e:00:00:00:01:0a").replace(
            '"BackendData":{', '"BackendData":{"Pad":' + "[" * 50_000 + "]" * 50_000 + ","
        ),
        "10.244.246.0-24": good("fd00::1", "0e:00:00:00:01:04"),
        "10.245.0.0-24": good("198.18.0.247", "0e:00:00:00:01:05"),
        f"{base}.128-25": good("198.18.0.248", "0e:00:00:00:01:06"),
        "10.244.0.0-16": good("198.18.0.237", "0e:00:00:00:01:0b"),  # the whole network
        f"{base}.1-24": good("198.18.0.249", "0e:00:00:00:01:07"),
        "10.244.250.0-24": good("198.18.0.250", "0e:00:00:00:01:08", backend="gre"),
        "10.244.251.0-24": good("198.18.0.251", "zz:zz"),
        "10.244.252.0-24": good("198.18.0.252", "01:00:5e:00:00:01"),
        dup_mac_key(lab, lease_key(other.subnet)): good("198.18.0.253", str(other.vtep_mac)),
        "10.244.254.0-24": good("198.18.0.254", "0e:00:00:00:01:09", vni=2),
    }
    # Everything bad is named in every daemon's log, nothing bad is programmed.
    pids, _ = put_until_logged(lab, bad)
    for node in lab.plan.nodes:
        assert observe(lab, node.name) == expected(lab, node.name, valid), node.name
    assert {n.name: lab.flanneld_pid(n.name) for n in lab.plan.nodes} == pids
    assert_matrix(lab)
    # Every daemon still listens: a valid peer written now is programmed everywhere.
    late = fake_peer(lab, 7)
    for node in lab.plan.nodes:
        wait_until(routed(lab, node.name, str(key_net(late))), 5.0, f"{node.name} programs {late}")
    etcd_del(lab, late)
    # Deleting them again must not disturb the valid peers either.
    for key in bad:
        etcd_del(lab, key)
    # A watch delivers in order: once a peer written after the deletes has come
    # and gone on every node, every node has seen the deletes too.
    canary = fake_peer(lab, 8)
    for node in lab.plan.nodes:
        net = str(key_net(canary))
        wait_until(routed(lab, node.name, net), RESYNC, f"{node.name} programs {canary}")
    etcd_del(lab, canary)
    for node in lab.plan.nodes:
        still = routed(lab, node.name, str(key_net(canary)))
        wait_until(lambda still=still: not still(), RESYNC, f"{node.name} removes {canary}")
    for node in lab.plan.nodes:
        assert observe(lab, node.name) == expected(lab, node.name, valid), node.name
    assert {n.name: lab.flanneld_pid(n.name) for n in lab.plan.nodes} == pids
    assert lab.node_lease("n1") == own
    assert_matrix(lab)


def test_dual_stack_bad_leases_are_logged_once_and_both_families_keep_working(
    dual: Lab,
) -> None:
    lab = dual
    valid = etcd_leases(lab)
    v6 = "&fd00:10:244:{:x}::-64".format
    bad = {  # each is skipped whole: its IPv4 part is not routed either
        "10.244.220.0-24&fd99:1::-64": peer_value(lab, 0x20, 220),
        "10.244.221.0-24" + v6(221): peer_value(lab, 0x21, 221, "10.0.0.1"),
        "10.244.222.0-24" + v6(222): peer_value(lab, 0x22, 222, "::ffff:198.18.0.222"),
        "10.244.223.0-24" + v6(223): peer_value(lab, 0x23, 223, "fe80::df"),
        "10.244.224.0-24" + v6(224): peer_value(lab, 0x24, 224, "::1"),
    }
    reasons = ["outside the cluster network", "PublicIPv6 is not a valid address",
               "IPv4-mapped", "link-local", "loopback"]
    pids, starts = put_until_logged(lab, bad)
    # Two more passes on every node (a valid peer comes and goes): nothing is said again.
    canary = fake_peer(lab, 9)
    for node in lab.plan.nodes:
        for net in key_nets(canary):
            wait_until(routed(lab, node.name, net), RESYNC, f"{node.name} routes {net}")
    etcd_del(lab, canary)
    for node in lab.plan.nodes:
        gone = routed(lab, node.name, key_nets(canary)[1])
        wait_until(lambda gone=gone: not gone(), RESYNC, f"{node.name} drops {canary}")
    for node in lab.plan.nodes:
        lines = lab.logs(node.name)[starts[node.name]:].splitlines()
        for key, reason in zip(bad, reasons, strict=True):
            said = [line for line in lines if key in line]
            assert len(said) == 1 and reason in said[0], (node.name, key, said)
        assert observe(lab, node.name) == expected(lab, node.name, valid), node.name
    figure("dual-stack bad leases: log lines per lease and node", 1)
    assert {n.name: lab.flanneld_pid(n.name) for n in lab.plan.nodes} == pids
    cells = lab.matrix(count=3, timeout=10.0)
    assert {c.family for c in cells} == {4, 6} and all(c.ok for c in cells), cells


def test_kube_dual_stack_node_with_one_pod_cidr_family_is_reached_over_it_and_reported_once(
) -> None:
    """A dual-stack kube lab gets two Nodes with a pod CIDR of one family each: every
    daemon programs each over the family it has, says once what the other lacks, and
    the lab's pods keep both families."""
    needs_root()
    prefix = RUN_PREFIX + "rk"
    ann = "flannel.alpha.coreos.com/"

    def annotations(host: int) -> dict[str, str]:
        mac4, mac6 = f"0e:00:00:00:02:{host:02x}", f"0e:00:00:00:03:{host:02x}"
        return {ann + "kube-subnet-manager": "true", ann + "backend-type": "vxlan",
                ann + "backend-data": '{"VNI":1,"VtepMAC":"' + mac4 + '"}',
                ann + "public-ip": f"198.18.0.{host}",
                ann + "backend-v6-data": '{"VNI":1,"VtepMAC":"' + mac6 + '"}',
                ann + "public-ipv6": f"fd00:198:18::{host:x}"}

    try:
        lab = up(nodes=2, backend="vxlan", pods_per_node=1, prefix=prefix, ip_family="dual",
                 subnet_mgr="kube")
        starts = {n.name: len(lab.logs(n.name)) for n in lab.plan.nodes}
        lab.kube_api.add_node("v4only", pod_cidrs=["10.244.201.0/24"],
                              annotations=annotations(201))
        lab.kube_api.add_node("v6only", pod_cidrs=["fd00:10:244:ca::/64"],
                              annotations=annotations(202))
        for node in lab.plan.nodes:
            for net in ("10.244.201.0/24", "fd00:10:244:ca::/64"):
                wait_until(routed(lab, node.name, net), RESYNC, f"{node.name} routes {net}")
        lab.kube_api.annotate_node("v4only", {"unrelated/x": "1"})  # same gap: not said again
        lab.kube_api.add_node("canary", pod_cidrs=["10.244.203.0/24", "fd00:10:244:cb::/64"],
                              annotations=annotations(203))
        for node in lab.plan.nodes:
            for net in ("10.244.203.0/24", "fd00:10:244:cb::/64"):
                wait_until(routed(lab, node.name, net), RESYNC, f"{node.name} routes {net}")
        for node in lab.plan.nodes:
            state = observe(lab, node.name)
            assert ("0e:00:00:00:02:c9", "198.18.0.201") in state.fdb  # v4only over IPv4
            assert ("0e:00:00:00:03:ca", "fd00:198:18::ca") in state.fdb  # v6only over IPv6
            assert not {f for f in state.fdb if f[0] in ("0e:00:00:00:03:c9",
                                                        "0e:00:00:00:02:ca")}
            log = lab.logs(node.name)[starts[node.name]:]
            for name, missing in (("v4only", "no IPv6 pod CIDR"), ("v6only", "no IPv4 pod CIDR")):
                said = [line for line in log.splitlines() if f"Node '{name}'" in line]
                assert len(said) == 1 and missing in said[0], (node.name, said)
        cells = lab.matrix(count=3, timeout=10.0)
        assert {c.family for c in cells} == {4, 6} and all(c.ok for c in cells), cells
    finally:
        down(prefix)


def test_large_lease_values_stop_neither_a_restart_nor_new_peers(lab: Lab) -> None:
    # Three values of 1.4 MB: each within etcd's default request limit, 4.2 MB together,
    # more than gRPC's default 4 MiB receive limit (issue 9).
    big = [f"10.244.{230 + i}.0-24" for i in range(3)]
    for key in big:
        etcdctl(lab, "put", subnets_prefix(lab) + key, stdin="x" * 1_400_000)
    log_start = len(lab.logs("n1"))
    started = time.monotonic()
    lab.kill_flanneld("n1", signal.SIGKILL)
    lab.start_flanneld("n1")  # waits for /readyz
    restart = time.monotonic() - started
    late = fake_peer(lab, 9)
    began = time.monotonic()
    for node in lab.plan.nodes:
        wait_until(routed(lab, node.name, str(key_net(late))), 10.0, f"{node.name} routes {late}")
    programmed = time.monotonic() - began
    figure("large values: SIGKILL -> ready again (s)", f"{restart:.2f}")
    figure("large values: new peer -> routed on every node (s)", f"{programmed:.2f}")
    log = lab.logs("n1")[log_start:]
    assert all(key in log for key in big), "each large value is logged as a bad lease"
    assert "RESOURCE_EXHAUSTED" not in log
    for node in lab.plan.nodes:
        assert str(key_net(big[0])) not in observe(lab, node.name).routes
    assert_matrix(lab)


# --- 11. secrets never in logs ---------------------------------------------------------


def test_etcd_password_is_never_logged_or_served(lab: Lab) -> None:
    secret = "pw-" + RUN_PREFIX + "-s3cr3t"
    lab.kill_flanneld("n3", signal.SIGKILL)
    log_start = len(lab.logs("n3"))
    # etcd auth is off: the daemon says once that the credentials are not needed and
    # goes on, at -v=10 (a refused login is covered by the etcd integration tests).
    lab.start_flanneld(
        "n3", extra_args=["-v=10", "--etcd-username=flannel", f"--etcd-password={secret}"],
        wait=False,
    )
    wait_until(lambda: "authentication disabled" in lab.logs("n3")[log_start:], 20.0,
               "the note that the credentials are not needed")
    wait_until(lambda: len(lab.logs("n3")[log_start:].splitlines()) > 5, 20.0,
               "n3 to log more than 5 lines at -v=10")
    served = http_get(lab, "n3", "/readyz") + http_get(lab, "n3", "/healthz")
    served += http_get(lab, "n3", "/metrics")
    log = lab.logs("n3")[log_start:]
    figure("secret-check log lines at -v=10", len(log.splitlines()))
    assert len(log.splitlines()) > 5  # it did log, verbosely
    assert "flannel_known_peers" in served and "flanneld is running" in served  # fetched
    assert secret not in log
    assert secret not in served
    assert lab.flanneld_pid("n3") is not None
    lab.kill_flanneld("n3", signal.SIGKILL)
    # A password without a user name is a flag error: the daemon exits, saying why.
    log_start = len(lab.logs("n3"))
    lab.start_flanneld("n3", extra_args=["-v=10", f"--etcd-password={secret}"], wait=False)
    wait_until(lambda: lab.flanneld_pid("n3") is None, 20.0, "n3 exits")
    log = lab.logs("n3")[log_start:]
    assert "--etcd-username and --etcd-password must be given together" in log
    assert secret not in log


# --- 12. graceful SIGTERM leaves everything in place ---------------------------------------


def test_sigterm_keeps_dataplane_and_lease_and_restart_reuses_them(lab: Lab) -> None:
    before_kernel = observe(lab, "n1")
    before_lease = lab.node_lease("n1")
    key = lease_key(before_lease.subnet)
    raw = etcd_leases(lab)[key]
    lab.kill_flanneld("n1", signal.SIGTERM)
    assert "routes and lease are kept" in lab.logs("n1")
    assert observe(lab, "n1") == before_kernel
    assert before_kernel.device and before_kernel.routes and before_kernel.fdb
    assert etcd_leases(lab).get(key) == raw
    stats = lab.ping("n2p1", "n1p1", 10, 0.05, 10.0)  # traffic flows with the daemon down
    assert stats.lost == 0, stats
    log_start = len(lab.logs("n1"))
    lab.start_flanneld("n1")
    after = lab.node_lease("n1")
    assert (after.subnet, after.vtep_mac) == (before_lease.subnet, before_lease.vtep_mac)
    assert "reusing lease" in lab.logs("n1")[log_start:]
    assert observe(lab, "n1") == before_kernel


# --- 7. fifty daemons start at once -------------------------------------------------------


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("ip_family", ["ipv4", "dual"])
def test_fifty_daemons_start_at_once_and_converge(ip_family: str) -> None:
    """slow: 50 node namespaces with flanneld only (no pods), ~40 s on 2 cores (each)."""
    needs_root()
    nodes = 50
    prefix = RUN_PREFIX + ("f" if ip_family == "ipv4" else "fd")
    per_peer = 2 if ip_family == "dual" else 1  # a route per family
    try:
        started = time.monotonic()
        fleet = up(nodes=nodes, backend="vxlan", pods_per_node=0, prefix=prefix,
                   ip_family=ip_family)
        ready = time.monotonic() - started
        names = [node.name for node in fleet.plan.nodes]

        want = per_peer * (nodes - 1)
        counts: dict[str, int] = {}

        def all_programmed() -> bool:
            counts.update({n: len(observe(fleet, n).routes) for n in names})
            return all(c == want for c in counts.values())

        try:
            wait_until(all_programmed, 180.0 - ready, "every node programs 49 peers", step=0.5)
        except pytest.fail.Exception:
            short = {n: c for n, c in counts.items() if c != want}
            pytest.fail(f"after {time.monotonic() - started:.0f} s (ready after {ready:.0f} s) "
                        f"{len(short)} nodes lack some of their {want} routes: {short}")
        converged_after = time.monotonic() - started
        leases = fleet.leases()
        pids = [fleet.flanneld_pid(n) for n in names]
        peaks = [_peak_rss_kib(pid) for pid in pids if pid is not None]
        tag = f"50 daemons ({ip_family})"
        figure(f"{tag}: all ready (s)", f"{ready:.1f}")
        figure(f"{tag}: full convergence (s)", f"{converged_after:.1f}")
        figure(f"{tag}: peak RSS per daemon max/mean (MiB)",
               f"{max(peaks) / 1024:.0f}/{sum(peaks) / len(peaks) / 1024:.0f}")
        assert len({lease.subnet for lease in leases}) == nodes
        assert len(etcd_leases(fleet)) == nodes
        assert None not in pids, "a daemon exited"
        for name in names:
            assert observe(fleet, name) == expected(fleet, name), name
        assert converged_after <= 180.0
        assert max(peaks) < 200 * 1024
    finally:
        down(prefix)


# --- 8. subnet space exhausted -------------------------------------------------------------


SMALL_NET_CONF = '{"Network":"10.250.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}'
EXHAUSTED_ATTEMPTS = 4


def test_exhausted_subnets_log_the_fix_back_off_and_recover() -> None:
    """slow: the fourth daemon's first four attempts (~7 s), then a freed subnet (up to ~40 s).

    Backoff and "no spam" are read from the daemon's own log: the klog time
    of each attempt and the lines between them.  A loaded machine only
    lengthens the gaps, so the lower bounds hold however slow it is.
    """
    needs_root()
    prefix = RUN_PREFIX + "x"
    try:
        small = up(nodes=4, backend="vxlan", pods_per_node=0, prefix=prefix)
        for node in small.plan.nodes:
            small.kill_flanneld(node.name, signal.SIGKILL)
        etcdctl(small, "del", "--prefix", subnets_prefix(small))
        etcdctl(small, "put", small.plan.etcd_prefix + "/config", SMALL_NET_CONF)
        for name in ("n1", "n2", "n3"):
            small.start_flanneld(name)
        assert sorted(etcd_leases(small)) == ["10.250.0.12-30", "10.250.0.4-30", "10.250.0.8-30"]

        log_start = len(small.logs("n4"))
        small.start_flanneld("n4", wait=False)

        def attempts() -> list[str]:
            lines = small.logs("n4")[log_start:].splitlines()
            return [line for line in lines if "out of subnets" in line]

        wait_until(lambda: len(attempts()) >= EXHAUSTED_ATTEMPTS, 120.0,
                   f"{EXHAUSTED_ATTEMPTS} 'out of subnets' attempts on n4", step=0.2)
        lines = small.logs("n4")[log_start:].splitlines()
        errors = attempts()[:EXHAUSTED_ATTEMPTS]
        upto = lines[: lines.index(errors[-1]) + 1]
        gaps = klog_gaps(errors)
        figure("exhausted: gaps between attempts (s)", ", ".join(f"{g:.1f}" for g in gaps))
        figure(f"exhausted: log lines up to attempt {EXHAUSTED_ATTEMPTS}", len(upto))
        assert small.flanneld_pid("n4") is not None, "the fourth daemon exited"
        assert "widen Network" in errors[0] and "delete leases" in errors[0]
        assert_backs_off(gaps)  # Backoff(1 s, doubling): at least ~0.8, 1.6, 3.2 s
        assert len(upto) <= 10 * EXHAUSTED_ATTEMPTS, upto  # no spam between attempts

        freed = lease_key(small.node_lease("n3").subnet)
        small.kill_flanneld("n3", signal.SIGKILL)
        etcd_del(small, freed)
        freed_at = time.monotonic()
        # The next attempt comes within the 30 s backoff cap (+20 % jitter).
        wait_until(
            lambda: subnet_env_key(small, "n4") == freed,
            90.0,
            "n4 holds the freed subnet",
            step=0.2,
        )
        figure("exhausted: lease freed -> acquired by the waiting daemon (s)",
               f"{time.monotonic() - freed_at:.1f}")
        leases = etcd_leases(small)
        assert json.loads(leases[freed])["PublicIP"] == str(small.plan.node("n4").public_ip)
    finally:
        down(prefix)


def subnet_env_key(lab: Lab, node: str) -> str | None:
    match = re.search(r"FLANNEL_SUBNET=(\S+)", lab.subnet_env(node))
    if match is None:
        return None
    return lease_key(ipaddress.IPv4Interface(match.group(1)).network)
