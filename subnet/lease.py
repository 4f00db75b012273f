"""The lease model shared by every subnet manager and backend.

Wire formats here are upstream flannel's, byte for byte:

* the etcd key of a lease, ``10.5.34.0-24`` or ``10.5.34.0-24&fd00:12:13::-64``;
* the lease value (``LeaseAttrs`` JSON), e.g.
  ``{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",
  "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}``.

Backend data stays opaque JSON text; only the owning backend decodes it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeAlias

from subnet.errors import PeerDataError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

UNSPECIFIED_V4 = ipaddress.IPv4Address("0.0.0.0")


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a node advertises with its lease.

    ``backend_data``/``backend_v6_data`` are compact JSON text (or None).
    """

    public_ip: ipaddress.IPv4Address = UNSPECIFIED_V4
    public_ipv6: ipaddress.IPv6Address | None = None
    backend_type: str = ""
    backend_data: str | None = None
    backend_v6_data: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """One node's subnet(s) and attributes.  At least one subnet is set."""

    subnet: ipaddress.IPv4Network | None
    ipv6_subnet: ipaddress.IPv6Network | None
    attrs: LeaseAttrs
    expiration: datetime | None = None
    # When the store says this lease was first created (etcd create revision,
    # Node creation time): of two leases claiming one subnet or VTEP MAC, the
    # older keeps it.  None (unknown) sorts last.
    claim_order: float | None = field(default=None, compare=False)
    # the etcd key name, computed once: passes over thousands of leases sort and index by it
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", subnet_key(self.subnet, self.ipv6_subnet))

    def with_expiration(self, expiration: datetime | None) -> Lease:
        return replace(self, expiration=expiration)

    def seniority(self) -> tuple[bool, float, str]:
        """Sort key: older claims first, then by key (deterministic on ties)."""
        return (self.claim_order is None, self.claim_order or 0.0, self.key)

    def subnets(self) -> tuple[IPNetwork, ...]:
        return tuple(s for s in (self.subnet, self.ipv6_subnet) if s is not None)


# --- keys ------------------------------------------------------------------------

_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?")


def subnet_key(subnet: ipaddress.IPv4Network | None, ipv6: ipaddress.IPv6Network | None) -> str:
    """The etcd key name of a lease (the part after ``<prefix>/subnets/``).

    etcd leases always have an IPv4 subnet; an IPv6-only lease (kube mode)
    gets the IPv6 part alone, which serves as its identity in memory.
    """
    if ipv6 is None:
        if subnet is None:
            raise ValueError("a lease needs at least one subnet")
        return _ipv4_part(subnet)
    v6_part = f"{ipv6.network_address}-{ipv6.prefixlen}"
    return v6_part if subnet is None else f"{_ipv4_part(subnet)}&{v6_part}"


def _ipv4_part(subnet: ipaddress.IPv4Network) -> str:
    # spelt as str() does, several times faster (every Lease needs it)
    address = int(subnet.network_address)
    return (
        f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}"
        f"-{subnet.prefixlen}"
    )


