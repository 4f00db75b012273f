"""The main loop's pure step with a fake clock: no threads, no sleeps."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from backends.base import KernelProbe, ReconcileReport
from flanneld.loop_state import (
    ECHO_WINDOW,
    MAX_WAIT,
    Fold,
    Kick,
    LoopAction,
    LoopMessage,
    LoopState,
    MarkSynced,
    NoProbe,
    Probe,
    Probed,
    Reacquire,
    Reacquired,
    Reconcile,
    Reconciled,
    resync_interval,
    settle,
    start,
    step,
    wait_seconds,
)
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseRemoved, Snapshot

INTERVAL = 10.0


def lease(third: int) -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        None,
        LeaseAttrs(public_ip=ipaddress.IPv4Address(f"198.18.0.{third}"), backend_type="vxlan"),
    )


OWN = lease(1)
NO_CHANGE = ReconcileReport()


def reconciles(actions: Sequence[LoopAction]) -> list[Reconcile]:
    return [a for a in actions if isinstance(a, Reconcile)]


def run_pass(
    state: LoopState, received: Sequence[LoopMessage], now: float, seconds: float = 0.0,
    report: ReconcileReport = NO_CHANGE,
) -> tuple[LoopState, list[LoopAction]]:
    """One wake-up at ``now`` whose reconcile (if any) takes ``seconds`` and reports ``report``;
    a network that cannot read the kernel off the loop thread (``NoProbe``)."""
    state, actions = step(state, received, now)
    done = list(actions)
    pending = list(actions)
    while pending:
        action = pending.pop(0)
        more: Sequence[LoopAction] = ()
        if isinstance(action, Reconcile):
            state, more = settle(state, Reconciled(action, report, now), now + seconds)
        elif isinstance(action, Probe):
            state, more = settle(state, NoProbe(), now)
        done.extend(more)
        pending.extend(more)
    return state, done


def full_pass(since: float) -> Reconcile:
    """The due full pass that began at ``since`` (its kernel read)."""
    return Reconcile(full=True, resync=True, resync_only=True, since=since)


HERE = Reconcile(full=True, resync=True, resync_only=True)  # a full pass on the loop thread


def synced_at(now: float) -> LoopState:
    state, _ = run_pass(start(OWN.key, INTERVAL, now), [Snapshot((OWN, lease(2)))], now)
    assert state.synced
    return state


def test_nothing_happens_before_the_resync_is_due() -> None:
    state = synced_at(100.0)
    assert state.next_resync == 110.0
    assert step(state, [], 109.9)[1] == ()
    assert wait_seconds(state, 109.5) == 0.5
    assert wait_seconds(state, 100.0) == MAX_WAIT
    assert wait_seconds(state, 112.0) == 0.0


def test_due_resync_is_a_quiet_full_pass_and_restarts_the_clock() -> None:
    state = synced_at(100.0)
    state, actions = run_pass(state, [], 110.0, seconds=0.05)
    assert actions == [Probe(), full_pass(110.0)]
    assert state.next_resync == 120.0


def test_slow_full_pass_stretches_the_resync_to_two_hundred_times_its_duration() -> None:
    state = synced_at(100.0)
    state, _ = run_pass(state, [], 110.0, seconds=0.25)
    assert state.next_resync == 110.0 + 50.0  # a 0.25 s pass: 0.5 % of 50 s
    assert step(state, [], 159.9)[1] == ()
    state, actions = run_pass(state, [], 160.0, seconds=0.03125)
    assert reconciles(actions) == [full_pass(160.0)]
    assert state.next_resync == 170.0  # fast again: back to the configured interval


def test_an_incremental_pass_does_not_move_the_resync() -> None:
    state = synced_at(100.0)
    state, actions = run_pass(state, [LeaseAdded(lease(3))], 105.0, seconds=4.0)
    assert reconciles(actions) == [Reconcile(full=False, resync=False, resync_only=False)]
    assert state.next_resync == 110.0


def test_failed_due_pass_is_retried_one_interval_later() -> None:
    state = synced_at(100.0)
    state, actions = step(state, [], 110.0)
    assert actions == (Probe(),)
    state, actions = settle(state, NoProbe(), 110.0)
    assert reconciles(actions)  # the driver does not settle a failed reconcile
    assert state.next_resync == 120.0 and not state.probing


def test_kick_inside_the_echo_window_waits_for_the_window_to_close() -> None:
    state = synced_at(100.0)
    state, _ = run_pass(state, [LeaseRemoved(lease(2).key)], 101.0, seconds=0.2,
                        report=ReconcileReport(removed=3))
    assert state.echo_until == 101.2 + ECHO_WINDOW
    state, actions = step(state, [Kick()], 101.5)  # the kernel echoing our own deletions
    assert actions == ()
    assert state.next_resync == 101.2 + ECHO_WINDOW  # but look again when the window closes
    assert step(state, [], 102.1)[1] == ()
    state, actions = run_pass(state, [], 102.2)
    assert reconciles(actions) == [full_pass(102.2)]
    assert state.next_resync == 112.2


def test_kick_outside_the_echo_window_reconciles_at_once() -> None:
    state = synced_at(100.0)
    state, _ = run_pass(state, [], 110.0, report=ReconcileReport(device_recreated=True))
    assert state.echo_until == 110.0 + ECHO_WINDOW
    state, actions = run_pass(state, [Kick()], 111.0)
    assert reconciles(actions) == [HERE]


def test_nothing_is_reconciled_before_the_first_lease_message() -> None:
    """The peers are unknown until then, not none: a pass would delete every route a
    restarted node kept (a kick, or a resync due before a slow first list)."""
    state, actions = run_pass(start(OWN.key, INTERVAL, 0.0), [Kick()], 1.0)
    assert actions == [] and not state.synced
    state, actions = run_pass(state, [], INTERVAL + 1.0)
    assert actions == [] and not state.probing
    assert wait_seconds(state, INTERVAL + 1.0) > 0  # rescheduled, not a busy loop
    state, actions = run_pass(state, [Snapshot((OWN, lease(2)))], INTERVAL + 2.0)
    assert reconciles(actions) == [Reconcile(full=True, resync=False, resync_only=False)]
    assert MarkSynced() in actions and state.synced


def test_first_lease_messages_are_a_full_pass_and_mark_synced_once() -> None:
    state, actions = run_pass(start(OWN.key, INTERVAL, 0.0), [Snapshot((OWN, lease(2)))], 1.0)
    assert actions == [
        Fold((Snapshot((OWN, lease(2))),)),
        Reconcile(full=True, resync=False, resync_only=False),
        MarkSynced(),
    ]
    state, actions = run_pass(state, [LeaseAdded(lease(3))], 2.0)
    assert MarkSynced() not in actions


def test_lost_own_lease_is_reacquired_before_the_reconcile() -> None:
    state = synced_at(100.0)
    state, actions = step(state, [LeaseAdded(lease(3)), LeaseRemoved(OWN.key)], 101.0)
    assert [type(a) for a in actions] == [Fold, Reacquire, Reconcile]
    state, more = settle(state, Reacquired(lease(5).key), 102.0)
    assert more == () and state.own_key == lease(5).key
    # the old key going away again is someone else's business now
    assert Reacquire() not in step(state, [LeaseRemoved(OWN.key)], 103.0)[1]
    assert Reacquire() in step(state, [LeaseRemoved(lease(5).key)], 103.0)[1]


def test_snapshot_without_our_lease_means_reacquire() -> None:
    state = synced_at(100.0)
    assert Reacquire() in step(state, [Snapshot((lease(2),))], 101.0)[1]
    assert Reacquire() not in step(state, [Snapshot((OWN,))], 101.0)[1]


def test_resync_interval_stretches_only_for_slow_full_passes() -> None:
    assert resync_interval(10.0, 0.05) == 10.0
    assert resync_interval(10.0, 0.5) == 100.0


PROBE = KernelProbe(generation=1, differing={}, seconds=0.01)


def test_a_due_full_pass_reads_the_kernel_elsewhere_and_events_are_served_meanwhile() -> None:
    state = synced_at(100.0)
    state, actions = step(state, [], 110.0)
    assert actions == (Probe(),) and state.probing
    # an event while the kernel is read: served at once, incrementally
    state, actions = run_pass(state, [LeaseAdded(lease(3))], 110.1)
    assert reconciles(actions) == [Reconcile(full=False, resync=False, resync_only=False)]
    assert Probe() not in actions and state.probing
    # the read is back (with another event): the event first, then the pass finishes
    state, actions = step(state, [LeaseAdded(lease(4)), Probed(PROBE)], 110.3)
    assert reconciles(actions) == [
        Reconcile(full=False, resync=False, resync_only=False),
        Reconcile(full=True, resync=True, resync_only=True, probe=PROBE, since=110.0),
    ]
    assert not state.probing
    state, _ = settle(state, Reconciled(reconciles(actions)[-1], NO_CHANGE, 110.3), 110.32)
    assert state.next_resync == 120.0  # counted from the read's start


def test_a_slow_read_stretches_the_resync_from_its_start() -> None:
    state = synced_at(100.0)
    state, _ = step(state, [], 110.0)
    slow = KernelProbe(generation=1, differing={}, seconds=0.45)
    state, actions = step(state, [Probed(slow)], 113.0)  # waited behind events: not counted
    state, _ = settle(state, Reconciled(reconciles(actions)[0], NO_CHANGE, 113.0), 113.05)
    assert abs(state.next_resync - (110.0 + 100.0)) < 1e-6  # 0.5 s of work: 0.5 % of 100 s


def test_the_budget_sets_the_stretch() -> None:
    state = start(OWN.key, INTERVAL, 100.0, budget=1.0)  # full passes may take all the time
    state, _ = run_pass(state, [Snapshot((OWN, lease(2)))], 100.0)
    state, actions = run_pass(state, [], 110.0, seconds=20.0)
    assert reconciles(actions) == [full_pass(110.0)]
    assert state.next_resync == 130.0
    assert resync_interval(10.0, 0.5, budget=1.0) == 10.0


def test_no_second_read_while_one_runs_and_a_kick_still_repairs_at_once() -> None:
    state = synced_at(100.0)
    state, _ = step(state, [], 110.0)
    state, actions = step(state, [], 120.0)  # due again, the first read still runs
    assert actions == () and state.probing
    state, actions = step(state, [Kick()], 120.5)
    assert reconciles(actions) == [HERE]
    state, actions = step(state, [Probed(None)], 121.0)  # the read failed: read here instead
    assert reconciles(actions) == [
        Reconcile(full=True, resync=True, resync_only=True, probe=None, since=110.0)
    ]


def test_a_network_that_cannot_read_elsewhere_gets_the_pass_on_the_loop_thread() -> None:
    state = synced_at(100.0)
    state, _ = step(state, [], 110.0)
    state, more = settle(state, NoProbe(), 110.0)
    assert more == (full_pass(110.0),) and not state.probing
