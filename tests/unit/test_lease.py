"""The lease model's wire formats: etcd key names and the attrs JSON (Go's bytes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from subnet.errors import PeerDataError
from subnet.lease import (
    Lease,
    LeaseAttrs,
    compact_flat_object,
    compact_json,
    decode_attrs,
    encode_attrs,
    parse_canonical_key,
    parse_subnet_key,
    subnet_key,
)

# --- keys --------------------------------------------------------------------------


def test_ipv4_key_round_trip() -> None:
    v4, v6 = parse_subnet_key("10.12.13.0-24")
    assert (v4, v6) == (IPv4Network("10.12.13.0/24"), None)
    assert subnet_key(v4, v6) == "10.12.13.0-24"


def test_dual_stack_key_round_trip() -> None:
    v4, v6 = parse_subnet_key("10.12.13.0-24&fd00:12:13::-56")
    assert (v4, v6) == (IPv4Network("10.12.13.0/24"), IPv6Network("fd00:12:13::/56"))
    assert subnet_key(v4, v6) == "10.12.13.0-24&fd00:12:13::-56"


def test_key_uses_canonical_ipv6_text() -> None:
    key = subnet_key(IPv4Network("10.5.34.0/24"), IPv6Network("fd00:0012:0013:0000::/64"))
    assert key == "10.5.34.0-24&fd00:12:13::-64"


def test_ipv6_only_key_is_the_ipv6_part() -> None:
    assert subnet_key(None, IPv6Network("fd00::/64")) == "fd00::-64"


def test_key_needs_a_subnet() -> None:
    with pytest.raises(ValueError):
        subnet_key(None, None)


@pytest.mark.parametrize(
    "key",
    [
        # upstream's TestSubnetNodeInvalid
        "10",
        "10.12.13.0",
        "10.12.13-24",
        "10.12.13.300-24",
        "10.12.13.0-24hi",
        "&2001::-56",
        "10.12.13.0-24&:12:13:-56",
        "10.12.13.0-24&20011::-56",
        "10.12.13.0-24&2001-56",
        "10.12.13.0-24&2001::",
        "10.12.13.0-24&2001::-56hi",
        # prefix lengths beyond what upstream's 5-bit / 7-bit parse accepts
        "10.12.13.0-32",
        "10.12.13.0-24&2001::-128",
        # ours: the whole name must match
        "x10.12.13.0-24",
        "10.12.13.0-24/",
        "10.12.13.0-24&2001:DB8::-56",
        "",
    ],
)
def test_invalid_keys_are_rejected(key: str) -> None:
    with pytest.raises(PeerDataError, match="bad subnet key"):
        parse_subnet_key(key)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(8, 31),
    st.one_of(st.none(), st.tuples(st.integers(0, 2**128 - 1), st.integers(16, 127))),
)
def test_make_then_parse_is_identity(
    v4_int: int, v4_len: int, v6_parts: tuple[int, int] | None
) -> None:
    v4 = IPv4Network((v4_int, v4_len), strict=False)
    v6 = IPv6Network(v6_parts, strict=False) if v6_parts else None
    assert parse_subnet_key(subnet_key(v4, v6)) == (v4, v6)


# --- canonical keys (what the etcd manager accepts in a listing) ----------------------


def reference_canonical_parse(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """The etcd manager's key check before parse_canonical_key: parse, then compare."""
    v4, v6 = parse_subnet_key(key)
    if subnet_key(v4, v6) != key:
        raise PeerDataError(f"subnet key {key!r} is not canonical ({subnet_key(v4, v6)})")
    return v4, v6


def outcome(parse: object, key: str) -> object:
    try:
        return parse(key)  # type: ignore[operator]
    except PeerDataError as err:
        return ("refused", str(err))


