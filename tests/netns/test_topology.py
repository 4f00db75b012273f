"""flanneld/lab/topology.py: the lab plumbing, in throw-away namespaces."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator

import pytest

from flanneld.lab import topology
from subnet.errors import DataplaneError

pytestmark = pytest.mark.netns


@pytest.fixture
def names(run_prefix: str) -> Iterator[list[str]]:
    """Namespace names for one test (created by the test itself); all removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    made = [f"{run_prefix}-t{i}" for i in range(3)]
    yield made
    for name in made:
        topology.delete_netns(name)


def _run(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        topology.netns_argv(name, list(argv)),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_two_namespaces_on_a_bridge_can_ping(names: list[str]) -> None:
    hub, left, right = names
    for name in names:
        topology.create_netns(name)
    assert set(names) <= set(topology.list_netns())
    topology.add_bridge(hub, "br0")
    for name, addr in ((left, "192.0.2.1/24"), (right, "192.0.2.2/24")):
        port = "p-" + name[-2:]
        topology.bridge_port(hub, "br0", port, name, "eth0", ipaddress.IPv4Interface(addr), 1400)
        topology.add_address(name, "eth0", ipaddress.IPv4Interface(addr))  # idempotent
    assert topology.ipv4_addresses(left, "eth0") == [ipaddress.IPv4Interface("192.0.2.1/24")]
    assert topology.ipv4_addresses(left, "nope") == []
    mac = topology.link_address(left, "eth0")
    assert mac is not None and len(mac.split(":")) == 6
    assert topology.link_address(left, "nope") is None
    done = _run(left, "ping", "-c", "1", "-W", "2", "192.0.2.2")
    assert done.returncode == 0, done.stdout + done.stderr
    # Nothing leaked into the root namespace.
    assert "192.0.2.1" not in subprocess.run(
        ["ip", "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout


def test_a_veth_link_with_a_default_route_and_an_mtu(names: list[str]) -> None:
    host, pod = names[0], names[1]
    for name in (host, pod):
        topology.create_netns(name)
    gateway = ipaddress.IPv4Interface("192.0.2.1/24")
    topology.veth_link(host, "cni0", gateway, pod, "eth0", ipaddress.IPv4Interface("192.0.2.2/24"))
    topology.add_default_route(pod, gateway.ip)
    topology.set_mtu(pod, "eth0", 1280)
    routes = _run(pod, "ip", "-4", "route", "show", "default").stdout
    assert f"default via {gateway.ip} dev eth0" in routes
    assert "mtu 1280" in _run(pod, "ip", "link", "show", "eth0").stdout
    assert topology.link_index(pod, "eth0") > 1  # lo is 1
    with pytest.raises(DataplaneError, match="no interface nope"):
        topology.link_index(pod, "nope")
    done = _run(pod, "ping", "-c", "1", "-W", "2", "192.0.2.1")
    assert done.returncode == 0, done.stdout + done.stderr


def _root_ip_forward() -> str:
    with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as fh:
        return fh.read().strip()


def test_sysctls_are_per_namespace(names: list[str]) -> None:
    name = names[0]
    topology.create_netns(name)
    root = _root_ip_forward()
    want = "0" if root == "1" else "1"
    topology.write_sysctl(name, "net.ipv4.ip_forward", want)
    assert topology.read_sysctl(name, "net.ipv4.ip_forward") == want
    assert _root_ip_forward() == root
    seen = _run(name, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    assert seen == want


def test_enter_netns_moves_a_child_and_run_in_netns_a_thread(names: list[str]) -> None:
    name = names[0]
    topology.create_netns(name)
    mine = os.stat("/proc/self/ns/net").st_ino
    theirs = os.stat(topology.netns_path(name)).st_ino
    child = subprocess.run(
        ["stat", "-L", "-c", "%i", "/proc/self/ns/net"],
        preexec_fn=topology.enter_netns(name),
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(child.stdout) == theirs
    assert topology.run_in_netns(name, lambda: os.stat("/proc/thread-self/ns/net").st_ino) == theirs
    assert os.stat("/proc/self/ns/net").st_ino == mine

    def boom() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError):
        topology.run_in_netns(name, boom)


def test_missing_namespaces_raise_instead_of_being_created(names: list[str]) -> None:
    ghost = names[1]
    with pytest.raises(DataplaneError):
        topology.add_bridge(ghost, "br0")
    with pytest.raises(FileNotFoundError):
        topology.run_in_netns(ghost, lambda: None)
    assert ghost not in topology.list_netns()
    assert topology.delete_netns(ghost) is False
    topology.create_netns(ghost)
    with pytest.raises(DataplaneError):
        topology.create_netns(ghost)
    assert topology.delete_netns(ghost) is True
    assert ghost not in topology.list_netns()
