"""Choosing a free subnet: candidates, overlap with taken subnets, random pick, exhaustion."""

from __future__ import annotations

import random
from collections import Counter
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subnet.allocator import (
    MAX_CANDIDATES,
    can_be_peer,
    candidates,
    choose_subnet,
    free_subnets,
    in_range,
)
from subnet.errors import SubnetsExhaustedError
from subnet.lease import IPNetwork
from subnet.netconf import SubnetRange, parse_net_config, subnet_ranges


def v4_range(text: str) -> SubnetRange:
    rng = subnet_ranges(parse_net_config(text))[0]
    assert rng is not None
    return rng


SMALL = v4_range('{"Network": "10.6.0.0/28"}')  # /30s: .4, .8, .12
BIG = v4_range('{"Network": "10.0.0.0/8"}')  # 65535 /24s


def nets(*texts: str) -> list[IPNetwork]:
    return [ip_network(t) for t in texts]


def test_candidates_run_from_min_to_max_inclusive() -> None:
    assert list(candidates(SMALL)) == nets("10.6.0.4/30", "10.6.0.8/30", "10.6.0.12/30")


def test_candidates_honour_explicit_min_and_max() -> None:
    rng = v4_range('{"Network": "10.1.0.0/16", "SubnetMin": "10.1.10.0", "SubnetMax": "10.1.12.0"}')
    assert list(candidates(rng)) == nets("10.1.10.0/24", "10.1.11.0/24", "10.1.12.0/24")


def test_ipv6_candidates() -> None:
    rng = SubnetRange(
        IPv6Network("fd00::/62"), 64, IPv6Address("fd00:0:0:1::"), IPv6Address("fd00:0:0:3::")
    )
    assert list(candidates(rng)) == nets("fd00:0:0:1::/64", "fd00:0:0:2::/64", "fd00:0:0:3::/64")


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("10.6.0.4/30", True),
        ("10.6.0.12/30", True),
        ("10.6.0.0/30", False),  # below SubnetMin
        ("10.6.0.16/30", False),  # outside Network
        ("10.6.0.8/29", False),  # wrong length
        ("fd00::/30", False),  # wrong family
    ],
)
def test_in_range(subnet: str, expected: bool) -> None:
    assert in_range(ip_network(subnet), SMALL) is expected


def test_free_subnets_skip_exact_and_overlapping_leases() -> None:
    rng = v4_range('{"Network": "10.1.0.0/16", "SubnetMin": "10.1.1.0", "SubnetMax": "10.1.8.0"}')
    taken = nets(
        "10.1.1.0/24",  # exact
        "10.1.2.0/23",  # covers .2 and .3
        "10.1.5.128/25",  # inside .5
        "10.2.0.0/24",  # elsewhere: irrelevant
        "fd00::/64",  # other family: irrelevant
    )
    assert free_subnets(rng, taken) == nets(
        "10.1.4.0/24", "10.1.6.0/24", "10.1.7.0/24", "10.1.8.0/24"
    )


def test_free_subnets_are_limited_to_the_first_hundred() -> None:
    free = free_subnets(BIG, nets("10.0.1.0/24"))
    assert len(free) == MAX_CANDIDATES == 100
    assert free[0] == IPv4Network("10.0.2.0/24")
    assert free[-1] == IPv4Network("10.0.101.0/24")


taken_subnets = st.lists(
    st.one_of(
        st.builds(lambda addr, length: ip_network((addr, length), strict=False),
                  st.integers(0x0A060000, 0x0A06001F), st.integers(8, 32)),
        st.builds(lambda addr, length: ip_network((addr, length), strict=False),
                  st.integers(0, 2**128 - 1), st.integers(0, 128)),
    ),
    max_size=8,
)


@given(taken_subnets, st.integers(1, 4))
def test_free_subnets_are_the_candidates_no_peer_subnet_overlaps(
    taken: list[IPNetwork], limit: int
) -> None:
    # SMALL is 10.6.0.0/28 in /30s: the generated subnets hit exact, wider, narrower,
    # whole-Network and other-family cases
    peers = [t for t in taken if can_be_peer(t, SMALL)]
    expected = [c for c in candidates(SMALL) if not any(c.overlaps(t) for t in peers)]
    assert free_subnets(SMALL, taken, limit) == expected[:limit]


def test_a_subnet_as_wide_as_the_network_blocks_nothing_even_at_the_range_length() -> None:
    # subnet_ranges never makes such a range; a hand-made one must still be handled
    whole = SubnetRange(IPv4Network("10.6.0.0/28"), 28, IPv4Address("10.6.0.0"),
                        IPv4Address("10.6.0.0"))
    assert free_subnets(whole, nets("10.6.0.0/28")) == nets("10.6.0.0/28")


def test_choose_picks_only_free_subnets() -> None:
    taken = nets("10.6.0.4/30", "10.6.0.12/30")
    for seed in range(20):
        assert choose_subnet(SMALL, taken, random.Random(seed)) == IPv4Network("10.6.0.8/30")


def test_choose_is_random_among_the_free_candidates() -> None:
    chooser = random.Random(1)
    picks = Counter(choose_subnet(SMALL, [], chooser) for _ in range(600))
    assert set(picks) == set(candidates(SMALL))
    assert min(picks.values()) > 120  # roughly uniform: 200 expected each


def test_choose_without_a_chooser_still_works() -> None:
    assert choose_subnet(SMALL, nets("10.6.0.4/30", "10.6.0.8/30")) == IPv4Network("10.6.0.12/30")


def test_exhaustion_names_the_range_and_the_fix() -> None:
    with pytest.raises(SubnetsExhaustedError) as info:
        choose_subnet(SMALL, list(candidates(SMALL)))
    message = str(info.value)
    assert "out of subnets" in message
    assert "10.6.0.4" in message and "10.6.0.12" in message and "/30" in message
    assert "delete leases of dead nodes" in message


def test_a_wider_lease_blocks_what_it_covers() -> None:
    assert choose_subnet(SMALL, nets("10.6.0.0/29", "10.6.0.8/30")) == IPv4Network("10.6.0.12/30")


def test_a_lease_covering_the_whole_network_blocks_nothing() -> None:
    # Every node refuses it as a peer (it overlaps each own subnet), so the
    # allocator must not count it either (issue 9, item 4).
    assert choose_subnet(SMALL, nets("10.6.0.0/28", "10.6.0.4/30", "10.6.0.8/30")) == (
        IPv4Network("10.6.0.12/30")
    )


@given(st.sets(st.integers(0, 255), max_size=200), st.integers(0, 2**32))
def test_choice_is_always_free_and_in_range(taken_octets: set[int], seed: int) -> None:
    rng = v4_range('{"Network": "10.7.0.0/16"}')
    taken: list[IPNetwork] = [IPv4Network(f"10.7.{o}.0/24") for o in taken_octets]
    chosen = choose_subnet(rng, taken, random.Random(seed))
    assert in_range(chosen, rng)
    assert chosen not in taken


def test_exhausted_when_every_candidate_is_taken_one_by_one() -> None:
    rng = v4_range('{"Network": "10.7.0.0/16"}')
    taken: list[IPNetwork] = []
    chooser = random.Random(3)
    for _ in range(255):
        taken.append(choose_subnet(rng, taken, chooser))
    assert sorted(taken) == list(candidates(rng))
    with pytest.raises(SubnetsExhaustedError):
        choose_subnet(rng, taken, chooser)
