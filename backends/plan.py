"""Turning (observed, desired) kernel state into an ordered list of changes.

Ordering rule: deletions first, routes before FDB before neighbours; then
writes, neighbours before FDB before routes.  So the kernel never has a
route through flannel.1 to a next hop it would have to ARP for, and a
removed peer's route goes before the entries it relied on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from backends.model import DataplaneState, FdbEntry, KernelObject, Neighbour, Route


@dataclass(frozen=True, slots=True)
class Put:
    """Create or replace the object in its slot."""

    obj: KernelObject


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the object."""

    obj: KernelObject


Change: TypeAlias = Put | Delete
K = TypeVar("K", Route, Neighbour, FdbEntry)
Rank: TypeAlias = tuple[int | str, ...]


def plan(observed: DataplaneState, desired: DataplaneState) -> list[Change]:
    """The changes that make ``observed`` equal to ``desired``; empty when equal.

    The diff is a set
    difference per kind, which reuses the hashes the frozensets stored, so
    only the objects that differ are looked at again (a cold start against an
    empty kernel is all puts, and an unchanged kind costs next to nothing).
    """
    routes = _diff(observed.routes, desired.routes, _route_rank, spare_wanted_slots=True)
    fdb = _diff(observed.fdb, desired.fdb, _fdb_rank)
    neighbours = _diff(observed.neighbours, desired.neighbours, _neighbour_rank)
    changes: list[Change] = []
    for deleted in (routes[0], fdb[0], neighbours[0]):
        changes += map(Delete, deleted)
    for written in (neighbours[1], fdb[1], routes[1]):
        changes += map(Put, written)
    return changes


def _diff(
    have: frozenset[K], want: frozenset[K], rank: Callable[[K], Rank],
    spare_wanted_slots: bool = False,
) -> tuple[list[K], list[K]]:
    """(to delete, to write) of one kind, each in ``rank`` order.

    An object written replaces what its slot held, so that is not deleted as
    well.  The kernel can hold two objects in one slot (a second route of our
    protocol to the same destination, at another metric); a route delete names
    only the slot, so the kernel would remove whichever comes first, perhaps
    the one we want: with ``spare_wanted_slots`` nothing is deleted from a
    slot we want (FDB deletes name the exact entry).
    """
    if not have:
        return [], sorted(want, key=rank)
    written = sorted(want - have, key=rank)
    stale = have - want
    if not stale:
        return [], written
    spared = {obj.key for obj in (want if spare_wanted_slots else written)}
    return [obj for obj in sorted(stale, key=rank) if obj.key not in spared], written


# Cheap total orders within one kind (the same in every process, unlike hashes).
def _route_rank(route: Route) -> Rank:
    dst = route.dst
    return dst.version, int(dst.network_address), dst.prefixlen


def _neighbour_rank(neigh: Neighbour) -> Rank:
    return neigh.ifindex, neigh.dst.version, int(neigh.dst)


def _fdb_rank(entry: FdbEntry) -> Rank:
    return entry.ifindex, entry.lladdr


def apply_to(state: DataplaneState, changes: list[Change]) -> DataplaneState:
    """What ``state`` becomes after ``changes`` (the model of a perfect kernel)."""
    objs: dict[Hashable, KernelObject] = {obj.key: obj for obj in state.objects()}
    for change in changes:
        if isinstance(change, Delete):
            objs.pop(change.obj.key, None)
        else:
            objs[change.obj.key] = change.obj
    return DataplaneState.of(objs.values())
