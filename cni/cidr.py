"""CIDR and IP text as Go's ``net`` package parses and prints it (pure).

Parsing accepts exactly what :mod:`ipaddress` accepts (dotted quads without
leading zeros; RFC 4291 IPv6 text with at most one ``::`` and an optional
dotted-quad tail; no zone) and printing writes what its ``str`` writes
(RFC 5952: lower case, the first longest run of two or more zero groups as
``::``), with Go's exception for IPv4-mapped IPv6 addresses. It is written
out here because importing :mod:`ipaddress` (with ``functools`` and
``collections``) was the largest part of ADD's start-up;
``tests/unit/test_cni_cidr.py`` holds it against :mod:`ipaddress`.
"""

from __future__ import annotations

from cni.record import Record

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_BITS = {4: 32, 6: 128}
_V4_MAPPED_PREFIX = 0xFFFF


class Address(Record):
    """An IP address: its version (4 or 6) and its value as an integer."""

    __slots__ = ("value", "version")
    version: int
    value: int

    def __init__(self, version: int, value: int) -> None:
        self._set("version", version)
        self._set("value", value)

    @property
    def ipv4_mapped(self) -> Address | None:
        """The IPv4 address of an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``)."""
        if self.version == 6 and self.value >> 32 == _V4_MAPPED_PREFIX:
            return Address(4, self.value & 0xFFFFFFFF)
        return None

    def __str__(self) -> str:
        if self.version == 4:
            return ".".join(str(self.value >> shift & 0xFF) for shift in (24, 16, 8, 0))
        groups = [f"{self.value >> shift & 0xFFFF:x}" for shift in range(112, -16, -16)]
        return ":".join(_compress(groups))


class Network(Record):
    """An address block: its first address (host bits clear) and prefix length."""

    __slots__ = ("network_address", "prefixlen")
    network_address: Address
    prefixlen: int

    def __init__(self, network_address: Address, prefixlen: int) -> None:
        self._set("network_address", network_address)
        self._set("prefixlen", prefixlen)


class Interface(Record):
    """An address with the prefix length of its network (host bits kept)."""

    __slots__ = ("ip", "prefixlen")
    ip: Address
    prefixlen: int

    def __init__(self, ip: Address, prefixlen: int) -> None:
        self._set("ip", ip)
        self._set("prefixlen", prefixlen)

    @property
    def network(self) -> Network:
        host_bits = _BITS[self.ip.version] - self.prefixlen
        value = self.ip.value >> host_bits << host_bits
        return Network(Address(self.ip.version, value), self.prefixlen)


def _compress(groups: list[str]) -> list[str]:
    """Replace the first longest run of two or more ``0`` groups by an empty one."""
    best_start, best_length, start, length = -1, 0, -1, 0
    for index, group in enumerate(groups):
        if group != "0":
            start, length = -1, 0
            continue
        if start == -1:
            start = index
        length += 1
        if length > best_length:
            best_start, best_length = start, length
    if best_length < 2:
        return groups
    end = best_start + best_length
    compressed = groups[:best_start] + [""] + groups[end:]
    if end == len(groups):
        compressed.append("")
    if best_start == 0:
        compressed.insert(0, "")
    return compressed


def _ipv4(text: str) -> int | None:
    octets = text.split(".")
    if len(octets) != 4:
        return None
    value = 0
    for octet in octets:
        if not (octet.isascii() and octet.isdigit()) or len(octet) > 3:
            return None
        if octet[0] == "0" and octet != "0":
            return None  # leading zeros are refused (an octal reading is ambiguous)
        number = int(octet)
        if number > 255:
            return None
        value = value << 8 | number
    return value


def _ipv6(text: str) -> int | None:
    parts = text.split(":")
    if len(parts) < 3:
        return None
    if "." in parts[-1]:
        tail = _ipv4(parts.pop())
        if tail is None:
            return None
        parts += [f"{tail >> 16:x}", f"{tail & 0xFFFF:x}"]
    if len(parts) > 9:
        return None
    empty = [index for index in range(1, len(parts) - 1) if not parts[index]]
    if len(empty) > 1:
        return None
    if empty:
        high, low = empty[0], len(parts) - empty[0] - 1
        if not parts[0]:
            high -= 1
            if high:
                return None
        if not parts[-1]:
            low -= 1
            if low:
                return None
        skipped = 8 - high - low
        if skipped < 1:
            return None
    else:
        if len(parts) != 8 or not parts[0] or not parts[-1]:
            return None
        high, low, skipped = 8, 0, 0
    value = 0
    for group in [*parts[:high], *["0"] * skipped, *parts[len(parts) - low :]]:
        if not group or len(group) > 4 or not _HEX_DIGITS.issuperset(group):
            return None
        value = value << 16 | int(group, 16)
    return value


def _address(text: str) -> Address | None:
    value = _ipv4(text)
    if value is not None:
        return Address(4, value)
    value = _ipv6(text) if text else None
    return None if value is None else Address(6, value)


def parse_cidr(text: str) -> Interface:
    """Parse ``ip/prefix`` like ``net.ParseCIDR`` (decimal prefix, no zone, no netmask).

    The result keeps the host bits; ``.network`` is the masked network.
    Raises ValueError with Go's message.
    """
    address, slash, prefix = text.partition("/")
    if not slash or not prefix.isascii() or not prefix.isdigit() or "%" in address:
        raise ValueError(f"invalid CIDR address: {text}")
    ip = _address(address)
    try:
        prefixlen = int(prefix)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        prefixlen = -1
    if ip is None or not 0 <= prefixlen <= _BITS[ip.version]:
        raise ValueError(f"invalid CIDR address: {text}")
    return Interface(ip, prefixlen)


def parse_ip(text: str) -> Address:
    """Parse an IP address like ``net.ParseIP``. Raises ValueError."""
    ip = None if "%" in text or "/" in text else _address(text)
    if ip is None:
        raise ValueError(f"invalid IP address: {text}")
    return ip


def ip_string(address: Address) -> str:
    """``net.IP.String()``: an IPv4-mapped IPv6 address prints as IPv4."""
    return str(address.ipv4_mapped or address)


def cidr_string(address: Address, prefixlen: int) -> str:
    """``net.IPNet.String()`` for ``address/prefixlen`` (host bits are kept)."""
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"{mapped}/{max(prefixlen - 96, 0)}"
    return f"{address}/{prefixlen}"


def network_string(network: Network) -> str:
    """``network`` as Go prints it."""
    return cidr_string(network.network_address, network.prefixlen)


def interface_string(interface: Interface) -> str:
    """``interface`` with its host bits, as Go prints it."""
    return cidr_string(interface.ip, interface.prefixlen)
