"""discover() against a real kernel: links, addresses and routes set up with ``ip`` in a namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from backends.netlink import Netlink
from flanneld.flags import parse_flags
from flanneld.iface import discover

pytestmark = pytest.mark.netns



def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


@pytest.fixture
def ns(netns_factory: Callable[[str], str]) -> str:
    """ext0: default route, two addresses; ext1: a route to 203.0.113.0/24;
    dep0: a deprecated address before a good one."""
    name = netns_factory("iface")
    ip(name, "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p")
    ip(name, "link", "add", "ext1", "type", "veth", "peer", "name", "ext1p")
    ip(name, "link", "add", "dep0", "type", "veth", "peer", "name", "dep0p")
    for dev in ("ext0", "ext0p", "ext1", "ext1p", "dep0", "dep0p"):
        ip(name, "link", "set", dev, "up")
    ip(name, "addr", "add", "198.18.5.1/24", "dev", "ext0")
    ip(name, "addr", "add", "198.18.5.9/24", "dev", "ext0")
    ip(name, "addr", "add", "198.19.0.1/24", "dev", "ext1")
    ip(name, "addr", "add", "198.20.0.1/24", "dev", "dep0", "preferred_lft", "0")
    ip(name, "addr", "add", "198.20.0.2/24", "dev", "dep0")
    ip(name, "route", "add", "default", "via", "198.18.5.254", "dev", "ext0")
    ip(name, "route", "add", "203.0.113.0/24", "via", "198.19.0.254", "dev", "ext1")
    return name


def run(ns: str, *argv: str) -> tuple[str, str, str]:
    with Netlink(ns) as netlink:
        ext = discover(netlink, parse_flags(list(argv), {}))
    return ext.name, str(ext.iface_addr), str(ext.ext_addr)


def test_default_route_interface(ns: str) -> None:
    assert run(ns) == ("ext0", "198.18.5.1", "198.18.5.1")


def test_public_ip_owner(ns: str) -> None:
    assert run(ns, "--public-ip=198.18.5.9") == ("ext0", "198.18.5.9", "198.18.5.9")


def test_iface_can_reach_uses_route_and_source(ns: str) -> None:
    assert run(ns, "--iface-can-reach=203.0.113.5") == ("ext1", "198.19.0.1", "198.19.0.1")


def test_iface_regex_on_address(ns: str) -> None:
    assert run(ns, r"--iface-regex=^198\.19\.") == ("ext1", "198.19.0.1", "198.19.0.1")


def test_deprecated_address_is_skipped(ns: str) -> None:
    assert run(ns, "--iface=dep0", "--public-ip=203.0.113.77") == (
        "dep0", "198.20.0.2", "203.0.113.77")
