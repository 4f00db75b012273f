"""Kernel objects a backend wants, as plain values.

Each object has a ``key``: two objects with the same key are the same slot
in the kernel (one route per destination, one neighbour per address on a
device, one FDB entry per MAC on a device), so a differing object with the
same key is replaced in place rather than deleted and added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from subnet.lease import IPAddress, IPNetwork

# Routes we program carry this rtnetlink protocol id ("proto 44" in `ip route`),
# so observation and cleanup never touch a route somebody else made.
ROUTE_PROTOCOL = 44


@dataclass(frozen=True, slots=True)
class Route:
    """A main-table unicast route."""

    dst: IPNetwork
    gateway: IPAddress | None
    ifindex: int | None
    onlink: bool = False

    @property
    def key(self) -> tuple[str, IPNetwork]:
        return ("route", self.dst)


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A permanent neighbour (ARP/NDP) entry."""

    ifindex: int
    dst: IPAddress
    lladdr: str

    @property
    def key(self) -> tuple[str, int, IPAddress]:
        return ("neigh", self.ifindex, self.dst)


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A permanent ``self`` forwarding entry of a VXLAN device: MAC -> remote VTEP."""

    ifindex: int
    lladdr: str
    dst: IPAddress

    @property
    def key(self) -> tuple[str, int, str]:
        return ("fdb", self.ifindex, self.lladdr)


KernelObject: TypeAlias = Route | Neighbour | FdbEntry


@dataclass(frozen=True, slots=True)
class DataplaneState:
    """A set of kernel objects: what we want, or what we observed of ours."""

    routes: frozenset[Route] = field(default_factory=frozenset)
    neighbours: frozenset[Neighbour] = field(default_factory=frozenset)
    fdb: frozenset[FdbEntry] = field(default_factory=frozenset)

    def objects(self) -> frozenset[KernelObject]:
        return frozenset((*self.routes, *self.neighbours, *self.fdb))

    @staticmethod
    def of(objects: list[KernelObject] | frozenset[KernelObject]) -> DataplaneState:
        return DataplaneState(
            routes=frozenset(o for o in objects if isinstance(o, Route)),
            neighbours=frozenset(o for o in objects if isinstance(o, Neighbour)),
            fdb=frozenset(o for o in objects if isinstance(o, FdbEntry)),
        )


@dataclass(frozen=True, slots=True)
class Skipped:
    """A peer lease a backend could not use, and why."""

    key: str
    reason: str
