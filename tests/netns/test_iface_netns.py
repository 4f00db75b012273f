"""discover() against a real kernel: links, addresses and routes set up with ``ip`` in a namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from backends.netlink import Netlink
from flanneld.flags import parse_flags
from flanneld.iface import discover
from subnet.errors import InterfaceError
from subnet.netconf import IPStack

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


# --- IPv6 ------------------------------------------------------------------------------------


@pytest.fixture
def ns6(ns: str) -> str:
    """ext0 also carries fd00:5::1 and the IPv6 default route; ext1 fd00:19::1 and a route to
    2001:db8:9::/48; dep0 only a link-local and a deprecated IPv6 address."""
    ip(ns, "addr", "add", "fd00:5::1/64", "dev", "ext0", "nodad")
    ip(ns, "addr", "add", "fd00:19::1/64", "dev", "ext1", "nodad")
    ip(ns, "addr", "add", "fd00:20::1/64", "dev", "dep0", "nodad", "preferred_lft", "0")
    ip(ns, "-6", "route", "add", "default", "via", "fd00:5::fe", "dev", "ext0")
    ip(ns, "-6", "route", "add", "2001:db8:9::/48", "via", "fd00:19::fe", "dev", "ext1")
    return ns


def run6(ns: str, stack: IPStack, *argv: str) -> tuple[str, str, str, str]:
    with Netlink(ns) as netlink:
        ext = discover(netlink, parse_flags(list(argv), {}), stack)
    return ext.name, str(ext.iface_addr), str(ext.iface_addr6), str(ext.ext_addr6)


def test_ipv6_default_route(ns6: str) -> None:
    assert run6(ns6, IPStack.DUAL) == ("ext0", "198.18.5.1", "fd00:5::1", "fd00:5::1")
    assert run6(ns6, IPStack.IPV6) == ("ext0", "None", "fd00:5::1", "fd00:5::1")


def test_iface_ipv6_address_regex_and_can_reach(ns6: str) -> None:
    assert run6(ns6, IPStack.DUAL, "--iface=fd00:19::1") == (
        "ext1", "198.19.0.1", "fd00:19::1", "fd00:19::1")
    assert run6(ns6, IPStack.IPV6, "--iface-regex=^fd00:19:") == (
        "ext1", "None", "fd00:19::1", "fd00:19::1")
    assert run6(ns6, IPStack.IPV6, "--iface-can-reach=2001:db8:9::1") == (
        "ext1", "None", "fd00:19::1", "fd00:19::1")
    assert run6(ns6, IPStack.DUAL, "--iface=ext0", "--public-ipv6=2001:db8::5") == (
        "ext0", "198.18.5.1", "fd00:5::1", "2001:db8::5")


def test_failed_ipv6_choice_names_every_address_considered(ns6: str) -> None:
    with pytest.raises(InterfaceError) as exc:
        run6(ns6, IPStack.DUAL, "--iface=dep0")
    text = str(exc.value)
    assert "failed to find IPv6 address for interface dep0" in text
    assert "fd00:20::1 (deprecated)" in text and "(link-local)" in text
    assert "ext0 [fd00:5::1, fe80::" in text and "ext1 [fd00:19::1, fe80::" in text