def parse_subnet_key(
    key: str,
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """Parse a key name as written by :func:`subnet_key`; PeerDataError if malformed.

    Like upstream, an IPv4 prefix above 31 and an IPv6 prefix above 127 are
    rejected; unlike upstream, the whole name must match (no leading junk).
    """
    match = _KEY_RE.fullmatch(key)
    if match is None:
        raise PeerDataError(f"bad subnet key {key!r}")
    v4_ip, v4_len, v6_ip, v6_len = match.groups()
    try:
        if int(v4_len) > 31:
            raise ValueError("IPv4 prefix length above 31")
        v4 = ipaddress.IPv4Network(f"{v4_ip}/{int(v4_len)}", strict=False)
        v6 = None
        if v6_ip is not None:
            if int(v6_len) > 127:
                raise ValueError("IPv6 prefix length above 127")
            v6 = ipaddress.IPv6Network(f"{v6_ip}/{int(v6_len)}", strict=False)
    except ValueError as err:
        raise PeerDataError(f"bad subnet key {key!r}: {err}") from err
    return v4, v6


# The prefix lengths a key may carry, spelt as subnet_key writes them.
_V4_LENGTHS = {str(n): n for n in range(32)}
_V6_LENGTHS = {str(n): n for n in range(128)}


def parse_canonical_key(
    key: str,
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    """Parse a key name that is exactly what :func:`subnet_key` writes; PeerDataError if not.

    Any other spelling of a subnet (host bits set, a leading zero) is refused:
    it would alias a real lease.  Listings parse thousands of keys, so the
    canonical IPv4 part is read without ``ipaddress``'s text parser; everything
    else goes through :func:`parse_subnet_key`, which words the refusal.
    """
    fast = _canonical_networks(key)
    if fast is not None:
        return fast
    v4, v6 = parse_subnet_key(key)
    canonical = subnet_key(v4, v6)
    if canonical != key:
        raise PeerDataError(f"subnet key {key!r} is not canonical ({canonical})")
    return v4, v6


def _canonical_networks(
    key: str,
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None] | None:
    """The networks of a canonical key, or None when the slow path must decide."""
    v4_part, amp, v6_part = key.partition("&")
    v4_text, _, v4_len = v4_part.partition("-")
    length = _V4_LENGTHS.get(v4_len)
    address = canonical_ipv4_int(v4_text)
    if length is None or address is None or address & (0xFFFFFFFF >> length):
        return None
    v4 = ipaddress.IPv4Network((address, length))
    if not amp:
        return v4, None
    v6_text, _, v6_len = v6_part.partition("-")
    length = _V6_LENGTHS.get(v6_len)
    try:
        address = int(ipaddress.IPv6Address(v6_text))
    except ValueError:
        return None
    if length is None or address & ((1 << (128 - length)) - 1):
        return None
    v6 = ipaddress.IPv6Network((address, length))
    # the text parser reads spellings that ipaddress would not write (upper case, zeros)
    return (v4, v6) if str(v6.network_address) == v6_text else None


# Each octet as str() spells it: a dotted quad made of these is canonical.
_OCTETS = {str(n): n for n in range(256)}


def canonical_ipv4_int(text: str) -> int | None:
    """The address of a dotted quad spelt canonically (``10.5.1.0``), else None."""
    octets = text.split(".")
    if len(octets) != 4:
        return None
    address = 0
    for octet in octets:
        value = _OCTETS.get(octet)
        if value is None:
            return None
        address = address << 8 | value
    return address


# --- attrs JSON ----------------------------------------------------------------------


def encode_attrs(attrs: LeaseAttrs) -> str:
    """Serialise attributes exactly as Go flanneld does (field order, omitempty)."""
    parts = [
        '"PublicIP":' + json.dumps(str(attrs.public_ip)),
        '"PublicIPv6":' + (json.dumps(str(attrs.public_ipv6)) if attrs.public_ipv6 else "null"),
    ]
    if attrs.backend_type:
        parts.append('"BackendType":' + json.dumps(attrs.backend_type))
    if attrs.backend_data is not None:
        parts.append('"BackendData":' + attrs.backend_data)
    if attrs.backend_v6_data is not None:
        parts.append('"BackendV6Data":' + attrs.backend_v6_data)
    return "{" + ",".join(parts) + "}"


# A real lease value is about 200 bytes; anything this large is not one, and
# is refused before it is parsed.
MAX_LEASE_VALUE = 64 * 1024


# json.dumps builds an encoder per call; this one is built once (it keeps no state).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def compact_json(value: Any) -> str:
    """JSON text without spaces, as Go's encoder compacts a RawMessage."""
    return _COMPACT.encode(value)


def decode_attrs(text: str | bytes) -> LeaseAttrs:
    """Parse a lease value; PeerDataError on anything malformed or over MAX_LEASE_VALUE."""
    if len(text) > MAX_LEASE_VALUE:
        raise PeerDataError(
            f"lease value is {len(text)} bytes, more than any lease needs (at most "
            f"{MAX_LEASE_VALUE})"
        )
    attrs = _decode_go_value(text)
    if attrs is not None:
        return attrs
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # too deep: RecursionError
        raise PeerDataError(f"lease value is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise PeerDataError("lease value is not a JSON object")
    fields = _fold_keys(doc)
    public_ip = _optional_ip(fields.get("publicip"), ipv4_address, "PublicIP")
    public_ipv6 = _optional_ip(fields.get("publicipv6"), ipaddress.IPv6Address, "PublicIPv6")
    backend_type = fields.get("backendtype")
    if backend_type is None:
        backend_type = ""
    if not isinstance(backend_type, str):
        raise PeerDataError(f"BackendType must be a string, not {backend_type!r}")
    return LeaseAttrs(
        public_ip=public_ip or UNSPECIFIED_V4,
        public_ipv6=public_ipv6,
        backend_type=sys.intern(backend_type),  # thousands of leases share one or two names
        backend_data=_raw(fields.get("backenddata")),
        backend_v6_data=_raw(fields.get("backendv6data")),
    )


# A value as Go flanneld and encode_attrs write it, whose backend data is a flat
# object of plain names, integers and plain strings (what vxlan, wireguard,
# host-gw and udp write), is already the text the JSON path would produce: one
# regular expression takes it apart.  Anything else (spaces, escapes, floats,
# nesting, other spellings of the field names, a key twice) goes through json.
_FLAT_VALUE = r'(?:"[A-Za-z0-9+/=:._-]*"|-?[1-9][0-9]{0,17}|0|true|false|null)'
_FLAT_MEMBER = rf'"[A-Za-z0-9_]+":{_FLAT_VALUE}'
_FLAT_OBJECT = rf"\{{(?:{_FLAT_MEMBER}(?:,{_FLAT_MEMBER})*)?\}}"
_GO_VALUE = re.compile(
    r'\{"PublicIP":"([0-9.]{7,15})","PublicIPv6":(?:null|"([0-9a-f:]{2,39})")'
    r'(?:,"BackendType":"([A-Za-z0-9_.-]*)")?'
    rf'(?:,"BackendData":({_FLAT_OBJECT}))?(?:,"BackendV6Data":({_FLAT_OBJECT}))?\}}'
)
_FLAT_KEY = re.compile(r'[{,]"([A-Za-z0-9_]+)":')


def _decode_go_value(text: str | bytes) -> LeaseAttrs | None:
    """The attributes of a value in Go's exact form, else None (the JSON path decides)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    match = _GO_VALUE.fullmatch(text)
    if match is None:
        return None
    public_ip, public_ipv6, backend_type, data, v6_data = match.groups()
    if not (_distinct_keys(data) and _distinct_keys(v6_data)):
        return None  # json keeps the last of twice-named keys: let it
    return LeaseAttrs(
        public_ip=_optional_ip(public_ip, ipv4_address, "PublicIP"),
        public_ipv6=_optional_ip(public_ipv6, ipaddress.IPv6Address, "PublicIPv6"),
        backend_type=sys.intern(backend_type or ""),
        backend_data=data,
        backend_v6_data=v6_data,
    )


_FLAT_OBJECT_RE = re.compile(_FLAT_OBJECT)


def compact_flat_object(text: str) -> str | None:
    """``text`` if it is a flat object in compact form, as Go writes backend data (then it
    is what ``compact_json(json.loads(text))`` gives); else None."""
    if _FLAT_OBJECT_RE.fullmatch(text) is None or not _distinct_keys(text):
        return None
    return text


def _distinct_keys(flat: str | None) -> bool:
    if flat is None:
        return True
    keys = _FLAT_KEY.findall(flat)
    return len(set(keys)) == len(keys)


def _fold_keys(doc: dict[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in doc.items()}


def ipv4_address(text: str) -> ipaddress.IPv4Address:
    """``IPv4Address(text)``; the usual spelling is read without the text parser."""
    address = canonical_ipv4_int(text)
    return ipaddress.IPv4Address(text if address is None else address)


def _optional_ip(value: Any, parse: Callable[[str], Any], name: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PeerDataError(f"{name} must be an address string, not {value!r}")
    try:
        return parse(value)
    except ValueError as err:
        raise PeerDataError(f"{name} is not a valid address: {value!r}") from err


def _raw(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return compact_json(value)
    except RecursionError as err:
        raise PeerDataError("backend data is nested too deeply") from err
