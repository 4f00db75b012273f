"""CIDR and IP text as Go's ``net`` package parses and prints it (pure)."""

from __future__ import annotations

import ipaddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Aliases for the type checker only; never evaluated at run time (3.9).
    Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
    Address = ipaddress.IPv4Address | ipaddress.IPv6Address
    Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(text: str) -> Interface:
    """Parse ``ip/prefix`` like ``net.ParseCIDR`` (decimal prefix, no zone, no netmask).

    The result keeps the host bits; ``.network`` is the masked network.
    Raises ValueError with Go's message.
    """
    address, slash, prefix = text.partition("/")
    if not slash or not prefix.isascii() or not prefix.isdigit() or "%" in address:
        raise ValueError(f"invalid CIDR address: {text}")
    try:
        return ipaddress.ip_interface(f"{address}/{int(prefix)}")
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None


def parse_ip(text: str) -> Address:
    """Parse an IP address like ``net.ParseIP``. Raises ValueError."""
    if "%" in text or "/" in text:
        raise ValueError(f"invalid IP address: {text}")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address: {text}") from None


def ip_string(address: Address) -> str:
    """``net.IP.String()``: an IPv4-mapped IPv6 address prints as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def cidr_string(address: Address, prefixlen: int) -> str:
    """``net.IPNet.String()`` for ``address/prefixlen`` (host bits are kept)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"{address.ipv4_mapped}/{max(prefixlen - 96, 0)}"
    return f"{address}/{prefixlen}"


def network_string(network: Network) -> str:
    """``network`` as Go prints it."""
    return cidr_string(network.network_address, network.prefixlen)


def interface_string(interface: Interface) -> str:
    """``interface`` with its host bits, as Go prints it."""
    return cidr_string(interface.ip, interface.network.prefixlen)
