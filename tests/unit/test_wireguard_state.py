"""The wireguard backend's pure parts: options, keys, lease data, desired peers, the peer plan."""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.wireguard_state import (
    DeviceState,
    PeerState,
    Tunnel,
    WgPeer,
    WireguardOptions,
    apply_plan,
    clamp,
    decode_backend_data,
    device_address,
    encode_backend_data,
    endpoint_family,
    is_private,
    key_b64,
    lease_attrs,
    parse_key,
    parse_options,
    plan_peers,
    public_key,
    tunnels,
    wireguard_peers,
    x25519,
)
from subnet.errors import ConfigError, PeerDataError
from subnet.kube_state import AnnotationKeys, desired_annotations
from subnet.lease import Lease, LeaseAttrs, encode_attrs
from subnet.netconf import BackendConfig

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
# a pair made by `wg genkey | tee k | wg pubkey`
WG_PRIVATE = "8DpI0hIw088OBi2Rmv5TI7XerugoHEN1ixBJafphlms="
WG_PUBLIC = "7gqnFKRC45Lu7cEb3wWiamtb9/lyYGxeV5TLPMkOYhM="
PSK = base64.b64encode(bytes(range(32))).decode()


def key(n: int) -> bytes:
    return bytes([n]) * 32


def lease(third: int, data: object = None, backend: str = "wireguard") -> Lease:
    text = (
        json.dumps({"PublicKey": key_b64(key(third)), "Port": 51820})
        if data is None else json.dumps(data)
    )
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


def backend(**options: object) -> BackendConfig:
    return BackendConfig("wireguard", {"Type": "wireguard", **options})


# --- options ---------------------------------------------------------------------------------


def test_defaults_are_upstreams() -> None:
    assert parse_options(backend()) == WireguardOptions(
        listen_port=51820, listen_port_v6=51821, mtu=None, psk=None, keepalive=0,
        mode="separate", driver="auto",
    )


