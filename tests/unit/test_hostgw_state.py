"""The host-gw backend's pure parts: NAT refusal, lease attrs, peers, desired routes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.base import ExternalInterface
from backends.hostgw_state import (
    BACKEND_TYPE,
    NAT_MESSAGE,
    HostGwPeer,
    check_no_nat,
    desired_state,
    hostgw_peers,
    lease_attrs,
)
from backends.model import DataplaneState, Route
from backends.plan import apply_to, plan
from subnet.errors import ConfigError
from subnet.lease import Lease, LeaseAttrs, encode_attrs

V4 = ipaddress.IPv4Network("10.244.0.0/16")
V6 = ipaddress.IPv6Network("fd00:42::/56")
EXT = 3


def ip4(s: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(s)


def lease(third: int, backend: str = "host-gw", v6: bool = False) -> Lease:
    return Lease(
        subnet=ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        ipv6_subnet=ipaddress.IPv6Network(f"fd00:42:0:{third:x}::/64") if v6 else None,
        attrs=LeaseAttrs(
            public_ip=ip4(f"192.168.0.{third}"),
            public_ipv6=ipaddress.IPv6Address(f"fd99::{third:x}") if v6 else None,
            backend_type=backend,
        ),
    )


OWN = lease(1)


def ext(iface: str = "192.168.0.1", public: str = "192.168.0.1") -> ExternalInterface:
    return ExternalInterface("eth1", EXT, 1500, ip4(iface), ip4(public))


def test_nat_is_refused_with_upstreams_message() -> None:
    check_no_nat(ext(), [4])
    with pytest.raises(ConfigError) as raised:
        check_no_nat(ext(public="203.0.113.9"), [4])
    assert str(raised.value) == NAT_MESSAGE
    assert "NAT, which is not supported by host-gw backend" in NAT_MESSAGE


def test_lease_attrs_have_type_and_null_data() -> None:
    attrs = lease_attrs(ext(), [4])
    assert attrs.backend_type == BACKEND_TYPE == "host-gw"
    assert attrs.backend_data is None
    assert (
        encode_attrs(attrs)
        == '{"PublicIP":"192.168.0.1","PublicIPv6":null,"BackendType":"host-gw"}'
    )


def test_one_route_per_peer_via_public_ip_on_external_interface() -> None:
    peers, skipped = hostgw_peers(OWN, [lease(2), lease(3)], [V4])
    assert skipped == []
    assert desired_state(peers, EXT) == DataplaneState(
        frozenset(
            {
                Route(ipaddress.IPv4Network("10.244.2.0/24"), ip4("192.168.0.2"), EXT),
                Route(ipaddress.IPv4Network("10.244.3.0/24"), ip4("192.168.0.3"), EXT),
            }
        )
    )


def test_other_backends_and_bad_subnets_are_skipped() -> None:
    outside = Lease(
        ipaddress.IPv4Network("10.9.0.0/24"), None, LeaseAttrs(ip4("192.168.0.9"), None, "host-gw")
    )
    peers, skipped = hostgw_peers(
        OWN, [lease(2, backend="vxlan"), outside, lease(1), lease(4)], [V4]
    )
    assert [p.subnet for p in peers] == [ipaddress.IPv4Network("10.244.4.0/24")]
    reasons = {s.key: s.reason for s in skipped}
    assert "vxlan" in reasons["10.244.2.0-24"]
    assert "outside" in reasons["10.9.0.0-24"]
    assert "overlaps ours" in reasons["10.244.1.0-24"]


def test_peer_without_public_address_is_skipped() -> None:
    no_ip = Lease(ipaddress.IPv4Network("10.244.5.0/24"), None, LeaseAttrs(backend_type="host-gw"))
    peers, skipped = hostgw_peers(OWN, [no_ip], [V4])
    assert peers == [] and [s.key for s in skipped] == ["10.244.5.0-24"]


def test_dual_stack_routes_both_families() -> None:
    own = lease(1, v6=True)
    peers, _ = hostgw_peers(own, [lease(2, v6=True)], [V4, V6])
    assert sorted(str(p.subnet) for p in peers) == ["10.244.2.0/24", "fd00:42:0:2::/64"]
    assert (
        HostGwPeer(
            "10.244.2.0-24&fd00:42:0:2::-64",
            ipaddress.IPv6Network("fd00:42:0:2::/64"),
            ipaddress.IPv6Address("fd99::2"),
        )
        in peers
    )
    v4_peer_in_dual_stack, _ = hostgw_peers(own, [lease(2)], [V4, V6])
    assert [str(p.subnet) for p in v4_peer_in_dual_stack] == ["10.244.2.0/24"]


@given(st.sets(st.integers(2, 250), max_size=20), st.sets(st.integers(2, 250), max_size=20))
def test_planning_converges(before: set[int], after: set[int]) -> None:
    old, _ = hostgw_peers(OWN, [lease(n) for n in before], [V4])
    new, _ = hostgw_peers(OWN, [lease(n) for n in after], [V4])
    observed = desired_state(old, EXT)
    desired = desired_state(new, EXT)
    assert apply_to(observed, plan(observed, desired)) == desired
    assert plan(desired, desired) == []
