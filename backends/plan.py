"""Turning (observed, desired) kernel state into an ordered list of changes.

Ordering rule: deletions first, routes before FDB before neighbours; then
writes, neighbours before FDB before routes.  So the kernel never has a
route through flannel.1 to a next hop it would have to ARP for, and a
removed peer's route goes before the entries it relied on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

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

_DELETE_ORDER = {Route: 0, FdbEntry: 1, Neighbour: 2}
_PUT_ORDER = {Neighbour: 0, FdbEntry: 1, Route: 2}


def plan(observed: DataplaneState, desired: DataplaneState) -> list[Change]:
    """The changes that make ``observed`` equal to ``desired``; empty when equal."""
    have = {obj.key: obj for obj in observed.objects()}
    want = {obj.key: obj for obj in desired.objects()}
    deletes = [Delete(obj) for key, obj in have.items() if key not in want]
    puts = [Put(obj) for key, obj in want.items() if have.get(key) != obj]
    deletes.sort(key=lambda c: (_DELETE_ORDER[type(c.obj)], _rank(c.obj)))
    puts.sort(key=lambda c: (_PUT_ORDER[type(c.obj)], _rank(c.obj)))
    return [*deletes, *puts]


def _rank(obj: KernelObject) -> tuple[int, int, int | str]:
    """A cheap total order within one kind (the same in every process, unlike hashes)."""
    if isinstance(obj, Route):
        return obj.dst.version, int(obj.dst.network_address), obj.dst.prefixlen
    if isinstance(obj, Neighbour):
        return obj.ifindex, obj.dst.version, int(obj.dst)
    return obj.ifindex, 0, obj.lladdr


def apply_to(state: DataplaneState, changes: list[Change]) -> DataplaneState:
    """What ``state`` becomes after ``changes`` (the model of a perfect kernel)."""
    objs = {obj.key: obj for obj in state.objects()}
    for change in changes:
        if isinstance(change, Delete):
            objs.pop(change.obj.key, None)
        else:
            objs[change.obj.key] = change.obj
    return DataplaneState.of(list(objs.values()))
