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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.base import ExternalInterface
from backends.netlink import Netlink
from backends.wireguard import WireguardBackend, WireguardNetwork
from backends.wireguard_go import WireguardGo, find_binary, stop_recorded
from backends.wireguard_state import DEVICE, encode_backend_data, key_b64
from bench.fakes import FakeSubnetManager
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

    def userspace(self, binary: str | None = None) -> WireguardGo:
        return WireguardGo(DEVICE, self.state_dir, binary or find_binary(),
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
            stop_recorded(node.state_dir, DEVICE)
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
        userspace=lambda: a.userspace(find_binary("wireguard-go-not-installed")),
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