@pytest.mark.parametrize(
    "key",
    [
        "10.5.1.0-24",
        "0.0.0.0-0",
        "10.5.1.0-31",
        "255.255.255.254-31",
        "10.12.13.0-24&fd00:12:13::-56",
        "10.12.13.0-24&::-0",
        "10.12.13.0-24&fd00::-64",
        "10.12.13.0-24&fd00:0:0:1::-64",
        "10.12.13.0-24&2001:db8:0:1:2:3:4:0-127",
    ],
)
def test_canonical_keys_parse_as_before(key: str) -> None:
    assert parse_canonical_key(key) == reference_canonical_parse(key)
    assert subnet_key(*parse_canonical_key(key)) == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        # host bits set: would alias the real lease 10.5.1.0-24
        ("10.5.1.1-24", "not canonical"),
        ("10.12.13.0-24&fd00::1-64", "not canonical"),
        # other spellings of the same subnet
        ("10.5.1.0-024", "not canonical"),
        ("10.5.1.0-+24", "bad subnet key"),
        ("10.5.1.0- 24", "bad subnet key"),
        ("010.5.1.0-24", "bad subnet key"),
        ("10.5.1.00-24", "bad subnet key"),
        ("0x0a.5.1.0-24", "bad subnet key"),
        ("10.5.256-24", "bad subnet key"),  # inet_aton would read it, the key format does not
        ("167051520-24", "bad subnet key"),
        (" 10.5.1.0-24", "bad subnet key"),
        ("10.5.1.0-24\n", "bad subnet key"),
        ("10.5.1.0\x00-24", "bad subnet key"),
        ("\u0661\u0660.5.1.0-24", "bad subnet key"),  # Arabic-Indic digits
        ("10.5.1.0-\u0662\u0664", "not canonical"),
        ("10.12.13.0-24&FD00::-64", "bad subnet key"),
        ("10.12.13.0-24&fd00:0::-64", "not canonical"),
        ("10.12.13.0-24&fd00:0000::-64", "not canonical"),
        ("10.12.13.0-24&fd00::-064", "not canonical"),
        ("10.12.13.0-24&::ffff:10.0.0.0-120", "bad subnet key"),
        ("10.12.13.0-24&fd00::-64&fd01::-64", "bad subnet key"),
        ("10.12.13.0-24&", "bad subnet key"),
        ("10.12.13.0-24&-64", "bad subnet key"),
        # prefix lengths the old parser refused
        ("10.12.13.0-32", "above 31"),
        ("10.12.13.0-24&fd00::-128", "above 127"),
    ],
)
def test_non_canonical_keys_are_refused_as_before(key: str, message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        parse_canonical_key(key)
    assert outcome(parse_canonical_key, key) == outcome(reference_canonical_parse, key)


near_keys = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[0-9x]{1,4}(\.[0-9]{1,4}){0,4}-[0-9+ ]{1,3}(&[0-9a-fA-F:.]{0,16}-\d{1,4})?\Z"),
    st.builds(
        lambda ip, length, ip6, length6: f"{ip}-{length}" + (f"&{ip6}-{length6}" if ip6 else ""),
        st.ip_addresses(v=4), st.integers(0, 33),
        st.one_of(st.none(), st.ip_addresses(v=6)), st.integers(0, 129),
    ),
)


@given(near_keys)
def test_canonical_parse_agrees_with_the_reference(key: str) -> None:
    assert outcome(parse_canonical_key, key) == outcome(reference_canonical_parse, key)


def test_lease_key_and_subnets() -> None:
    lease = Lease(IPv4Network("10.1.2.0/24"), IPv6Network("fd00::/64"), LeaseAttrs())
    assert lease.key == "10.1.2.0-24&fd00::-64"
    assert lease.subnets() == (IPv4Network("10.1.2.0/24"), IPv6Network("fd00::/64"))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert lease.with_expiration(when).expiration == when
    assert lease.expiration is None  # frozen: the original is unchanged


# --- attrs JSON --------------------------------------------------------------------------

