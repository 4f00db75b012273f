"""The vxlan backend's pure parts: options, lease data, peers and desired state."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.model import DataplaneState, FdbEntry, Neighbour, Route
from backends.vxlan_state import (
    PeerViews,
    VxlanOptions,
    VxlanPeer,
    decode_backend_data,
    desired_state,
    encode_backend_data,
    family_peers,
    lease_attrs,
    parse_mac,
    parse_options,
    previous_vtep_mac,
    screen_families,
    vtep_mac,
    vxlan_peers,
)
from subnet.errors import ConfigError, PeerDataError
from subnet.lease import IPAddress, Lease, LeaseAttrs, encode_attrs
from subnet.netconf import BackendConfig

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
IFINDEX = 7
UNDERLAY = 2


def mac(n: int) -> str:
    return f"0a:00:00:00:00:{n:02x}"


def lease(third: int, data: object = None, backend: str = "vxlan", vni: int = 1) -> Lease:
    text = json.dumps({"VNI": vni, "VtepMAC": mac(third)}) if data is None else json.dumps(data)
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        None,
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(f"198.18.0.{third}"),
            backend_type=backend,
            backend_data=text,
        ),
    )


OWN = lease(1)


def peer(third: int) -> VxlanPeer:
    return VxlanPeer(
        f"10.244.{third}.0-24",
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        ipaddress.IPv4Address(f"198.18.0.{third}"),
        mac(third),
    )


# --- desired state ------------------------------------------------------------------------


def test_desired_state_per_peer_is_neighbour_fdb_and_onlink_route() -> None:
    state = desired_state([peer(2), peer(3)], IFINDEX, {})
    gw2 = ipaddress.IPv4Address("10.244.2.0")
    gw3 = ipaddress.IPv4Address("10.244.3.0")
    assert state == DataplaneState(
        routes=frozenset(
            {
                Route(ipaddress.IPv4Network("10.244.2.0/24"), gw2, IFINDEX, onlink=True),
                Route(ipaddress.IPv4Network("10.244.3.0/24"), gw3, IFINDEX, onlink=True),
            }
        ),
        neighbours=frozenset({Neighbour(IFINDEX, gw2, mac(2)), Neighbour(IFINDEX, gw3, mac(3))}),
        fdb=frozenset(
            {
                FdbEntry(IFINDEX, mac(2), ipaddress.IPv4Address("198.18.0.2")),
                FdbEntry(IFINDEX, mac(3), ipaddress.IPv4Address("198.18.0.3")),
            }
        ),
    )


def test_direct_routing_peer_gets_only_a_route_via_its_public_ip() -> None:
    direct: dict[IPAddress, int] = {ipaddress.IPv4Address("198.18.0.3"): UNDERLAY}
    state = desired_state([peer(2), peer(3)], IFINDEX, direct)
    assert (
        Route(ipaddress.IPv4Network("10.244.3.0/24"), ipaddress.IPv4Address("198.18.0.3"), UNDERLAY)
        in state.routes
    )
    assert len(state.routes) == 2
    # the vxlan peer keeps its neighbour and FDB entry; the direct one has none
    assert {n.lladdr for n in state.neighbours} == {mac(2)}
    assert {f.lladdr for f in state.fdb} == {mac(2)}


def test_no_peers_means_nothing_desired() -> None:
    assert desired_state([], IFINDEX, {}) == DataplaneState()


# --- peer selection ------------------------------------------------------------------------


def test_good_peers_become_vxlan_peers_in_key_order() -> None:
    usable, skipped = vxlan_peers(OWN, [lease(3), lease(2)], [NETWORK], vni=1)
    assert usable == [peer(2), peer(3)]
    assert skipped == []


@pytest.mark.parametrize(
    ("bad", "reason_part"),
    [
        (lease(5, {"VNI": 1, "VtepMAC": "not-a-mac"}), "not a MAC"),
        (lease(5, {"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}), "multicast"),
        (lease(5, {"VNI": 1, "VtepMAC": "00:00:00:00:00:00"}), "all zeros"),
        (lease(5, {"VNI": 1}), "not a MAC"),
        (lease(5, vni=2), "VNI 2, not 1"),
        (lease(5, {"VNI": "1", "VtepMAC": mac(5)}), "is not a VNI"),
        (lease(5, ["VNI", 1]), "not a JSON object"),
        (lease(5, "text"), "not a JSON object"),
        (lease(5, backend="host-gw"), "backend type"),
        (lease(1, {"VNI": 1, "VtepMAC": mac(9)}), "overlaps ours"),
        (
            Lease(
                ipaddress.IPv4Network("10.99.5.0/24"),
                None,
                LeaseAttrs(
                    ipaddress.IPv4Address("198.18.0.5"),
                    None,
                    "vxlan",
                    encode_backend_data(1, mac(5)),
                ),
            ),
            "outside the cluster network",
        ),
        (
            Lease(
                ipaddress.IPv4Network("10.244.5.0/24"),
                None,
                LeaseAttrs(backend_type="vxlan", backend_data=encode_backend_data(1, mac(5))),
            ),
            "no IPv4 public address",
        ),
        (lease(5, {"VNI": 1, "VtepMAC": mac(1)}), "already used (ours)"),
    ],
)
def test_bad_peer_is_skipped_with_a_reason_and_others_stay(bad: Lease, reason_part: str) -> None:
    usable, skipped = vxlan_peers(OWN, [lease(2), bad, lease(3)], [NETWORK], vni=1)
    assert usable == [peer(2), peer(3)]
    assert [s.key for s in skipped] == [bad.key]
    assert reason_part in skipped[0].reason


def test_second_peer_with_the_same_mac_is_skipped() -> None:
    twin = lease(4, {"VNI": 1, "VtepMAC": mac(2)})
    usable, skipped = vxlan_peers(OWN, [lease(2), twin], [NETWORK], vni=1)
    assert usable == [peer(2)]
    assert skipped[0].key == twin.key
    assert "by 10.244.2.0-24" in skipped[0].reason


def test_peer_mac_is_normalised_to_lower_case_colons() -> None:
    upper = lease(2, {"vni": 1, "vtepmac": "0A-00-00-00-00-02"})
    usable, _ = vxlan_peers(OWN, [upper], [NETWORK], vni=1)
    assert usable == [peer(2)]


# --- lease data ---------------------------------------------------------------------------


def test_backend_data_is_upstreams_compact_form() -> None:
    assert encode_backend_data(1, "c6:d2:32:6f:8f:44") == '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'
    data = decode_backend_data('{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}')
    assert (data.vni, data.vtep_mac) == (1, "c6:d2:32:6f:8f:44")


@pytest.mark.parametrize(
    "text", [None, "", "{", "null", '{"VNI":true,"VtepMAC":"0a:00:00:00:00:01"}']
)
def test_undecodable_backend_data_raises_peer_data_error(text: str | None) -> None:
    with pytest.raises(PeerDataError):
        decode_backend_data(text)


def test_previous_mac_is_taken_from_good_data_only() -> None:
    assert previous_vtep_mac('{"VNI":1,"VtepMAC":"0A:00:00:00:00:07"}') == "0a:00:00:00:00:07"
    assert previous_vtep_mac('{"VNI":1}') is None
    assert previous_vtep_mac(None) is None


@given(st.binary(min_size=6, max_size=6))
def test_generated_mac_is_locally_administered_unicast(raw: bytes) -> None:
    text = vtep_mac(raw)
    first = int(text[:2], 16)
    assert first & 0x01 == 0
    assert first & 0x02 == 0x02
    assert text[2:] == "".join(f":{b:02x}" for b in raw[1:])
    assert first & 0xFC == raw[0] & 0xFC  # only the two flag bits change
    assert parse_mac(text) == text


# --- options --------------------------------------------------------------------------------


def test_default_options() -> None:
    opts = parse_options(BackendConfig("vxlan", {"Type": "vxlan"}))
    assert opts == VxlanOptions(vni=1, port=0, gbp=False, learning=False, direct_routing=False)
    assert opts.device_name() == "flannel.1"
    assert opts.device_mtu(1500) == 1450


def test_options_in_any_case() -> None:
    raw = {
        "vni": 4096,
        "port": 4789,
        "gbp": True,
        "learning": True,
        "directrouting": True,
        "mtu": 9000,
    }
    opts = parse_options(BackendConfig("vxlan", raw))
    assert opts == VxlanOptions(4096, 4789, True, True, True, 9000)
    assert opts.device_name() == "flannel.4096"
    assert opts.device_name(6) == "flannel-v6.4096"
    assert opts.device_mtu(1500) == 8950  # MTU is the underlay's, not the device's


@pytest.mark.parametrize(
    "raw",
    [
        {"VNI": "1"},
        {"VNI": 1.0},
        {"VNI": True},
        {"VNI": 1 << 24},
        {"VNI": -1},
        {"Port": 70000},
        {"Port": "8472"},
        {"GBP": 1},
        {"DirectRouting": "true"},
        {"Learning": 0},
        {"MTU": 100},
        {"MTU": "1500"},
    ],
)
def test_bad_option_is_a_config_error(raw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_options(BackendConfig("vxlan", raw))


# --- IPv6: the flannel-v6.<VNI> device's peers, objects, lease data and MTU -------------------

NETWORK6 = ipaddress.IPv6Network("fd00:10:244::/56")


def dual(host: int, v6_data: object = None, v4: bool = True, v6: bool = True) -> Lease:
    """A dual-stack (or one-family) peer; its v6 VTEP MAC differs from its v4 one."""
    data6 = {"VNI": 1, "VtepMAC": f"0a:00:00:00:06:{host:02x}"} if v6_data is None else v6_data
    return Lease(
        ipaddress.IPv4Network(f"10.244.{host}.0/24") if v4 else None,
        ipaddress.IPv6Network(f"fd00:10:244:{host:x}::/64") if v6 else None,
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(f"198.18.0.{host}" if v4 else "0.0.0.0"),
            public_ipv6=ipaddress.IPv6Address(f"fd00:198:18::{host:x}") if v6 else None,
            backend_type="vxlan",
            backend_data=json.dumps({"VNI": 1, "VtepMAC": mac(host)}) if v4 else None,
            backend_v6_data=json.dumps(data6) if v6 else None,
        ),
    )


def test_ipv6_peer_objects_live_on_the_v6_device_with_the_v6_mac_and_public_ipv6() -> None:
    found, skipped = family_peers(dual(1), [dual(2)], [NETWORK, NETWORK6], 1, (4, 6))
    assert skipped == []
    (p6,) = found[6]
    assert (str(p6.subnet), str(p6.public_ip), p6.vtep_mac) == (
        "fd00:10:244:2::/64", "fd00:198:18::2", "0a:00:00:00:06:02")
    gateway = ipaddress.IPv6Address("fd00:10:244:2::")
    assert desired_state(found[6], 9, {}) == DataplaneState(
        routes=frozenset({Route(p6.subnet, gateway, 9, onlink=True)}),
        neighbours=frozenset({Neighbour(9, gateway, "0a:00:00:00:06:02")}),
        fdb=frozenset({FdbEntry(9, "0a:00:00:00:06:02", p6.public_ip)}),
    )
    assert [p.vtep_mac for p in found[4]] == [mac(2)]
    direct = desired_state(found[6], 9, {p6.public_ip: UNDERLAY})
    assert direct.routes == frozenset({Route(p6.subnet, p6.public_ip, UNDERLAY)})
    assert not direct.neighbours and not direct.fdb


@pytest.mark.parametrize(("bad", "reason"), [
    (dual(2, v6=False), "IPv6 not programmed: no IPv6 subnet (the other family is)"),
    (dual(2, v4=False), "IPv4 not programmed: no IPv4 subnet (the other family is)"),
    (dual(2, v6_data={"VNI": 1, "VtepMAC": "zz"}),
     "IPv6 not programmed: VtepMAC 'zz' is not a MAC address (the other family is)"),
    (dual(2, v6_data={"VNI": 1, "VtepMAC": "0a:00:00:00:06:01"}),  # our own v6 MAC
     "IPv6 not programmed: VtepMAC 0a:00:00:00:06:01 is already used (ours) (the other family is)"),
])
def test_a_peer_missing_one_family_is_kept_for_the_other(bad: Lease, reason: str) -> None:
    found, skipped = family_peers(dual(1), [bad, dual(3)], [NETWORK, NETWORK6], 1, (4, 6))
    assert [(s.key, s.reason) for s in skipped] == [(bad.key, reason)]
    programmed = {v: sorted(p.key for p in peers) for v, peers in found.items()}
    expect4 = [bad.key, dual(3).key] if bad.subnet else [dual(3).key]
    expect6 = [bad.key, dual(3).key] if "IPv4 not" in reason else [dual(3).key]
    assert programmed == {4: sorted(expect4), 6: sorted(expect6)}


def test_the_same_mac_on_both_families_of_one_peer_is_no_conflict() -> None:
    same = dual(2, v6_data={"VNI": 1, "VtepMAC": mac(2)})
    found, skipped = family_peers(dual(1), [same], [NETWORK, NETWORK6], 1, (4, 6))
    assert skipped == [] and len(found[4]) == len(found[6]) == 1


def test_lease_attrs_are_upstreams_for_each_stack() -> None:
    v4, v6 = ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv6Address("fd00:198:18::1")
    both = lease_attrs(v4, v6, 1, {4: mac(1), 6: mac(9)})
    assert encode_attrs(both) == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":"fd00:198:18::1","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}}'
    )
    assert encode_attrs(lease_attrs(None, v6, 1, {6: mac(9)})) == (
        '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::1","BackendType":"vxlan",'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}}'
    )
    assert encode_attrs(lease_attrs(v4, v6, 1, {4: mac(1)})) == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}'
    )


def test_v6_device_mtu_leaves_room_for_the_ipv6_outer_header() -> None:
    opts = VxlanOptions()
    assert (opts.device_mtu(1500), opts.device_mtu(1500, 6)) == (1450, 1430)
    assert VxlanOptions(mtu=9000).device_mtu(1500, 6) == 8930
    opts.check_mtu(1350, (4, 6))  # 1280 for IPv6 still fits
    with pytest.raises(ConfigError, match="flannel-v6.1 would get MTU 1279, below the IPv6 "
                                          "minimum 1280"):
        opts.check_mtu(1349, (4, 6))
    opts.check_mtu(1349, (4,))


def test_peer_views_decode_a_lease_once_and_keep_only_the_last_pass() -> None:
    views = PeerViews(1, (4,))
    first = views.of(lease(2))[0]
    assert isinstance(first, VxlanPeer) and first.vtep_mac == mac(2)
    assert views.of(lease(2))[0] is first  # equal attributes in a new lease: not decoded again
    changed = lease(2, {"VNI": 1, "VtepMAC": mac(9)})
    assert views.of(changed)[0] == replace(first, vtep_mac=mac(9))
    assert views.of(lease(3, {"VNI": 4, "VtepMAC": mac(3)}))[0] == "VNI 4, not 1"
    views.end_pass()
    views.end_pass()  # lease 2 was not looked at in between: forgotten
    assert views.of(lease(2))[0] is not first


def test_screen_families_gives_the_index_only_when_nothing_was_skipped() -> None:
    peers = [lease(2), lease(3)]
    _, skipped, index = screen_families(OWN, peers, [NETWORK], PeerViews(1, (4,)))
    assert skipped == [] and index is not None
    assert not index.admit(lease(4, {"VNI": 1, "VtepMAC": mac(3)}), [(4, mac(3))])  # held MAC
    assert not index.admit(lease(4, {"VNI": 1, "VtepMAC": mac(1)}), [(4, mac(1))])  # ours
    assert index.admit(lease(4), [(4, mac(4))])
    _, skipped, index = screen_families(OWN, [*peers, lease(5, backend="udp")], [NETWORK],
                                        PeerViews(1, (4,)))
    assert [s.key for s in skipped] == [lease(5).key] and index is None