def test_options_in_any_case() -> None:
    opts = parse_options(backend(listenport=5000, MTU=1400, psk=PSK,
                                 PersistentKeepaliveInterval=25, Mode="auto",
                                 Driver="userspace"))
    assert (opts.listen_port, opts.mtu, opts.keepalive, opts.mode, opts.driver) == (
        5000, 1400, 25, "auto", "userspace")
    assert opts.psk == bytes(range(32))
    assert opts.device_mtu(1500) == 1320
    assert parse_options(backend()).device_mtu(1500) == 1420


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"Mode": "tunnel"}, "no valid Mode configured"),
        ({"ListenPort": "51820"}, "error decoding backend config: ListenPort must be an integer"),
        ({"ListenPort": 70000}, "ListenPort must be in [0, 65535]"),
        ({"ListenPort": 0}, "ListenPort must be in [1, 65535], not 0"),
        ({"PersistentKeepaliveInterval": 2.5}, "error decoding backend config"),
        ({"MTU": 100}, "leaves no room for pods"),
        ({"Driver": "ebpf"}, "Driver must be one of auto, kernel, userspace"),
        ({"PSK": 12}, "error decoding backend config: PSK must be a string"),
    ],
)
def test_bad_options_say_what_is_wrong(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_options(backend(**options))
    assert message in str(err.value)


@pytest.mark.parametrize("psk", ["not base64!!", base64.b64encode(b"short").decode()])
def test_bad_psk_names_the_key_and_the_form_but_not_the_value(psk: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_options(backend(PSK=psk))
    text = str(err.value)
    assert "could not parse psk" in text and "base64 of 32 bytes" in text
    assert psk not in text


def test_psk_is_never_in_a_repr_or_summary() -> None:
    opts = parse_options(backend(PSK=PSK))
    assert PSK not in repr(opts) and "psk" not in repr(opts).lower().replace("psk=", "")
    assert opts.summary()["psk"] == "set"
    assert PSK not in json.dumps(opts.summary())
    peer = WgPeer("k", key(2), (ipaddress.ip_address("198.18.0.2"), 1),
                  frozenset(), psk=bytes(range(32)))
    assert "psk" not in repr(peer)


# --- keys ------------------------------------------------------------------------------------


def test_x25519_rfc7748_vectors() -> None:
    # RFC 7748 §6.1 (Alice) and §5.2 (first scalar multiplication vector)
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_key(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert x25519(scalar, u).hex() == (
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


def test_public_key_matches_wg_pubkey() -> None:
    assert key_b64(public_key(parse_key(WG_PRIVATE))) == WG_PUBLIC


def test_clamp_is_wg_genkeys() -> None:
    clamped = clamp(b"\xff" * 32)
    assert clamped[0] == 0xF8 and clamped[31] == 0x7F
    assert clamp(clamped) == clamped


@pytest.mark.parametrize(
    ("text", "reason"),
    [("abc", "not valid base64"), (base64.b64encode(b"x" * 31).decode(), "31 bytes, not 32")],
)
def test_parse_key_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_key(text)


# --- lease data: byte-identical to upstream --------------------------------------------------


def test_backend_data_golden() -> None:
    assert encode_backend_data(parse_key(WG_PUBLIC), 51820) == (
        '{"PublicKey":"7gqnFKRC45Lu7cEb3wWiamtb9/lyYGxeV5TLPMkOYhM=","Port":51820}')


def test_lease_value_and_annotations_golden() -> None:
    attrs = LeaseAttrs(
        public_ip=ipaddress.IPv4Address("192.168.64.3"),
        backend_type="wireguard",
        backend_data=encode_backend_data(parse_key(WG_PUBLIC), 51820),
    )
    assert encode_attrs(attrs) == (
        '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"wireguard",'
        '"BackendData":{"PublicKey":"7gqnFKRC45Lu7cEb3wWiamtb9/lyYGxeV5TLPMkOYhM=",'
        '"Port":51820}}'
    )
    keys = AnnotationKeys.for_prefix("flannel.alpha.coreos.com")
    assert desired_annotations({}, attrs, keys) == {
        "flannel.alpha.coreos.com/backend-type": "wireguard",
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/backend-data":
            '{"PublicKey":"7gqnFKRC45Lu7cEb3wWiamtb9/lyYGxeV5TLPMkOYhM=","Port":51820}',
        "flannel.alpha.coreos.com/public-ip": "192.168.64.3",
    }


def test_decode_backend_data_round_trip_and_old_leases() -> None:
    data = decode_backend_data(encode_backend_data(key(3), 5000))
    assert (data.public_key, data.port) == (key(3), 5000)
    # upstream before the Port field: no port, so ours is used
    assert decode_backend_data(json.dumps({"publickey": key_b64(key(3))})).port is None
    assert decode_backend_data(json.dumps({"PublicKey": key_b64(key(3)), "Port": 0})).port is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "no backend data"),
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"Port":51820}', "PublicKey is missing"),
        ('{"PublicKey":"%%%"}', "PublicKey is not a WireGuard key: not valid base64"),
        ('{"PublicKey":"' + key_b64(key(1))[:-4] + '"}', "PublicKey is not a WireGuard key"),
        ('{"PublicKey":"' + key_b64(key(1)) + '","Port":70000}', "Port 70000 is not a UDP port"),
        ('{"PublicKey":"' + key_b64(key(1)) + '","Port":-1}', "is not a UDP port"),
        ('{"PublicKey":"' + key_b64(key(1)) + '","Port":"1"}', "is not a UDP port"),
    ],
)
def test_decode_backend_data_rejects(text: str | None, reason: str) -> None:
    with pytest.raises(PeerDataError, match=reason):
        decode_backend_data(text)


# --- peers and the plan ------------------------------------------------------------------------

OPTS = WireguardOptions(psk=bytes(range(32)), keepalive=25)


