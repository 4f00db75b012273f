"""External interface selection (pure) and its thin netlink wrapper."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from backends.base import InterfaceAddress, InterfaceInfo, RouteLookup
from flanneld.flags import parse_flags
from flanneld.iface import (
    RouteLookupFn,
    choose_address,
    discover,
    select_interface,
    usable_addresses,
)
from subnet.errors import ConfigError, DataplaneError, InterfaceError
from subnet.lease import IPAddress
from subnet.netconf import IPStack

V4 = ipaddress.IPv4Address


def addr(text: str, **kw: bool) -> InterfaceAddress:
    ip = ipaddress.ip_address(text)
    return InterfaceAddress(ip, 24 if ip.version == 4 else 64, **kw)


def link(name: str, index: int, *addrs: InterfaceAddress, mtu: int = 1500,
         up: bool = True) -> InterfaceInfo:
    return InterfaceInfo(name=name, index=index, mtu=mtu, up=up, addresses=addrs)


LO = link("lo", 1, addr("127.0.0.1"), addr("::1"), mtu=65536)
ETH0 = link("eth0", 2, addr("10.0.0.5"), addr("fd00::5"))
ETH1 = link("eth1", 3, addr("192.168.7.9"), addr("192.168.7.10"))
ENS = link("ens5", 4, addr("172.16.1.2"))
LINKS = (LO, ETH0, ETH1, ENS)


def routes(table: dict[str, list[RouteLookup]]) -> RouteLookupFn:
    def lookup(target: IPAddress) -> Sequence[RouteLookup]:
        return table.get(str(target), [])

    return lookup


# --- address choice --------------------------------------------------------------------


def test_address_order_global_permanent_nontemporary_first() -> None:
    info = link(
        "eth0", 2,
        addr("169.254.1.1"),
        addr("10.0.0.3", permanent=False),
        addr("10.0.0.2", temporary=True),
        addr("10.0.0.1"),
        addr("10.0.0.4", permanent=False, temporary=True),
    )
    order = [str(a.address) for a in usable_addresses(info, 4)]
    assert order == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "169.254.1.1"]


def test_address_choice_skips_deprecated_loopback_multicast_and_other_family() -> None:
    info = link("x", 9, addr("fd00::1"), addr("127.0.0.2"), addr("10.1.1.1", deprecated=True),
                addr("224.0.0.5"), addr("0.0.0.0"), addr("169.254.3.3"))
    assert choose_address(info, 4) == V4("169.254.3.3")


def test_address_choice_keeps_kernel_order_among_equals() -> None:
    assert choose_address(ETH1, 4) == V4("192.168.7.9")


def test_ipv6_address_choice_is_global_only() -> None:
    """Upstream would fall back to a link-local IPv6; no peer accepts one as an endpoint."""
    info = link("x", 9, addr("fe80::1"), addr("2001:db8::7", temporary=True),
                addr("2001:db8::1", deprecated=True), addr("2001:db8::2"))
    order = [str(a.address) for a in usable_addresses(info, 6)]
    assert order == ["2001:db8::2", "2001:db8::7"]
    assert choose_address(link("y", 9, addr("fe80::1"), addr("::1")), 6) is None


def test_private_ranges_count_as_global_unicast() -> None:
    info = link("x", 9, addr("169.254.0.9"), addr("192.168.0.9"))
    assert choose_address(info, 4) == V4("192.168.0.9")


def test_no_usable_address_is_none() -> None:
    assert choose_address(link("x", 9, addr("127.0.0.1")), 4) is None


# --- default path ------------------------------------------------------------------------


def test_default_route_interface() -> None:
    ext = select_interface(LINKS, default_ifindex=3)
    assert (ext.name, ext.index, ext.mtu) == ("eth1", 3, 1500)
    assert ext.iface_addr == V4("192.168.7.9")
    assert ext.ext_addr == ext.iface_addr
    assert ext.iface_addr6 is None and ext.ext_addr6 is None


def test_no_default_route_error_lists_interfaces() -> None:
    with pytest.raises(InterfaceError) as exc:
        select_interface(LINKS, default_ifindex=None)
    text = str(exc.value)
    assert "default route" in text and "--iface" in text
    assert "eth0" in text and "10.0.0.5" in text and "ens5" in text


def test_default_route_to_unknown_index() -> None:
    with pytest.raises(InterfaceError, match="index 42"):
        select_interface(LINKS, default_ifindex=42)


def test_public_ip_picks_its_owner_and_is_the_ext_addr() -> None:
    ext = select_interface(LINKS, public_ip="192.168.7.10", default_ifindex=2)
    assert ext.name == "eth1"
    assert ext.iface_addr == V4("192.168.7.10")  # the public IP itself, not the first address
    assert ext.ext_addr == V4("192.168.7.10")


def test_public_ip_not_local_is_upstreams_error_with_hint() -> None:
    with pytest.raises(InterfaceError) as exc:
        select_interface(LINKS, public_ip="203.0.113.1", default_ifindex=2)
    text = str(exc.value)
    assert text.startswith("no interface with given IP found")
    assert "203.0.113.1" in text and "--iface" in text and "eth0 [10.0.0.5]" in text


def test_public_ip_with_iface_is_only_advertised() -> None:
    ext = select_interface(LINKS, ifaces=["eth0"], public_ip="203.0.113.1")
    assert ext.name == "eth0"
    assert ext.iface_addr == V4("10.0.0.5")
    assert ext.ext_addr == V4("203.0.113.1")


def test_public_ipv6_is_passed_through() -> None:
    ext = select_interface(LINKS, default_ifindex=2, public_ipv6="2001:db8::99")
    assert ext.ext_addr6 == ipaddress.IPv6Address("2001:db8::99")
    assert ext.ext_addr == V4("10.0.0.5")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"public_ip": "not-an-ip"}, "--public-ip"),
        ({"public_ip": "2001:db8::1"}, "IPv4"),
        ({"public_ipv6": "10.0.0.1"}, "IPv6"),
        ({"iface_can_reach": "nowhere"}, "--iface-can-reach"),
        ({"iface_regexes": ["(unclosed"]}, "--iface-regex"),
    ],
)
def test_malformed_flag_values_are_config_errors(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        select_interface(LINKS, default_ifindex=2, **kwargs)


# --- --iface ---------------------------------------------------------------------------


def test_iface_by_name() -> None:
    ext = select_interface(LINKS, ifaces=["ens5"], default_ifindex=2)
    assert ext.name == "ens5" and ext.iface_addr == V4("172.16.1.2")


def test_iface_by_ip_uses_that_ip() -> None:
    ext = select_interface(LINKS, ifaces=["192.168.7.10"])
    assert ext.name == "eth1" and ext.iface_addr == V4("192.168.7.10")


def test_iface_by_ip_matches_any_address_even_loopback() -> None:
    assert select_interface(LINKS, ifaces=["127.0.0.1"]).name == "lo"


def test_iface_values_tried_in_order() -> None:
    ext = select_interface(LINKS, ifaces=["wlan0", "9.9.9.9", "eth1", "eth0"])
    assert ext.name == "eth1"


def test_iface_all_failing_lists_each_attempt_and_what_exists() -> None:
    with pytest.raises(InterfaceError) as exc:
        select_interface(LINKS, ifaces=["wlan0", "9.9.9.9", "fd00::5"], default_ifindex=2)
    text = str(exc.value)
    assert "--iface wlan0: no interface named 'wlan0'" in text
    assert "--iface 9.9.9.9: no interface with given IP found" in text
    assert "fd00::5 is an IPv6 address" in text
    assert "available: lo [127.0.0.1 (loopback)]; eth0 [10.0.0.5]" in text


def test_explicit_flags_never_fall_back_to_default_route() -> None:
    with pytest.raises(InterfaceError):
        select_interface(LINKS, ifaces=["wlan0"], default_ifindex=2)


def test_named_interface_without_ipv4() -> None:
    v6only = link("v6", 7, addr("2001:db8::1"))
    with pytest.raises(InterfaceError) as exc:
        select_interface((*LINKS, v6only), ifaces=["v6"])
    assert "failed to find IPv4 address for interface v6" in str(exc.value)
    assert "--iface v6" in str(exc.value)


def test_mtu_zero_is_an_error() -> None:
    broken = link("tun9", 8, addr("10.9.9.9"), mtu=0)
    with pytest.raises(InterfaceError, match="failed to determine MTU for interface tun9"):
        select_interface((*LINKS, broken), ifaces=["tun9"])


def test_down_interface_still_selected_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    down = link("eth9", 9, addr("10.9.0.1"), up=False)
    ext = select_interface((*LINKS, down), ifaces=["eth9"])
    assert ext.name == "eth9"
    assert "eth9 is down" in caplog.text


# --- --iface-regex -------------------------------------------------------------------------


def test_regex_matches_addresses_before_names() -> None:
    # "eth" would match eth0 by name, but the address pass comes first and finds ens5's IP
    ext = select_interface(LINKS, iface_regexes=[r"^172\.16\.|eth"])
    assert ext.name == "ens5" and ext.iface_addr == V4("172.16.1.2")


def test_regex_address_match_uses_the_matched_address() -> None:
    ext = select_interface(LINKS, iface_regexes=[r"\.10$"])
    assert ext.name == "eth1" and ext.iface_addr == V4("192.168.7.10")


def test_regex_name_match_is_a_search() -> None:
    ext = select_interface(LINKS, iface_regexes=["ns"])
    assert ext.name == "ens5"


def test_regex_does_not_match_unusable_addresses() -> None:
    # 127.0.0.1 is not usable for selection, so the regex falls through to names
    with pytest.raises(InterfaceError, match="matches no interface address or name"):
        select_interface(LINKS, iface_regexes=[r"^127\."])


def test_iface_tried_before_regex() -> None:
    ext = select_interface(LINKS, ifaces=["nope", "eth0"], iface_regexes=["ens"])
    assert ext.name == "eth0"
    ext = select_interface(LINKS, ifaces=["nope"], iface_regexes=["xyz", "ens"])
    assert ext.name == "ens5"


# --- --iface-can-reach ----------------------------------------------------------------------


def test_can_reach_uses_route_interface_and_source() -> None:
    lookup = routes({"8.8.8.8": [RouteLookup(3, V4("192.168.7.1"), V4("192.168.7.10"))]})
    ext = select_interface(LINKS, iface_can_reach="8.8.8.8", route_lookup=lookup)
    assert ext.name == "eth1" and ext.iface_addr == V4("192.168.7.10")


def test_can_reach_without_source_chooses_the_address() -> None:
    lookup = routes({"8.8.8.8": [RouteLookup(2, None, None)]})
    ext = select_interface(LINKS, iface_can_reach="8.8.8.8", route_lookup=lookup)
    assert ext.name == "eth0" and ext.iface_addr == V4("10.0.0.5")


def test_can_reach_is_tried_last() -> None:
    lookup = routes({"8.8.8.8": [RouteLookup(3, None, None)]})
    ext = select_interface(LINKS, ifaces=["eth0"], iface_can_reach="8.8.8.8",
                           route_lookup=lookup)
    assert ext.name == "eth0"


def test_can_reach_failures_are_explained() -> None:
    def failing(target: IPAddress) -> Sequence[RouteLookup]:
        raise DataplaneError("Network is unreachable")

    with pytest.raises(InterfaceError, match="route lookup failed: Network is unreachable"):
        select_interface(LINKS, iface_can_reach="8.8.8.8", route_lookup=failing)
    with pytest.raises(InterfaceError, match="no route to 8.8.8.8"):
        select_interface(LINKS, iface_can_reach="8.8.8.8")


# --- discover() -----------------------------------------------------------------------------


class FakeNetlink:
    def __init__(self, links: Sequence[InterfaceInfo], default: int | None,
                 table: dict[str, list[RouteLookup]]) -> None:
        self.links = links
        self.default = default
        self.table = table
        self.families: list[int] = []

    def interfaces(self) -> Sequence[InterfaceInfo]:
        return self.links

    def default_route_ifindex(self, family: int) -> int | None:
        self.families.append(family)
        return self.default

    def route_get(self, addr: IPAddress) -> list[RouteLookup]:
        return self.table.get(str(addr), [])


def test_discover_default_route_with_cli_flags() -> None:
    netlink = FakeNetlink(LINKS, 4, {})
    ext = discover(netlink, parse_flags([], {}))
    assert ext.name == "ens5"
    assert netlink.families == [socket.AF_INET]


def test_discover_passes_flags_and_route_lookup() -> None:
    netlink = FakeNetlink(LINKS, 4, {"1.1.1.1": [RouteLookup(2, None, V4("10.0.0.5"))]})
    flags = parse_flags(["--iface=nope", "--iface-can-reach=1.1.1.1",
                         "--public-ip=198.51.100.7"], {})
    ext = discover(netlink, flags)
    assert ext.name == "eth0"
    assert ext.ext_addr == V4("198.51.100.7")


def test_error_listing_is_capped_on_busy_nodes() -> None:
    many = tuple(link(f"veth{i}", 100 + i) for i in range(40))
    with pytest.raises(InterfaceError) as exc:
        select_interface((*LINKS, *many), ifaces=["wlan0"])
    text = str(exc.value)
    assert "veth11" in text and "veth12" not in text
    assert "... and 28 more" in text


def test_can_reach_takes_the_first_route() -> None:
    lookup = routes({"8.8.8.8": [RouteLookup(4, None, None), RouteLookup(2, None, None)]})
    assert select_interface(LINKS, iface_can_reach="8.8.8.8", route_lookup=lookup).name == "ens5"


# --- IPv6 address choice (dual-stack and IPv6-only) ------------------------------------

V6 = ipaddress.IPv6Address
ETH2 = link("eth2", 5, addr("fe80::2"), addr("fd00::2", deprecated=True), addr("2001:db8::2"))


def test_ipv4_stack_leaves_ipv6_alone() -> None:
    ext = select_interface(LINKS, ifaces=["eth0"])
    assert (ext.iface_addr6, ext.ext_addr6) == (None, None)


def test_dual_stack_takes_both_addresses_of_the_chosen_interface() -> None:
    ext = select_interface(LINKS, ifaces=["eth0"], stack=IPStack.DUAL)
    assert (ext.name, ext.iface_addr, ext.ext_addr) == ("eth0", V4("10.0.0.5"), V4("10.0.0.5"))
    assert (ext.iface_addr6, ext.ext_addr6) == (V6("fd00::5"), V6("fd00::5"))


def test_ipv6_address_choice_is_global_first_and_skips_deprecated() -> None:
    eth2 = link("eth2", 5, addr("10.5.5.5"), *ETH2.addresses)
    ext = select_interface((*LINKS, eth2), ifaces=["eth2"], stack=IPStack.DUAL)
    assert ext.iface_addr6 == V6("2001:db8::2")


def test_public_ipv6_is_advertised_in_place_of_the_interface_address() -> None:
    ext = select_interface(LINKS, ifaces=["eth0"], public_ipv6="2001:db8::99",
                           stack=IPStack.DUAL)
    assert (ext.iface_addr6, ext.ext_addr6) == (V6("fd00::5"), V6("2001:db8::99"))


def test_no_ipv6_address_lists_every_interface_and_its_ipv6_addresses() -> None:
    with pytest.raises(InterfaceError) as exc:
        select_interface(LINKS, ifaces=["ens5"], stack=IPStack.DUAL)
    text = str(exc.value)
    assert "failed to find IPv6 address for interface ens5 (chosen by --iface ens5)" in text
    assert "eth0 [fd00::5]" in text and "ens5 [no IPv6]" in text and "lo [::1 (loopback)]" in text


def test_ipv6_only_needs_no_ipv4_address() -> None:
    v6_only = link("v6", 6, addr("fd00::66"))
    ext = select_interface((*LINKS, v6_only), ifaces=["v6"], stack=IPStack.IPV6)
    assert (ext.iface_addr, ext.ext_addr) == (None, None)
    assert (ext.iface_addr6, ext.ext_addr6) == (V6("fd00::66"), V6("fd00::66"))


def test_ipv6_only_default_route_is_the_ipv6_one() -> None:
    ext = select_interface(LINKS, default_ifindex=4, default_ifindex6=2, stack=IPStack.IPV6)
    assert ext.name == "eth0" and ext.iface_addr6 == V6("fd00::5")
    with pytest.raises(InterfaceError, match="no IPv6 default route"):
        select_interface(LINKS, default_ifindex=2, stack=IPStack.IPV6)


def test_dual_stack_default_routes_must_share_the_interface() -> None:
    ext = select_interface(LINKS, default_ifindex=2, default_ifindex6=2, stack=IPStack.DUAL)
    assert (ext.iface_addr, ext.iface_addr6) == (V4("10.0.0.5"), V6("fd00::5"))
    with pytest.raises(InterfaceError, match="same interface"):
        select_interface(LINKS, default_ifindex=4, default_ifindex6=2, stack=IPStack.DUAL)
    with pytest.raises(InterfaceError, match="no IPv6 default route"):
        select_interface(LINKS, default_ifindex=2, stack=IPStack.DUAL)


def test_ipv6_only_public_ipv6_picks_its_owner() -> None:
    ext = select_interface(LINKS, public_ipv6="fd00::5", stack=IPStack.IPV6)
    assert ext.name == "eth0" and ext.ext_addr6 == V6("fd00::5")


def test_discover_asks_for_the_ipv6_default_route_for_an_ipv6_stack() -> None:
    netlink = FakeNetlink(LINKS, 2, {})
    ext = discover(netlink, parse_flags([], {}), IPStack.DUAL)
    assert ext.iface_addr6 == V6("fd00::5")
    assert netlink.families == [socket.AF_INET, socket.AF_INET6]


# --- IPv6 through --iface, --iface-regex, --iface-can-reach, --public-ipv6 ----------------

DUAL0 = link("dual0", 7, addr("fe80::7"), addr("198.18.0.11"), addr("fd00:198:18::11"),
             addr("fd00:198:18::99", deprecated=True))
V6LINKS = (*LINKS, DUAL0)


def test_iface_given_an_ipv6_address() -> None:
    ext = select_interface(V6LINKS, ifaces=["fd00:198:18::11"], stack=IPStack.DUAL)
    assert (ext.name, ext.iface_addr, ext.iface_addr6) == (
        "dual0", V4("198.18.0.11"), V6("fd00:198:18::11"))
    only6 = select_interface(V6LINKS, ifaces=["fd00::5"], stack=IPStack.IPV6)
    assert (only6.name, only6.iface_addr, only6.ext_addr6) == ("eth0", None, V6("fd00::5"))
    with pytest.raises(InterfaceError, match="is an IPv4 address; an IPv6-only stack"):
        select_interface(V6LINKS, ifaces=["198.18.0.11"], stack=IPStack.IPV6)


def test_iface_regex_matches_ipv6_addresses_and_in_dual_stack_both_families() -> None:
    only6 = select_interface(V6LINKS, iface_regexes=["^fd00:198:"], stack=IPStack.IPV6)
    assert (only6.name, only6.iface_addr6) == ("dual0", V6("fd00:198:18::11"))  # not deprecated
    dual = select_interface(V6LINKS, iface_regexes=[r"^198\.18\.|^fd00:198:"],
                            stack=IPStack.DUAL)
    assert (dual.name, dual.iface_addr, dual.iface_addr6) == (
        "dual0", V4("198.18.0.11"), V6("fd00:198:18::11"))
    with pytest.raises(InterfaceError) as exc:  # matches IPv4 only: upstream wants both
        select_interface(V6LINKS, iface_regexes=[r"^198\.18\."], stack=IPStack.DUAL)
    text = str(exc.value)
    assert "no interface with both an IPv4 and an IPv6 address" in text
    assert "IPv6 available:" in text and "fe80::7 (link-local)" in text
    assert "fd00:198:18::99 (deprecated)" in text
    by_name = select_interface(V6LINKS, iface_regexes=["^dual"], stack=IPStack.DUAL)
    assert by_name.iface_addr6 == V6("fd00:198:18::11")


def test_iface_can_reach_an_ipv6_target_takes_the_route_source() -> None:
    table = {"2001:db8:9::1": [RouteLookup(7, V6("fd00:198:18::1"), V6("fd00:198:18::11"))]}
    ext = select_interface(V6LINKS, iface_can_reach="2001:db8:9::1", route_lookup=routes(table),
                           stack=IPStack.IPV6)
    assert (ext.name, ext.iface_addr6) == ("dual0", V6("fd00:198:18::11"))
    dual = select_interface(V6LINKS, iface_can_reach="2001:db8:9::1",
                            route_lookup=routes(table), stack=IPStack.DUAL)
    assert (dual.iface_addr, dual.iface_addr6) == (V4("198.18.0.11"), V6("fd00:198:18::11"))


def test_only_link_local_ipv6_names_every_address_considered() -> None:
    ll = link("ll0", 8, addr("10.8.8.8"), addr("fe80::8"), addr("fd00::8", deprecated=True))
    with pytest.raises(InterfaceError) as exc:
        select_interface((*LINKS, ll), ifaces=["ll0"], stack=IPStack.DUAL)
    text = str(exc.value)
    assert "failed to find IPv6 address for interface ll0" in text
    assert "ll0 [fe80::8 (link-local), fd00::8 (deprecated)]" in text
    assert "eth0 [fd00::5]" in text and "ens5 [no IPv6]" in text


@pytest.mark.parametrize(
    ("value", "reason"),
    [("fe80::1", "link-local"), ("::ffff:10.0.0.1", "IPv4-mapped"), ("::1", "loopback"),
     ("ff02::1", "multicast"), ("::", "unspecified")],
)
def test_public_ipv6_must_be_reachable_by_peers(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid --public-ipv6: .*{reason}"):
        select_interface(V6LINKS, ifaces=["dual0"], public_ipv6=value, stack=IPStack.DUAL)


def test_dual_stack_public_ipv6_of_another_interface_is_refused() -> None:
    with pytest.raises(InterfaceError, match="v6 interface eth0 must be the same with v4 "
                                             "interface dual0"):
        select_interface(V6LINKS, ifaces=["198.18.0.11"], public_ipv6="fd00::5",
                         stack=IPStack.DUAL)
    nat = select_interface(V6LINKS, ifaces=["198.18.0.11"], public_ipv6="2001:db8::77",
                           stack=IPStack.DUAL)
    assert (nat.iface_addr6, nat.ext_addr6) == (V6("fd00:198:18::11"), V6("2001:db8::77"))