# Values as Go flanneld writes them (json.Marshal of lease.LeaseAttrs).
GO_VXLAN = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
)
GO_HOSTGW = '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}'
GO_UDP = '{"PublicIP":"10.0.0.6","PublicIPv6":null}'
GO_DUAL = (
    '{"PublicIP":"10.0.0.7","PublicIPv6":"fd00::7","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}'
)
GO_EXTENSION = (
    '{"PublicIP":"10.0.0.8","PublicIPv6":null,"BackendType":"extension","BackendData":"abc"}'
)
GO_WIREGUARD = (
    '{"PublicIP":"10.0.0.9","PublicIPv6":null,"BackendType":"wireguard",'
    '"BackendData":{"PublicKey":"q0cW1b5n4eGJ2JmZQ0XbT3QkU7uQd1oL8m3wA2y4hF0=","Port":51820}}'
)


@pytest.mark.parametrize("text", [GO_VXLAN, GO_HOSTGW, GO_UDP, GO_DUAL, GO_EXTENSION, GO_WIREGUARD])
def test_go_values_round_trip_byte_for_byte(text: str) -> None:
    assert encode_attrs(decode_attrs(text)) == text


def test_encode_exact_bytes() -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address("192.168.64.3"),
        backend_type="vxlan",
        backend_data=compact_json({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
    )
    assert encode_attrs(attrs) == GO_VXLAN


def test_encode_defaults_write_the_unspecified_address_and_null() -> None:
    assert encode_attrs(LeaseAttrs()) == '{"PublicIP":"0.0.0.0","PublicIPv6":null}'


def test_decode_fields() -> None:
    attrs = decode_attrs(GO_DUAL)
    assert attrs == LeaseAttrs(
        public_ip=IPv4Address("10.0.0.7"),
        public_ipv6=IPv6Address("fd00::7"),
        backend_type="vxlan",
        backend_data='{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}',
        backend_v6_data='{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}',
    )


def test_decode_is_case_insensitive_and_compacts_backend_data() -> None:
    attrs = decode_attrs(
        b'{"publicip": "10.0.0.1", "backendtype": "vxlan", "backenddata": {"VNI": 1}}'
    )
    assert attrs.public_ip == IPv4Address("10.0.0.1")
    assert attrs.backend_type == "vxlan"
    assert attrs.backend_data == '{"VNI":1}'


def test_decode_missing_public_ip_is_unspecified() -> None:
    attrs = decode_attrs("{}")
    assert attrs == LeaseAttrs()


def test_compact_json() -> None:
    assert compact_json({"a": [1, 2], "b": "x y"}) == '{"a":[1,2],"b":"x y"}'
    assert json.loads(compact_json("abc")) == "abc"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"10.0.0.1"', "not a JSON object"),
        ('{"PublicIP": 5}', "PublicIP must be an address string"),
        ('{"PublicIP": "fd00::1"}', "PublicIP is not a valid address"),
        ('{"PublicIP": "10.0.0.300"}', "PublicIP is not a valid address"),
        ('{"PublicIP": ""}', "PublicIP is not a valid address"),
        # spellings inet_aton would read (octal, short, hex) that an address must not use
        ('{"PublicIP": "010.0.0.1"}', "PublicIP is not a valid address"),
        ('{"PublicIP": "10.1"}', "PublicIP is not a valid address"),
        ('{"PublicIP": "0x0a.0.0.1"}', "PublicIP is not a valid address"),
        ('{"PublicIP": "10.0.0.1 "}', "PublicIP is not a valid address"),
        ('{"PublicIPv6": "10.0.0.1"}', "PublicIPv6 is not a valid address"),
        ('{"PublicIPv6": ["fd00::1"]}', "PublicIPv6 must be an address string"),
        ('{"BackendType": 5}', "BackendType must be a string"),
        ('{"BackendType": 0}', "BackendType must be a string"),
        ('{"BackendType": false}', "BackendType must be a string"),
        ('{"BackendType": []}', "BackendType must be a string"),
    ],
)
def test_decode_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(PeerDataError, match=message):
        decode_attrs(text)


@given(
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(1, 2**128 - 1)),
    st.sampled_from(["", "vxlan", "host-gw", "wireguard"]),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
)
def test_encode_then_decode_is_identity(
    ip: int, ip6: int | None, backend: str, data: dict[str, int] | None
) -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address(ip),
        public_ipv6=IPv6Address(ip6) if ip6 is not None else None,
        backend_type=backend,
        backend_data=compact_json(data) if data is not None else None,
    )
    assert decode_attrs(encode_attrs(attrs)) == attrs