def test_desired_peers() -> None:
    peers, skipped = wireguard_peers(OWN, key(1), [lease(2), lease(3)], [NETWORK], OPTS)
    assert skipped == []
    assert peers[0] == WgPeer(
        "10.244.2.0-24", key(2), (ipaddress.ip_address("198.18.0.2"), 51820),
        frozenset({ipaddress.ip_network("10.244.2.0/24")}), psk=bytes(range(32)), keepalive=25,
    )
    assert peers[0].psk == bytes(range(32))
    assert device_address(ipaddress.IPv4Network("10.244.1.0/24")) == ipaddress.IPv4Interface(
        "10.244.1.0/32")


def test_peer_without_port_uses_our_listen_port() -> None:
    old = lease(2, {"PublicKey": key_b64(key(2))})
    peers, _ = wireguard_peers(OWN, key(1), [old], [NETWORK], WireguardOptions(listen_port=4000))
    assert peers[0].endpoint[1] == 4000


def test_bad_peers_are_skipped_with_reasons_and_others_kept() -> None:
    leases = [
        lease(2, {"PublicKey": "short"}),
        lease(3, {"PublicKey": key_b64(key(1)), "Port": 51820}),  # our own key
        lease(4, {"PublicKey": key_b64(key(4)), "Port": 99999}),
        lease(5, backend="vxlan"),
        lease(6),
        lease(7, {"PublicKey": key_b64(key(6)), "Port": 51820}),  # lease 6's key
    ]
    peers, skipped = wireguard_peers(OWN, key(1), leases, [NETWORK], OPTS)
    assert [p.lease_key for p in peers] == ["10.244.6.0-24"]
    reasons = {s.key: s.reason for s in skipped}
    assert "not a WireGuard key" in reasons["10.244.2.0-24"]
    assert "already used (ours)" in reasons["10.244.3.0-24"]
    assert "not a UDP port" in reasons["10.244.4.0-24"]
    assert "backend type 'vxlan'" in reasons["10.244.5.0-24"]
    assert "already used (by 10.244.6.0-24)" in reasons["10.244.7.0-24"]


PRIVATE = key(9)


def observed_of(peers: list[WgPeer]) -> DeviceState:
    return DeviceState(PRIVATE, 51820, {p.public_key: p.state() for p in peers})


def test_plan_is_empty_when_the_device_matches() -> None:
    peers, _ = wireguard_peers(OWN, key(1), [lease(2), lease(3)], [NETWORK], OPTS)
    assert not plan_peers(observed_of(peers), peers, PRIVATE, 51820)


def test_plan_on_a_fresh_device_sets_keys_and_every_peer() -> None:
    peers, _ = wireguard_peers(OWN, key(1), [lease(2), lease(3)], [NETWORK], OPTS)
    plan = plan_peers(DeviceState(), peers, PRIVATE, 51820)
    assert plan.configure_device and plan.remove == () and len(plan.put) == 2


def test_removed_lease_removes_its_peer() -> None:
    peers, _ = wireguard_peers(OWN, key(1), [lease(2), lease(3)], [NETWORK], OPTS)
    plan = plan_peers(observed_of(peers), peers[:1], PRIVATE, 51820)
    assert plan.remove == (key(3),) and plan.put == () and not plan.configure_device


def test_rotated_key_replaces_the_peer() -> None:
    peers, _ = wireguard_peers(OWN, key(1), [lease(2)], [NETWORK], OPTS)
    rotated = lease(2, {"PublicKey": key_b64(key(42)), "Port": 51820})
    new, _ = wireguard_peers(OWN, key(1), [rotated], [NETWORK], OPTS)
    plan = plan_peers(observed_of(peers), new, PRIVATE, 51820)
    assert plan.remove == (key(2),) and [p.public_key for p in plan.put] == [key(42)]
    after = apply_plan(observed_of(peers), plan, PRIVATE, 51820)
    assert list(after.peers) == [key(42)]


