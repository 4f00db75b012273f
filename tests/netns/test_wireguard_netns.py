"""The wireguard backend in real namespaces: two nodes on a veth underlay, wireguard-go driver.

Node ``a`` (198.18.0.1) owns 10.244.1.0/24, node ``b`` (198.18.0.2)
10.244.2.0/24; each has its subnet's .1 on ``lo`` as a stand-in pod.  Each
node's wireguard-go runs inside its namespace with a socket directory of its
own (the machine's kernel has no wireguard module; ``Driver: auto`` finds
that out).  Every wireguard-go is ended by its recorded PID afterwards.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from backends.base import ExternalInterface
from backends.netlink import Netlink
from backends.wireguard import WireguardBackend, WireguardNetwork
from backends.wireguard_go import WireguardGo, find_binary, stop_recorded
from backends.wireguard_state import DEVICE, DEVICE_V6, encode_backend_data, key_b64
from bench.fakes import FakeSubnetManager
from flanneld.lab import topology
from subnet.errors import ConfigError, DataplaneError
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import BackendConfig, NetConfig
from tests.underlay import ip_json, sh, veth_hosts
from tests.waiting import wait_until

pytestmark = pytest.mark.netns

CLUSTER = ipaddress.IPv4Network("10.244.0.0/16")
DEADLINE = 30.0


def config(**options: object) -> NetConfig:
    return NetConfig(network=CLUSTER, subnet_len=24,
                     backend=BackendConfig("wireguard", {"Type": "wireguard", **options}))


@dataclass
class Node:
    ns: str
    third: int
    netlink: Netlink
    ext: ExternalInterface
    state_dir: str
    backend: WireguardBackend | None = None
    networks: list[WireguardNetwork] = field(default_factory=list)

    @property
    def key_file(self) -> str:
        return os.path.join(self.state_dir, "wgkey")

    def userspace(self, name: str = DEVICE, binary: str | None = None) -> WireguardGo:
        return WireguardGo(name, self.state_dir, binary or find_binary(),
                           netns=f"/var/run/netns/{self.ns}")

    def register(self, cfg: NetConfig | None = None) -> WireguardNetwork:
        cfg = cfg or config()
        self.backend = WireguardBackend(self.ext, self.netlink, cfg.backend, self.key_file,
                                        userspace=self.userspace)
        network = self.backend.register_network(
            FakeSubnetManager(cfg, f"10.244.{self.third}.0/24"), cfg)
        self.networks.append(network)
        return network

    def lease(self, public_key: bytes | None = None, port: int = 51820) -> Lease:
        assert self.ext.ext_addr is not None and self.backend is not None
        return Lease(
            ipaddress.IPv4Network(f"10.244.{self.third}.0/24"),
            None,
            LeaseAttrs(
                public_ip=self.ext.ext_addr, backend_type="wireguard",
                backend_data=encode_backend_data(public_key or self.backend.public_key, port),
            ),
        )


@pytest.fixture
def pair(netns_factory: Callable[[str], str], tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    nodes = [
        Node(ns, third, Netlink(ns), ext, str(tmp_path / f"node{third}"))
        for ns, third, ext in veth_hosts(netns_factory, "wg")
    ]
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            for network in node.networks:
                network.close()
            for device in (DEVICE, DEVICE_V6):
                stop_recorded(node.state_dir, device)
            node.netlink.close()


def pings(ns: str, src: str, dst: str) -> bool:
    done = sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-I", src, dst,
              check=False)
    return done.returncode == 0


def up_pair(pair: tuple[Node, Node]) -> tuple[WireguardNetwork, WireguardNetwork]:
    a, b = pair
    net_a, net_b = a.register(), b.register()
    net_a.reconcile([b.lease()])
    net_b.reconcile([a.lease()])
    return net_a, net_b


def test_device_lease_route_and_traffic(pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture,
                                        ) -> None:
    caplog.set_level("INFO")
    a, b = pair
    net_a, _ = up_pair(pair)
    assert "no wireguard module" in caplog.text and net_a.driver.name == "userspace"
    assert net_a.lease.attrs.backend_data == (
        f'{{"PublicKey":"{key_b64(a.backend.public_key)}","Port":51820}}')  # type: ignore[union-attr]
    assert net_a.mtu == 1420
    link = ip_json(a.ns, "-d", "link", "show", DEVICE)[0]
    assert link["mtu"] == 1420 and "UP" in link["flags"]
    addrs = ip_json(a.ns, "addr", "show", DEVICE)[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in addrs if x["family"] == "inet"] == [
        ("10.244.1.0", 32)]
    routes = ip_json(a.ns, "route", "show", "proto", "44")
    assert [(r["dst"], r["dev"]) for r in routes] == [("10.244.0.0/16", DEVICE)]
    device = net_a.driver.read()
    assert list(device.peers) == [b.backend.public_key]  # type: ignore[union-attr]
    peer = device.peers[b.backend.public_key]  # type: ignore[union-attr]
    assert peer.endpoint == (ipaddress.ip_address("198.18.0.2"), 51820)
    assert peer.allowed_ips == {ipaddress.ip_network("10.244.2.0/24")}
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b through flannel-wg")
    assert pings(b.ns, "10.244.2.1", "10.244.1.1")
    again = net_a.reconcile([b.lease()])
    assert (again.added, again.removed, again.failed) == (0, 0, ())
    # the key file: created 0400, never in the log
    assert os.stat(a.key_file).st_mode & 0o777 == 0o400
    with open(a.key_file, encoding="ascii") as fh:
        assert fh.read() not in caplog.text


def test_removed_lease_and_rotated_key(pair: tuple[Node, Node]) -> None:
    _, b = pair
    net_a, _ = up_pair(pair)
    rotated = bytes([42]) * 32
    report = net_a.reconcile([b.lease(rotated)])
    assert (report.added, report.removed) == (1, 1)
    assert list(net_a.driver.read().peers) == [rotated]  # replaced, not duplicated
    report = net_a.reconcile([])
    assert report.removed == 1 and dict(net_a.driver.read().peers) == {}


def test_bad_peers_are_skipped_and_the_good_one_works(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = up_pair(pair)
    assert a.backend is not None
    own_key = Lease(ipaddress.IPv4Network("10.244.3.0/24"), None, LeaseAttrs(
        public_ip=ipaddress.IPv4Address("198.18.0.3"), backend_type="wireguard",
        backend_data=encode_backend_data(a.backend.public_key, 51820)))
    bad_port = Lease(ipaddress.IPv4Network("10.244.4.0/24"), None, LeaseAttrs(
        public_ip=ipaddress.IPv4Address("198.18.0.4"), backend_type="wireguard",
        backend_data='{"PublicKey":"' + key_b64(bytes(32)) + '","Port":70000}'))
    report = net_a.reconcile([own_key, bad_port, b.lease()])
    assert {s.key for s in report.skipped} == {"10.244.3.0-24", "10.244.4.0-24"}
    assert report.peers == 1
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b")


def test_killed_wireguard_go_is_restarted_and_reprogrammed(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = up_pair(pair)
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b")
    driver = net_a.driver
    assert isinstance(driver, WireguardGo) and driver.pid is not None
    old_pid = driver.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: a.netlink.link(DEVICE) is None, DEADLINE, "the TUN goes with wireguard-go")
    report = net_a.reconcile([b.lease()])
    assert report.device_recreated and report.added == 2  # the peer and the route
    assert driver.pid not in (None, old_pid)
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b again")


def test_restart_adopts_the_running_wireguard_go_with_the_same_key(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    net_a, _ = up_pair(pair)
    assert a.backend is not None
    first_key, driver = a.backend.public_key, net_a.driver
    assert isinstance(driver, WireguardGo)
    pid = driver.pid
    net_a.close()  # flanneld stops: wireguard-go and the device stay
    again = a.register()  # a new flanneld with the same key file
    assert a.backend.public_key == first_key
    assert isinstance(again.driver, WireguardGo) and again.driver.pid == pid
    assert b.backend is not None  # start-up left the peers alone until the first snapshot
    assert list(again.driver.read().peers) == [b.backend.public_key]
    report = again.reconcile([b.lease()])
    assert (report.added, report.removed, report.device_recreated) == (0, 0, False)
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b")


def test_missing_wireguard_go_stops_start_up_with_the_fix(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    backend = WireguardBackend(
        a.ext, a.netlink, config().backend, a.key_file,
        userspace=lambda name: a.userspace(name, find_binary("wireguard-go-not-installed")),
    )
    with pytest.raises(ConfigError, match="apt-get install --no-install-recommends wireguard-go"):
        backend.register_network(FakeSubnetManager(config(), "10.244.1.0/24"), config())


def test_kernel_driver(pair: tuple[Node, Node]) -> None:
    """Runs where the kernel has the wireguard module; says plainly that it was skipped elsewhere."""
    a, b = pair
    try:
        a.netlink.ensure_wireguard(DEVICE)
    except DataplaneError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOENT):
            pytest.skip(f"kernel driver not tested: this kernel has no wireguard module "
                        f"(link add type wireguard: errno {err.errno})")
        raise
    cfg = config(Driver="kernel")
    net_a, net_b = a.register(cfg), b.register(cfg)
    assert net_a.driver.name == "kernel"
    net_a.reconcile([b.lease()])
    net_b.reconcile([a.lease()])
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b")
    a.netlink.delete_link(ip_json(a.ns, "link", "show", DEVICE)[0]["ifindex"])
    report = net_a.reconcile([b.lease()])
    assert report.device_recreated
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b again")


# --- IPv6: dual stack and IPv6-only -------------------------------------------------------------

CLUSTER6 = ipaddress.IPv6Network("fd00:10:244::/56")


def config6(stack: str = "dual", **options: object) -> NetConfig:
    return NetConfig(
        network=CLUSTER if stack == "dual" else None, enable_ipv4=stack == "dual",
        ipv6_network=CLUSTER6, enable_ipv6=True, subnet_len=24, ipv6_subnet_len=64,
        backend=BackendConfig("wireguard", {"Type": "wireguard", **options}))


def add_ipv6(node: Node, stack: str = "dual") -> None:
    """An IPv6 underlay address on ul0 and a stand-in IPv6 pod on lo."""
    addr = ipaddress.IPv6Address(f"fd00:198:18::{node.third}")
    topology.add_address(node.ns, "ul0", ipaddress.IPv6Interface(f"{addr}/64"))
    topology.add_address(node.ns, "lo", ipaddress.IPv6Interface(f"{pod6(node)}/128"))
    v4 = node.ext.iface_addr if stack == "dual" else None
    node.ext = replace(node.ext, iface_addr=v4, ext_addr=v4, iface_addr6=addr, ext_addr6=addr)


def pod6(node: Node) -> str:
    return f"fd00:10:244:{node.third}::1"


def register6(node: Node, cfg: NetConfig) -> WireguardNetwork:
    node.backend = WireguardBackend(node.ext, node.netlink, cfg.backend, node.key_file,
                                    userspace=node.userspace)
    v4 = f"10.244.{node.third}.0/24" if cfg.enable_ipv4 else None
    network = node.backend.register_network(
        FakeSubnetManager(cfg, v4, f"fd00:10:244:{node.third}::/64"), cfg)
    node.networks.append(network)
    return network


def up6(pair: tuple[Node, Node], cfg: NetConfig, stack: str = "dual",
        ) -> tuple[WireguardNetwork, WireguardNetwork]:
    a, b = pair
    for node in pair:
        add_ipv6(node, stack)
    net_a, net_b = register6(a, cfg), register6(b, cfg)
    net_a.reconcile([net_b.lease])
    net_b.reconcile([net_a.lease])
    return net_a, net_b


def test_dual_stack_separate_devices_carry_each_family(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, net_b = up6(pair, config6())
    assert set(net_a.drivers) == {DEVICE, DEVICE_V6}
    key = key_b64(a.backend.public_key)  # type: ignore[union-attr]
    assert net_a.lease.attrs.backend_v6_data == f'{{"PublicKey":"{key}","Port":51821}}'
    addrs = ip_json(a.ns, "addr", "show", DEVICE_V6)[0]["addr_info"]
    assert ("fd00:10:244:1::", 128) in [(x["local"], x["prefixlen"]) for x in addrs]
    routes6 = ip_json(a.ns, "-6", "route", "show", "proto", "44")
    assert [(r["dst"], r["dev"]) for r in routes6] == [("fd00:10:244::/56", DEVICE_V6)]
    v6_peers = net_a.drivers[DEVICE_V6].read()
    assert v6_peers.listen_port == 51821
    peer = v6_peers.peers[b.backend.public_key]  # type: ignore[union-attr]
    assert peer.endpoint == (ipaddress.ip_address("fd00:198:18::2"), 51821)
    assert peer.allowed_ips == {ipaddress.ip_network("fd00:10:244:2::/64")}
    wait_until(lambda: pings(a.ns, pod6(a), pod6(b)), DEADLINE, "a pings b over flannel-wg-v6")
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "a pings b over IPv4")
    again = net_a.reconcile([net_b.lease])
    assert (again.added, again.removed, again.failed, again.peers) == (0, 0, (), 1)
    # repair: the IPv6 route deleted by hand, then flannel-wg-v6's wireguard-go killed
    sh("ip", "-n", a.ns, "-6", "route", "del", "fd00:10:244::/56", "dev", DEVICE_V6)
    assert net_a.reconcile([net_b.lease]).added == 1
    driver = net_a.drivers[DEVICE_V6]
    assert isinstance(driver, WireguardGo) and driver.pid is not None
    os.kill(driver.pid, signal.SIGKILL)
    wait_until(lambda: a.netlink.link(DEVICE_V6) is None, DEADLINE, "flannel-wg-v6 goes")
    report = net_a.reconcile([net_b.lease])
    assert report.device_recreated and report.added == 2  # the v6 peer and the v6 route
    wait_until(lambda: pings(a.ns, pod6(a), pod6(b)), DEADLINE, "a pings b over IPv6 again")


def test_bad_v6_data_is_skipped_for_ipv6_only(pair: tuple[Node, Node],
                                              caplog: pytest.LogCaptureFixture) -> None:
    a, _ = pair
    net_a, net_b = up6(pair, config6())
    bad = Lease(net_b.lease.subnet, net_b.lease.ipv6_subnet,
                replace(net_b.lease.attrs, backend_v6_data='{"PublicKey":"short","Port":51821}'))
    for _ in range(2):
        report = net_a.reconcile([bad])
    assert [s.key for s in report.skipped] == [bad.key] and report.peers == 1
    assert caplog.text.count("BackendV6Data: PublicKey is not a WireGuard key") == 1  # once
    assert dict(net_a.drivers[DEVICE_V6].read().peers) == {}
    wait_until(lambda: pings(a.ns, "10.244.1.1", "10.244.2.1"), DEADLINE, "IPv4 still works")


def test_ipv6_only_auto_mode_one_device(pair: tuple[Node, Node]) -> None:
    a, b = pair
    net_a, _ = up6(pair, config6("ipv6", Mode="auto"), "ipv6")
    assert set(net_a.drivers) == {DEVICE}
    assert net_a.lease.subnet is None and net_a.lease.attrs.backend_data is None
    peer = net_a.driver.read().peers[b.backend.public_key]  # type: ignore[union-attr]
    assert peer.endpoint == (ipaddress.ip_address("fd00:198:18::2"), 51820)
    wait_until(lambda: pings(a.ns, pod6(a), pod6(b)), DEADLINE, "a pings b over flannel-wg")
