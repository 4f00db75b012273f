"""Which subnet the etcd manager tries to claim: a pure decision over the listed leases.

Upstream's order: a lease already held by our public IP is reused if the
network config could have handed it out (else it is deleted); then our
previous subnet (subnet.env, or the lease we held before it vanished) if it
is still free and fits; else a random free one.  Added here: when our
previous subnet's key holds a value that no longer parses (overwritten with
garbage), it is written again.  ``decide`` makes that choice from one listing; ``EtcdSubnetManager``
(etcd.py) carries it out with compare-and-swap transactions and lists again
when another writer got in first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import cast

from subnet.allocator import choose_subnet, in_range
from subnet.errors import SubnetsExhaustedError
from subnet.lease import IPNetwork, LeaseAttrs
from subnet.netconf import SubnetRange


@dataclass(frozen=True, slots=True)
class ListedLease:
    """One key under ``<prefix>/subnets/`` as listed."""

    key: bytes
    v4: IPv4Network
    v6: IPv6Network | None
    attrs: LeaseAttrs | None  # None: the value does not parse (its subnet is still taken)
    etcd_lease: int  # 0: a reservation (no etcd lease)
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class Reuse:
    """Keep the lease our public IP already holds (the key, refreshed in place)."""

    lease: ListedLease


@dataclass(frozen=True, slots=True)
class ClaimPrevious:
    """Create a lease for the subnet we held before (subnet.env or our last lease)."""

    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    stale: ListedLease | None  # our lease that no longer fits the config: delete it first


@dataclass(frozen=True, slots=True)
class ClaimFree:
    """Create a lease for a random free subnet."""

    subnet: IPv4Network
    ipv6_subnet: IPv6Network | None
    stale: ListedLease | None
    passed_over: IPv4Network | None  # our previous subnet, taken or outside the config


@dataclass(frozen=True, slots=True)
class Repair:
    """Write our lease again over our previous subnet's key, whose value is unreadable."""

    lease: ListedLease
    stale: ListedLease | None


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every subnet of the range is leased."""

    reason: str
    stale: ListedLease | None


Acquisition = Reuse | Repair | ClaimPrevious | ClaimFree | Exhausted


def decide(
    listed: list[ListedLease],
    public_ip: IPv4Address,
    previous: tuple[IPv4Network | None, IPv6Network | None],
    ranges: tuple[SubnetRange, SubnetRange | None],
    chooser: random.Random,
) -> Acquisition:
    """What one acquisition attempt should do, given every lease listed from etcd.

    ``ranges`` are the config's IPv4 and (if enabled) IPv6 subnet ranges;
    ``chooser`` picks among the free subnets (seed it for a repeatable choice).
    """
    v4_range, v6_range = ranges
    mine = held_by(listed, public_ip)
    stale = None
    if mine is not None:
        if compatible(mine.v4, mine.v6, v4_range, v6_range):
            return Reuse(mine)
        stale = mine
        listed = [e for e in listed if e is not mine]
    damaged = _unreadable_at(listed, previous)
    if damaged is not None:
        return Repair(damaged, stale)
    taken4: list[IPNetwork] = [e.v4 for e in listed]
    taken6: list[IPNetwork] = [e.v6 for e in listed if e.v6 is not None]
    v4, v6 = previous
    if (
        v4 is not None
        and compatible(v4, v6, v4_range, v6_range)
        and _free(v4, taken4)
        and (v6 is None or _free(v6, taken6))
    ):
        return ClaimPrevious(v4, v6, stale)
    try:
        new4 = cast(IPv4Network, choose_subnet(v4_range, taken4, chooser))
        new6 = None
        if v6_range is not None:
            new6 = cast(IPv6Network, choose_subnet(v6_range, taken6, chooser))
    except SubnetsExhaustedError as err:
        return Exhausted(str(err), stale)
    return ClaimFree(new4, new6, stale, passed_over=v4)


def _unreadable_at(
    listed: list[ListedLease], subnets: tuple[IPv4Network | None, IPv6Network | None]
) -> ListedLease | None:
    """The key of ``subnets`` (our previous lease) if its value no longer parses."""
    if subnets[0] is None:
        return None
    return next((e for e in listed if e.attrs is None and (e.v4, e.v6) == subnets), None)


def held_by(listed: list[ListedLease], public_ip: IPv4Address) -> ListedLease | None:
    """The lease whose PublicIP is ``public_ip`` (none for 0.0.0.0)."""
    if public_ip.is_unspecified:
        return None
    for entry in listed:
        if entry.attrs is not None and entry.attrs.public_ip == public_ip:
            return entry
    return None


def compatible(
    v4: IPNetwork, v6: IPNetwork | None, v4_range: SubnetRange, v6_range: SubnetRange | None
) -> bool:
    """Could the current config have handed out this pair (upstream's rule)?"""
    if not in_range(v4, v4_range):
        return False
    if v6_range is None:
        return v6 is None
    return v6 is not None and in_range(v6, v6_range)


def _free(subnet: IPNetwork, taken: list[IPNetwork]) -> bool:
    return not any(subnet.overlaps(t) for t in taken)
