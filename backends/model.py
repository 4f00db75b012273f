"""Kernel objects a backend wants, as plain values.

Each object has a ``key``: two objects with the same key are the same slot
in the kernel (one route per destination, one neighbour per address on a
device, one FDB entry per MAC on a device), so a differing object with the
same key is replaced in place rather than deleted and added.
"""

from __future__ import annotations

from collections.abc import Iterable
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

    def objects(self) -> tuple[KernelObject, ...]:
        """Every object, each once (a tuple: building a set would hash them all again)."""
        return (*self.routes, *self.neighbours, *self.fdb)

    def count(self) -> int:
        return len(self.routes) + len(self.neighbours) + len(self.fdb)

    @staticmethod
    def of(objects: Iterable[KernelObject]) -> DataplaneState:
        routes: list[Route] = []
        neighbours: list[Neighbour] = []
        fdb: list[FdbEntry] = []
        for obj in objects:
            if isinstance(obj, Route):
                routes.append(obj)
            elif isinstance(obj, Neighbour):
                neighbours.append(obj)
            else:
                fdb.append(obj)
        return DataplaneState(frozenset(routes), frozenset(neighbours), frozenset(fdb))


@dataclass(frozen=True, slots=True)
class Skipped:
    """A peer lease a backend could not use, and why."""

    key: str
    reason: str