def test_changed_endpoint_rewrites_only_that_peer() -> None:
    peers, _ = wireguard_peers(OWN, key(1), [lease(2), lease(3)], [NETWORK], OPTS)
    observed = observed_of(peers)
    stale = dict(observed.peers)
    stale[key(2)] = PeerState(None, stale[key(2)].allowed_ips, OPTS.psk, 25)
    plan = plan_peers(DeviceState(PRIVATE, 51820, stale), peers, PRIVATE, 51820)
    assert [p.public_key for p in plan.put] == [key(2)] and plan.remove == ()


peer_sets = st.sets(st.integers(min_value=2, max_value=40), max_size=8)


@given(have=peer_sets, want=peer_sets, port=st.sampled_from([51820, 1000]))
def test_applying_the_plan_makes_the_device_match(have: set[int], want: set[int], port: int,
                                                   ) -> None:
    observed_peers, _ = wireguard_peers(OWN, key(1), [lease(n) for n in have], [NETWORK], OPTS)
    desired, _ = wireguard_peers(OWN, key(1), [lease(n) for n in want], [NETWORK], OPTS)
    observed = DeviceState(key(8), 51820, {p.public_key: p.state() for p in observed_peers})
    after = apply_plan(observed, plan_peers(observed, desired, PRIVATE, port), PRIVATE, port)
    assert after == DeviceState(PRIVATE, port, {p.public_key: p.state() for p in desired})
    assert not plan_peers(after, desired, PRIVATE, port)


# --- dual stack and IPv6 -----------------------------------------------------------------------

NETWORK6 = ipaddress.IPv6Network("fd00:10:244::/56")
DUAL = [NETWORK, NETWORK6]
V4_ONLY = frozenset({4})
V6_ONLY = frozenset({6})


def lease6(third: int, *, v4: bool = True, v6_data: object = None, public_ip: str | None = None,
           public_ipv6: str | None = None, port6: int = 51821) -> Lease:
    """A dual-stack (or, with ``v4=False``, IPv6-only) wireguard peer lease."""
    v6_text = (json.dumps({"PublicKey": key_b64(key(third)), "Port": port6})
               if v6_data is None else json.dumps(v6_data))
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24") if v4 else None,
        ipaddress.IPv6Network(f"fd00:10:244:{third}::/64"),
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(public_ip or f"198.18.0.{third}") if v4
            else ipaddress.IPv4Address("0.0.0.0"),
            public_ipv6=ipaddress.IPv6Address(public_ipv6 or f"fd00:198:18::{third}"),
            backend_type="wireguard",
            backend_data=json.dumps({"PublicKey": key_b64(key(third)), "Port": 51820})
            if v4 else None,
            backend_v6_data=v6_text,
        ),
    )


OWN6 = lease6(1)
OWN6_ONLY = lease6(1, v4=False)


def test_separate_mode_has_a_device_per_family_with_its_port() -> None:
    opts = WireguardOptions(listen_port=5000, listen_port_v6=6000)
    assert tunnels(opts, [4, 6]) == (Tunnel("flannel-wg", V4_ONLY, 5000),
                                     Tunnel("flannel-wg-v6", V6_ONLY, 6000))
    assert tunnels(opts, [6]) == (Tunnel("flannel-wg-v6", V6_ONLY, 6000),)
    assert tunnels(opts, [4]) == (Tunnel("flannel-wg", V4_ONLY, 5000),)


@pytest.mark.parametrize("mode", ["auto", "ipv4", "ipv6"])
def test_single_device_modes_carry_every_family_on_listen_port(mode: str) -> None:
    opts = WireguardOptions(listen_port=5000, listen_port_v6=6000, mode=mode)
    assert tunnels(opts, [4, 6]) == (Tunnel("flannel-wg", frozenset({4, 6}), 5000),)
    assert tunnels(opts, [6]) == (Tunnel("flannel-wg", V6_ONLY, 5000),)


