"""Choosing a free subnet: pure functions over a range and the taken subnets."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Iterator

from subnet.errors import SubnetsExhaustedError
from subnet.lease import IPNetwork
from subnet.netconf import SubnetRange

MAX_CANDIDATES = 100


def candidates(rng: SubnetRange) -> Iterator[IPNetwork]:
    """Every subnet of the range, from SubnetMin to SubnetMax inclusive."""
    for start in _candidate_starts(rng):
        yield ipaddress.ip_network((start, rng.subnet_len))


def _candidate_starts(rng: SubnetRange) -> range:
    size = 1 << (rng.network.max_prefixlen - rng.subnet_len)
    return range(int(rng.subnet_min), int(rng.subnet_max) + 1, size)


def in_range(subnet: IPNetwork, rng: SubnetRange) -> bool:
    """Is ``subnet`` one that this range could have handed out?"""
    return (
        subnet.version == rng.network.version
        and subnet.prefixlen == rng.subnet_len
        and int(rng.subnet_min) <= int(subnet.network_address) <= int(rng.subnet_max)
    )


def can_be_peer(subnet: IPNetwork, rng: SubnetRange) -> bool:
    """Could a lease on ``subnet`` be a working peer anywhere in this network?

    A subnet that covers the whole Network (``10.244.0.0-16`` in a /16)
    overlaps every node's own subnet, so every node refuses it as a peer;
    it blocks nothing either.
    """
    return not (subnet.version == rng.network.version
                and subnet.prefixlen <= rng.network.prefixlen
                and subnet.overlaps(rng.network))


def free_subnets(
    rng: SubnetRange, taken: Iterable[IPNetwork], limit: int = MAX_CANDIDATES
) -> list[IPNetwork]:
    """Up to ``limit`` subnets of the range that overlap no taken subnet that could be a peer."""
    # One pass over thousands of leases, cheapest checks first: a subnet of the
    # range's length, narrower than the Network, can always be a peer.
    version, length = rng.network.version, rng.subnet_len
    exact_ok = length > rng.network.prefixlen
    exact: set[int] = set()
    odd: list[IPNetwork] = []
    for t in taken:
        if t.version != version:
            continue
        if exact_ok and t.prefixlen == length:
            exact.add(int(t.network_address))
        elif can_be_peer(t, rng):
            odd.append(t)
    found: list[IPNetwork] = []
    for start in _candidate_starts(rng):
        if start in exact:
            continue
        cand = ipaddress.ip_network((start, length))
        if any(cand.overlaps(t) for t in odd):
            continue
        found.append(cand)
        if len(found) >= limit:
            break
    return found


def choose_subnet(
    rng: SubnetRange, taken: Iterable[IPNetwork], chooser: random.Random | None = None
) -> IPNetwork:
    """A random free subnet (among the first 100), as upstream picks."""
    free = free_subnets(rng, taken)
    if not free:
        raise SubnetsExhaustedError(
            f"out of subnets: every /{rng.subnet_len} between {rng.subnet_min} and "
            f"{rng.subnet_max} in {rng.network} is leased; delete leases of dead nodes "
            f"or widen Network/SubnetMin/SubnetMax in the flannel config"
        )
    return (chooser or random.Random()).choice(free)
