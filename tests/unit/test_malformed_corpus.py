"""A generated corpus of malformed peer data against the pure decoders.

Whatever a node (or an attacker with write access to etcd) puts into a
lease key or value, the decoders either return a value or raise the
documented PeerDataError; the peer filters never raise at all and never
return a peer that breaks their promises.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backends.hostgw_state import hostgw_peers
from backends.peers import usable_peers
from backends.udp import udp_peers
from backends.vxlan_state import decode_backend_data, vxlan_peers
from backends.wireguard_state import WireguardData, WireguardOptions, wireguard_peers
from backends.wireguard_state import decode_backend_data as decode_wireguard_data
from subnet.errors import PeerDataError
from subnet.lease import Lease, LeaseAttrs, decode_attrs, parse_subnet_key, subnet_key

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
NETWORK6 = ipaddress.IPv6Network("fd00:10::/48")
OWN = Lease(
    ipaddress.IPv4Network("10.244.1.0/24"),
    None,
    LeaseAttrs(
        public_ip=ipaddress.IPv4Address("192.0.2.1"),
        backend_type="vxlan",
        backend_data='{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}',
    ),
)
DEEP = "[" * 5_000  # deeper than the JSON parser's recursion limit (1000)

FIELDS = ["PublicIP", "publicip", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data",
          "VNI", "VtepMAC", "vtepmac", "Extra"]

# JSON scalars biased towards what the decoders look for.
address_like = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["", "0.0.0.0", "::", "1.2.3", "256.1.1.1", "10.244.0.0/16", "fd00::1%eth0"]),
)
mac_like = st.one_of(
    st.sampled_from(["0e:00:00:00:00:02", "01:00:5e:00:00:01", "00:00:00:00:00:00",
                     "ff:ff:ff:ff:ff:ff", "zz:zz", "0E-00-00-00-00-03", ""]),
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    address_like, mac_like, st.integers(min_value=-1, max_value=1 << 25),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner,
                        max_size=5),
    ),
    max_leaves=20,
)
objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
raw_texts = st.one_of(
    st.text(max_size=200),
    objects.map(json.dumps),
    json_values.map(json.dumps),
    st.just(DEEP),
    st.just('{"BackendData":' + DEEP + "}"),
)


def _fine(func: Any, *args: Any) -> object | None:
    """Call ``func``; PeerDataError is an allowed answer (None), anything else fails."""
    try:
        result: object = func(*args)
    except PeerDataError:
        return None
    return result


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(raw_texts)
@example(DEEP)
@example('{"PublicIP":"' + "1" * 100_000 + '"}')
def test_decode_attrs_returns_attrs_or_raises_peer_data_error(text: str) -> None:
    attrs = _fine(decode_attrs, text)
    assert attrs is None or isinstance(attrs, LeaseAttrs)
    _fine(decode_attrs, text.encode("utf-8", "surrogatepass"))


@given(st.binary(max_size=64))
@example(b"\xff\xfe{")
def test_decode_attrs_of_arbitrary_bytes(raw: bytes) -> None:
    attrs = _fine(decode_attrs, raw)
    assert attrs is None or isinstance(attrs, LeaseAttrs)


@settings(max_examples=150)
@given(raw_texts)
@example(DEEP)
def test_decode_backend_data_returns_data_or_raises_peer_data_error(text: str) -> None:
    _fine(decode_backend_data, text)


@settings(max_examples=150)
@given(raw_texts)
@example(DEEP)
@example('{"PublicKey":"' + "A" * 43 + '=","Port":65536}')
def test_decode_wireguard_data_returns_data_or_raises_peer_data_error(text: str) -> None:
    data = _fine(decode_wireguard_data, text)
    if data is not None:
        assert isinstance(data, WireguardData) and len(data.public_key) == 32
        assert data.port is None or 0 < data.port < 65536


key_texts = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A\d{1,4}\.\d{1,4}\.\d{1,4}\.\d{1,4}-\d{1,3}(&[0-9a-f:]{0,12}-\d{1,4})?\Z"),
)


@settings(max_examples=150)
@given(key_texts)
@example("10.244.1.0-33")
@example("10.244.1.0-24&::-200")
@example("999.1.1.1-24")
def test_parse_subnet_key_returns_networks_or_raises_peer_data_error(key: str) -> None:
    try:
        v4, v6 = parse_subnet_key(key)
    except PeerDataError:
        return
    assert isinstance(v4, ipaddress.IPv4Network) and v4.prefixlen <= 31
    assert v6 is None or isinstance(v6, ipaddress.IPv6Network)
    # A canonical key names the same networks again.
    assert parse_subnet_key(subnet_key(v4, v6)) == (v4, v6)


v4_subnets = st.one_of(
    st.builds(
        lambda third, length: ipaddress.IPv4Network(f"10.244.{third}.0/{length}", strict=False),
        st.integers(0, 255), st.integers(8, 31),
    ),
    st.builds(lambda n: ipaddress.IPv4Network((n, 24), strict=False),
              st.integers(0, 2**32 - 1)),
)
v6_subnets = st.none() | st.builds(
    lambda n, length: ipaddress.IPv6Network((n, length), strict=False),
    st.integers(0, 2**128 - 1), st.integers(32, 127),
)
backend_data = st.one_of(
    st.none(),
    objects.map(lambda d: json.dumps(d, separators=(",", ":"))),
    st.builds(lambda vni, mac: json.dumps({"VNI": vni, "VtepMAC": mac}),
              st.one_of(st.integers(-2, 5), st.text(max_size=3)), mac_like),
    st.builds(lambda key, port: json.dumps({"PublicKey": key, "Port": port}),
              st.sampled_from(["A" * 43 + "=", "B" * 43 + "=", "A" * 42 + "==", "", "%"]),
              st.one_of(st.integers(-1, 70000), st.text(max_size=3))),
    st.just(DEEP),
)
peer_attrs = st.builds(
    LeaseAttrs,
    public_ip=st.ip_addresses(v=4),
    public_ipv6=st.none() | st.ip_addresses(v=6),
    backend_type=st.sampled_from(["vxlan", "host-gw", "udp", "", "gre", "VXLAN", "wireguard"]),
    backend_data=backend_data,
    backend_v6_data=backend_data,
)
peer_leases = st.builds(Lease, v4_subnets, v6_subnets, peer_attrs)
network_sets = st.sampled_from([[NETWORK], [NETWORK, NETWORK6], [NETWORK6]])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(peer_leases, max_size=8), network_sets, st.sampled_from([4, 6]))
def test_peer_filters_never_raise_and_keep_their_promises(
    peers: list[Lease], networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    version: int,
) -> None:
    for backend_type in ("vxlan", "host-gw", None):
        usable, skipped = usable_peers(OWN, peers, networks, backend_type)
        assert len(usable) + len(skipped) == len(peers)
        enabled = {n.version for n in networks}
        claimed = [s for p in usable for s in p.subnets() if s.version in enabled]
        for i, a in enumerate(claimed):  # no two usable peers overlap, none overlaps ours
            assert not any(a.version == b.version and a.overlaps(b) for b in claimed[i + 1:])
            assert not (OWN.subnet is not None and a.version == 4 and a.overlaps(OWN.subnet))
            assert any(a.subnet_of(n) for n in networks if n.version == a.version)  # type: ignore[arg-type]
    found, skipped_vx = vxlan_peers(OWN, peers, networks, vni=1, version=version)
    macs = [p.vtep_mac for p in found]
    assert len(macs) == len(set(macs)) and "0e:00:00:00:00:01" not in macs
    assert len(found) + len(skipped_vx) == len(peers)
    assert all(any(p.subnet.subnet_of(n) for n in networks if n.version == p.subnet.version)  # type: ignore[arg-type]
               for p in found)
    hostgw_peers(OWN, peers, networks)
    udp_peers(OWN, peers, networks)
    own_key = bytes(range(32))
    wg, skipped_wg = wireguard_peers(OWN, own_key, peers, networks, WireguardOptions())
    keys = [p.public_key for p in wg]
    assert len(keys) == len(set(keys)) and own_key not in keys
    assert len(wg) + len(skipped_wg) == len(peers)
    assert all(0 < p.endpoint[1] < 65536 for p in wg)
