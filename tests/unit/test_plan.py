"""plan(): change ordering, replace in place, and the two laws."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from backends.model import DataplaneState, FdbEntry, KernelObject, Neighbour, Route
from backends.plan import Delete, Put, apply_to, plan

DEV = 7


def objects(third: int, mac: str = "") -> list[KernelObject]:
    mac = mac or f"0a:00:00:00:00:{third:02x}"
    gw = ipaddress.IPv4Address(f"10.244.{third}.0")
    return [
        Neighbour(DEV, gw, mac),
        FdbEntry(DEV, mac, ipaddress.IPv4Address(f"198.18.0.{third}")),
        Route(ipaddress.IPv4Network(f"10.244.{third}.0/24"), gw, DEV, onlink=True),
    ]


def test_add_puts_neighbour_then_fdb_then_route() -> None:
    changes = plan(DataplaneState(), DataplaneState.of(objects(2)))
    assert changes == [Put(o) for o in objects(2)]


def test_delete_removes_route_then_fdb_then_neighbour() -> None:
    changes = plan(DataplaneState.of(objects(2)), DataplaneState())
    assert changes == [Delete(o) for o in reversed(objects(2))]


def test_deletes_come_before_puts() -> None:
    changes = plan(DataplaneState.of(objects(2)), DataplaneState.of(objects(3)))
    kinds = [type(c) for c in changes]
    assert kinds == [Delete] * 3 + [Put] * 3


def test_changed_neighbour_mac_is_replaced_in_place() -> None:
    old = objects(2)
    new = objects(2, mac="0a:00:00:00:00:99")
    changes = plan(DataplaneState.of(old), DataplaneState.of(new))
    # the neighbour is a Put into the same slot; the old MAC's FDB entry is a
    # different slot, so it is deleted and the new one added; the route is unchanged
    assert changes == [Delete(old[1]), Put(new[0]), Put(new[1])]


def test_changed_route_gateway_is_one_put() -> None:
    dst = ipaddress.IPv4Network("10.244.2.0/24")
    old = Route(dst, ipaddress.IPv4Address("10.244.2.0"), DEV, onlink=True)
    new = Route(dst, ipaddress.IPv4Address("198.18.0.2"), 2)
    assert plan(DataplaneState.of([old]), DataplaneState.of([new])) == [Put(new)]


# --- laws --------------------------------------------------------------------------------------

thirds = st.integers(min_value=0, max_value=5)
macs = st.sampled_from(["0a:00:00:00:00:01", "0a:00:00:00:00:02", "0a:00:00:00:00:03"])
devs = st.sampled_from([DEV, 8])


def _net(third: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.244.{third}.0/24")


routes = st.builds(
    Route,
    st.builds(_net, thirds),
    st.sampled_from(
        [None, ipaddress.IPv4Address("10.244.1.0"), ipaddress.IPv4Address("198.18.0.1")]
    ),
    st.sampled_from([None, DEV, 2]),
    st.booleans(),
)
neighbours = st.builds(Neighbour, devs, st.builds(lambda t: _net(t).network_address, thirds), macs)
fdbs = st.builds(
    FdbEntry, devs, macs, st.sampled_from([ipaddress.IPv4Address(f"198.18.0.{i}") for i in (1, 2)])
)


@st.composite
def states(draw: st.DrawFn) -> DataplaneState:
    """A state with at most one object per slot, as the kernel holds them."""
    objs = draw(st.lists(st.one_of(routes, neighbours, fdbs), max_size=12))
    by_key = {o.key: o for o in objs}
    return DataplaneState.of(list(by_key.values()))


@given(states())
def test_planning_against_itself_is_empty(state: DataplaneState) -> None:
    assert plan(state, state) == []


@given(states(), states())
def test_applying_the_plan_reaches_the_desired_state(
    observed: DataplaneState, desired: DataplaneState
) -> None:
    changes = plan(observed, desired)
    assert apply_to(observed, changes) == desired
    assert plan(apply_to(observed, changes), desired) == []


@given(states(), states())
def test_plan_orders_kinds_as_the_rule_says(
    observed: DataplaneState, desired: DataplaneState
) -> None:
    rank = {
        (Delete, Route): 0,
        (Delete, FdbEntry): 1,
        (Delete, Neighbour): 2,
        (Put, Neighbour): 3,
        (Put, FdbEntry): 4,
        (Put, Route): 5,
    }
    ranks = [rank[(type(c), type(c.obj))] for c in plan(observed, desired)]
    assert ranks == sorted(ranks)


# --- a kernel holding two objects in one slot ------------------------------------------------


def test_a_second_route_in_a_wanted_slot_is_not_deleted() -> None:
    """A route delete names only its slot: the kernel would take the first route there,
    perhaps ours, and the next pass would put it back (a flap every pass)."""
    dst = ipaddress.IPv4Network("10.244.2.0/24")
    ours = Route(dst, ipaddress.IPv4Address("10.244.2.0"), DEV, onlink=True)
    extra = Route(dst, ipaddress.IPv4Address("198.18.0.9"), 2)
    gone = Route(ipaddress.IPv4Network("10.244.3.0/24"), ipaddress.IPv4Address("10.244.3.0"),
                 DEV, onlink=True)
    observed = DataplaneState.of([ours, extra, gone])
    assert plan(observed, DataplaneState.of([ours])) == [Delete(gone)]


def test_a_second_fdb_entry_for_a_wanted_mac_is_deleted() -> None:
    """An FDB delete names its destination too, so the stale one goes."""
    mac = "0a:00:00:00:00:02"
    ours = FdbEntry(DEV, mac, ipaddress.IPv4Address("198.18.0.2"))
    stale = FdbEntry(DEV, mac, ipaddress.IPv4Address("198.18.0.9"))
    assert plan(DataplaneState.of([ours, stale]), DataplaneState.of([ours])) == [Delete(stale)]


@given(st.lists(routes, max_size=12), st.lists(routes, max_size=12))
def test_no_route_is_deleted_from_a_slot_that_is_wanted(
    observed: list[Route], desired: list[Route]
) -> None:
    wanted = DataplaneState.of(list({r.key: r for r in desired}.values()))
    changes = plan(DataplaneState.of(observed), wanted)
    slots = {r.key for r in wanted.routes}
    assert not [c for c in changes if isinstance(c, Delete) and c.obj.key in slots]
    assert {c.obj for c in changes if isinstance(c, Put)} == wanted.routes - set(observed)