# --- Go's exact values: read without the JSON parser, decoded as by it --------------------


def test_go_values_do_not_need_the_json_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("json.loads called for a value in Go's exact form")

    for text in (GO_VXLAN, GO_HOSTGW, GO_UDP, GO_DUAL, GO_WIREGUARD):
        expected = decode_attrs(text + " ")  # a trailing space: the JSON path
        monkeypatch.setattr(json, "loads", refuse)
        assert decode_attrs(text) == expected
        assert decode_attrs(text.encode()) == expected
        monkeypatch.undo()


def decoded(text: str) -> object:
    try:
        return decode_attrs(text)
    except PeerDataError as err:
        return ("refused", str(err))


# Raw JSON fragments, most in Go's plain form and some that only look like it:
# what the JSON path normalises (-0, 1.0, 1e3, escapes, big numbers) or refuses (01).
json_fragments = st.sampled_from([
    "0", "1", "-1", "4096", "51820", "-0", "01", "1.0", "1e3", "123456789012345678",
    "1" * 5000, "true", "false", "null", '""', '"vxlan"', '"0e:00:00:00:00:01"', '"q0c+/W="',
    '"a\\/b"', '"\\u0041"', '"é"', "[]", "{}", '{"a":1}', '"x y"',
])
json_names = st.sampled_from(["VNI", "VtepMAC", "PublicKey", "Port", "vni", "a_b", "x y", "é"])
flat_objects = st.lists(st.tuples(json_names, json_fragments), max_size=4).map(
    lambda members: "{" + ",".join(f'"{name}":{value}' for name, value in members) + "}"
)
ip_fragments = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f'"{ip}"'),
    st.sampled_from(['"010.0.0.1"', '"10.1"', '"10.0.0.256"', '"0.0.0.0"', '"fd00::1"', "5"]),
)
ip6_fragments = st.one_of(
    st.just("null"), st.ip_addresses(v=6).map(lambda ip: f'"{ip}"'),
    st.sampled_from(['"FD00::1"', '"fd00::1::2"', '"10.0.0.1"', '"::"', '"::ffff:10.0.0.1"']),
)
go_like_values = st.builds(
    lambda ip, ip6, backend, data, data6: (
        '{"PublicIP":' + ip + ',"PublicIPv6":' + ip6
        + ("" if backend is None else ',"BackendType":' + backend)
        + ("" if data is None else ',"BackendData":' + data)
        + ("" if data6 is None else ',"BackendV6Data":' + data6) + "}"
    ),
    ip_fragments, ip6_fragments,
    st.one_of(st.none(), st.sampled_from(['"vxlan"', '"host-gw"', '""', '"a b"', "1"])),
    st.one_of(st.none(), flat_objects, json_fragments),
    st.one_of(st.none(), flat_objects),
)


@given(go_like_values)
@example('{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendData":{"VNI":1,"VNI":2}}')
@example('{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendData":{"Port":-0}}')
def test_go_like_values_decode_as_through_json(text: str) -> None:
    # The same document with a trailing space never takes the regular-expression path.
    assert decoded(text) == decoded(text + " ")


@given(st.one_of(flat_objects, json_fragments))
@example('{"VNI":1,"VNI":2}')
@example('{"Port":-0}')
def test_compact_flat_objects_are_what_the_json_path_gives(text: str) -> None:
    flat = compact_flat_object(text)
    if flat is not None:
        assert flat == compact_json(json.loads(text))


@pytest.mark.parametrize("data", [
    '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}', "{}",
    '{"PublicKey":"q0cW1b5n4eGJ2JmZQ0XbT3QkU7uQd1oL8m3wA2y4hF0=","Port":51820}',
])
def test_backend_data_as_go_writes_it_is_taken_as_it_is(data: str) -> None:
    assert compact_flat_object(data) == data
