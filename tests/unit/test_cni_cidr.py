"""cni.cidr accepts and prints exactly what the ipaddress-based parsing did.

The plugin parses CIDRs without :mod:`ipaddress` (its import was most of
ADD's start-up); the reference here is the earlier implementation over
:mod:`ipaddress`, with Go's printing of IPv4-mapped addresses.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from cni import cidr

Ref = ipaddress.IPv4Address | ipaddress.IPv6Address


def ref_cidr_string(address: Ref, prefixlen: int) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"{address.ipv4_mapped}/{max(prefixlen - 96, 0)}"
    return f"{address}/{prefixlen}"


def ref_parse_cidr(text: str) -> tuple[str, str] | None:
    """(interface, network) as Go prints them, or None where parsing fails."""
    address, slash, prefix = text.partition("/")
    if not slash or not prefix.isascii() or not prefix.isdigit() or "%" in address:
        return None
    try:
        interface = ipaddress.ip_interface(f"{address}/{int(prefix)}")
    except ValueError:
        return None
    network = interface.network
    return (
        ref_cidr_string(interface.ip, network.prefixlen),
        ref_cidr_string(network.network_address, network.prefixlen),
    )


def ref_parse_ip(text: str) -> str | None:
    if "%" in text or "/" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def ours_cidr(text: str) -> tuple[str, str] | None:
    try:
        interface = cidr.parse_cidr(text)
    except ValueError as err:
        assert str(err) == f"invalid CIDR address: {text}"
        return None
    return cidr.interface_string(interface), cidr.network_string(interface.network)


def ours_ip(text: str) -> str | None:
    try:
        return cidr.ip_string(cidr.parse_ip(text))
    except ValueError as err:
        assert str(err) == f"invalid IP address: {text}"
        return None


CASES = [
    "10.244.1.1/24", "0.0.0.0/0", "255.255.255.255/32", "1.2.3.4/33", "256.1.1.1/8",
    "01.2.3.4/8", "0.0.0.00/8", "1.2.3/8", "1.2.3.4.5/8", "1..3.4/8", "1.2.3.4/024",
    "1.2.3.4/", "/24", "1.2.3.4/+24", "1.2.3.4/ 24", " 1.2.3.4/24", "1.2.3.4 /24",
    "1.2.3.4/0x18", "١.2.3.4/8", "1.2.3.٤/8", "1.2.3.4/٢٤", "1.2.3.4/24/8", "1234.1.1.1/8",
    "::/0", "::1/128", "fe80::1/64", "2001:db8::/32", "2001:DB8::A/48", "::/129",
    "::/00000128", "::/" + "0" * 5000 + "64", "::/" + "9" * 5000, "::ffff:10.1.2.3/120",
    "::ffff:10.1.2.3/90", "::ffff:a01:203/128", "::ffff:0:0/96", "::ffff:1.2.3.04/128",
    "1::2::3/64", ":1::2/64", "1::2:/64", ":/64", "::/64", ":::/64", "1:2:3:4:5:6:7:8/64",
    "1:2:3:4:5:6:7:8:9/64", "1:2:3:4:5:6:7::/64", "::1:2:3:4:5:6:7/64",
    "1:2:3:4::5:6:7:8/64", "1:0:0:1:0:0:0:1/64", "0:0:1:0:0:1:0:0/64", "1:0:2:3:4:5:6:7/64",
    "0:0:0:0:0:0:0:0/64", "12345::/64", "g::/64", "::1.2.3.4/128", "::1.2.3/128",
    "1:2:3:4:5:6:1.2.3.4/64", "1:2:3:4:5:6:7:1.2.3.4/64", "1.2.3.4::/64", "::1.2.3.4:5/64",
    "fe80::1%eth0/64", "A:B::C/64", "0001:02::3/64", "00001::/64", "1:2:3:4:5:6:7:/64",
    ":2:3:4:5:6:7:8/64", "+1::/64", "1:-1::/64", "::ffff:255.255.255.255/128",
]


@pytest.mark.parametrize("text", CASES)
def test_cases_agree_with_ipaddress(text: str) -> None:
    assert ours_cidr(text) == ref_parse_cidr(text)
    address = text.partition("/")[0]
    assert ours_ip(address) == ref_parse_ip(address)


def _random_address(rng: random.Random) -> str:
    if rng.random() < 0.4:
        address: Ref = ipaddress.IPv4Address(rng.getrandbits(32))
        return str(address)
    groups = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.getrandbits(16)]) for _ in range(8)]
    if rng.random() < 0.2:
        groups[:6] = [0, 0, 0, 0, 0, 0xFFFF]  # IPv4-mapped
    value = 0
    for group in groups:
        value = value << 16 | group
    address = ipaddress.IPv6Address(value)
    text = rng.choice([str(address), address.exploded])
    return text.upper() if rng.random() < 0.2 else text


def _mutate(rng: random.Random, text: str) -> str:
    alphabet = "0123456789abcdefABCDEFgG:./% "
    for _ in range(rng.randint(1, 3)):
        position = rng.randint(0, len(text))
        operation = rng.randrange(3)
        if operation == 0:
            text = text[:position] + rng.choice(alphabet) + text[position:]
        elif operation == 1:
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position] + rng.choice(alphabet) + text[position + 1 :]
    return text


def test_random_and_mutated_text_agrees_with_ipaddress() -> None:
    rng = random.Random(13)
    accepted = refused = 0
    for _ in range(20000):
        text = f"{_random_address(rng)}/{rng.randint(0, 130)}"
        if rng.random() < 0.5:
            text = _mutate(rng, text)
        expected = ref_parse_cidr(text)
        assert ours_cidr(text) == expected, text
        address = text.partition("/")[0]
        assert ours_ip(address) == ref_parse_ip(address), address
        accepted += expected is not None
        refused += expected is None
    # Both outcomes were exercised in bulk, or the comparison proves little.
    assert accepted > 5000 and refused > 5000


def test_networks_compare_by_value() -> None:
    first = cidr.parse_cidr("10.1.2.3/16").network
    assert first == cidr.parse_cidr("10.1.0.0/16").network
    assert first != cidr.parse_cidr("10.1.0.0/17").network
    assert cidr.parse_cidr("::a01:0/112").network != cidr.parse_cidr("10.1.0.0/16").network
    assert len({first, cidr.parse_cidr("10.1.255.255/16").network}) == 1