def test_lease_attrs_carry_each_familys_port_byte_for_byte() -> None:
    v4, v6 = ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv6Address("fd00:198:18::1")
    separate = lease_attrs(v4, v6, key(1), tunnels(WireguardOptions(), [4, 6]))
    one = lease_attrs(v4, v6, key(1), tunnels(WireguardOptions(mode="auto"), [4, 6]))
    k = key_b64(key(1))
    assert encode_attrs(separate) == (
        '{"PublicIP":"198.18.0.1","PublicIPv6":"fd00:198:18::1","BackendType":"wireguard",'
        f'"BackendData":{{"PublicKey":"{k}","Port":51820}},'
        f'"BackendV6Data":{{"PublicKey":"{k}","Port":51821}}}}'
    )
    assert one.backend_v6_data == f'{{"PublicKey":"{k}","Port":51820}}'  # one device, one port
    only6 = lease_attrs(None, v6, key(1), tunnels(WireguardOptions(), [6]))
    assert only6.backend_data is None and str(only6.public_ip) == "0.0.0.0"
    assert encode_attrs(only6).startswith('{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::1"')
    keys = AnnotationKeys.for_prefix("flannel.alpha.coreos.com")
    assert desired_annotations({}, separate, keys)[keys.backend_v6_data] == (
        f'{{"PublicKey":"{k}","Port":51821}}')


def test_separate_mode_programs_each_family_on_its_own_device() -> None:
    v4dev, v6dev = tunnels(OPTS, [4, 6])
    peers4, skipped4 = wireguard_peers(OWN6, key(1), [lease6(2)], DUAL, OPTS, v4dev)
    peers6, skipped6 = wireguard_peers(OWN6, key(1), [lease6(2)], DUAL, OPTS, v6dev)
    assert skipped4 == skipped6 == []
    assert peers4[0].allowed_ips == {ipaddress.ip_network("10.244.2.0/24")}
    assert peers4[0].endpoint == (ipaddress.ip_address("198.18.0.2"), 51820)
    assert peers6[0] == WgPeer(
        "10.244.2.0-24&fd00:10:244:2::-64", key(2),
        (ipaddress.ip_address("fd00:198:18::2"), 51821),
        frozenset({ipaddress.ip_network("fd00:10:244:2::/64")}), psk=OPTS.psk, keepalive=25)


def test_ipv6_peer_without_a_port_uses_the_v6_devices_port() -> None:
    _, v6dev = tunnels(WireguardOptions(listen_port_v6=7000), [4, 6])
    old = lease6(2, v6_data={"PublicKey": key_b64(key(2))})
    peers, _ = wireguard_peers(OWN6, key(1), [old], DUAL, WireguardOptions(), v6dev)
    assert peers[0].endpoint[1] == 7000


@pytest.mark.parametrize(
    ("v6_data", "public_ipv6", "reason"),
    [
        ({"PublicKey": "short"}, None, "IPv6: BackendV6Data: PublicKey is not a WireGuard key"),
        ({"PublicKey": key_b64(key(2)), "Port": 70000}, None, "IPv6: BackendV6Data: Port 70000"),
    ],
)
def test_bad_v6_data_skips_the_peer_for_ipv6_only(v6_data: object, public_ipv6: str | None,
                                                   reason: str) -> None:
    bad = lease6(2, v6_data=v6_data, public_ipv6=public_ipv6)
    v4dev, v6dev = tunnels(OPTS, [4, 6])
    peers4, skipped4 = wireguard_peers(OWN6, key(1), [bad, lease6(3)], DUAL, OPTS, v4dev)
    peers6, skipped6 = wireguard_peers(OWN6, key(1), [bad, lease6(3)], DUAL, OPTS, v6dev)
    assert [p.lease_key for p in peers4] == [bad.key, lease6(3).key] and skipped4 == []
    assert [p.lease_key for p in peers6] == [lease6(3).key]
    assert [s.key for s in skipped6] == [bad.key] and reason in skipped6[0].reason
    # one device (auto): the peer keeps its IPv4 subnet, the IPv6 one is reported
    auto = WireguardOptions(mode="auto")
    peers, skipped = wireguard_peers(OWN6, key(1), [bad], DUAL, auto)
    assert peers[0].allowed_ips == {ipaddress.ip_network("10.244.2.0/24")}
    assert [s.reason for s in skipped] == [skipped6[0].reason]


def test_link_local_public_ipv6_is_refused_with_its_reason() -> None:
    bad = lease6(2, public_ipv6="fe80::2")
    _, v6dev = tunnels(OPTS, [4, 6])
    peers, skipped = wireguard_peers(OWN6, key(1), [bad], DUAL, OPTS, v6dev)
    assert peers == [] and "link-local" in skipped[0].reason


def test_ipv6_only_cluster() -> None:
    (v6dev,) = tunnels(OPTS, [6])
    peers, skipped = wireguard_peers(OWN6_ONLY, key(1), [lease6(2, v4=False)], [NETWORK6], OPTS,
                                     v6dev)
    assert skipped == [] and peers[0].endpoint == (ipaddress.ip_address("fd00:198:18::2"), 51821)
    assert peers[0].allowed_ips == {ipaddress.ip_network("fd00:10:244:2::/64")}
    assert device_address(ipaddress.IPv6Network("fd00:10:244:1::/64")) == (
        ipaddress.IPv6Interface("fd00:10:244:1::/128"))


def test_one_device_carries_both_subnets_to_the_mode_endpoint() -> None:
    for mode, endpoint in (("ipv4", ("198.18.0.2", 51820)), ("ipv6", ("fd00:198:18::2", 51820))):
        opts = WireguardOptions(mode=mode)
        # one-device peers advertise ListenPort in both data objects
        peers, _ = wireguard_peers(OWN6, key(1), [lease6(2, port6=51820)], DUAL, opts)
        assert peers[0].allowed_ips == {ipaddress.ip_network("10.244.2.0/24"),
                                        ipaddress.ip_network("fd00:10:244:2::/64")}
        assert peers[0].endpoint == (ipaddress.ip_address(endpoint[0]), endpoint[1])


@pytest.mark.parametrize(
    ("ours", "peer", "family"),
    [
        # (our IPv4, our IPv6) and (peer IPv4, peer IPv6)
        (("198.18.0.1", "2001:db8::1"), ("198.18.0.2", None), 4),  # peer has no IPv6
        (("198.18.0.1", "2001:db8::1"), ("198.18.0.2", "2001:db8::2"), 4),  # public IPv4 wins
        (("10.0.0.1", "2001:db8::1"), ("10.0.0.2", "2001:db8::2"), 6),  # private IPv4s
        (("10.0.0.1", "fd00::1"), ("10.0.0.2", "2001:db8::2"), 4),  # our IPv6 is ULA
        (("10.0.0.1", "2001:db8::1"), ("10.0.0.2", "fd00::2"), 4),  # the peer's IPv6 is ULA
        ((None, "2001:db8::1"), ("198.18.0.2", "2001:db8::2"), 6),  # we have no IPv4
        ((None, "fd00::1"), (None, "fd00::2"), 6),  # IPv6-only: IPv6 is all there is
    ],
)
def test_auto_mode_chooses_the_endpoint_family_as_upstream(
    ours: tuple[str | None, str | None], peer: tuple[str | None, str | None], family: int,
) -> None:
    def attrs(v4: str | None, v6: str | None) -> LeaseAttrs:
        return LeaseAttrs(public_ip=ipaddress.IPv4Address(v4 or "0.0.0.0"),
                          public_ipv6=ipaddress.IPv6Address(v6) if v6 else None)
    assert endpoint_family("auto", attrs(*ours), attrs(*peer)) == family


def test_private_is_gos_definition() -> None:
    assert is_private(ipaddress.ip_address("172.31.0.1"))
    assert not is_private(ipaddress.ip_address("198.18.0.1"))
    assert is_private(ipaddress.ip_address("fd00::1"))
    assert not is_private(ipaddress.ip_address("2001:db8::1"))
