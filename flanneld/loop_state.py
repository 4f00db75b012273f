"""The main loop's decisions, apart from waiting and doing: a pure step.

``step(state, received, now)`` takes what the queue delivered (lease messages,
kernel-watch kicks, the kernel read of a full pass) and the clock's reading, and
returns the new state and what to do, in order: fold the lease messages into the
peer table, re-acquire our lease if a message shows it gone, reconcile (a full
pass when a kick arrived outside the echo window or before the first sync; nothing
before the first lease message: the peers are unknown until then, not none).
``settle(state, outcome, now)`` takes what the driver did (a re-acquired lease,
a finished reconcile) and moves the deadlines: the resync stretch, the echo
window, the first sync.

A due periodic full pass does not hold up events: the step asks the driver to
read the kernel on another thread (``Probe``) and goes on serving lease
messages; the read comes back as a ``Probed`` message, and the pass finishes
on the loop thread by checking that read against what was written meanwhile
(``Reconcile`` with the probe).  A network that cannot read off the loop
thread says so (``NoProbe``) and gets the full pass there.

``MainLoop.run`` (loop.py) only waits on the queue, reads the clock, calls these
two functions and executes the actions; the clock is a number passed in, so the
decisions are unit-tested with a fake clock and no threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from backends.base import KernelProbe, ReconcileReport
from flanneld.peertable import loses_own_lease
from subnet.manager import LeaseMessage

# How long after a pass that deleted kernel objects the kernel watch's reports
# are taken for the echo of those deletions (a real loss is still repaired by
# the next kick or resync).
ECHO_WINDOW = 1.0
# A periodic full pass may take at most 1/RESYNC_BUDGET of the time (0.5 %: idle CPU at
# thousands of peers); the kernel watch repairs damage at once in between.
RESYNC_BUDGET = 200.0  # the default (0.5 %, half the idle target); --resync-max-cpu sets it
MAX_WAIT = 1.0  # the driver wakes at least this often to look at the stop event


@dataclass(frozen=True, slots=True)
class Kick:
    """Reconcile now: the kernel lost something of ours."""


@dataclass(frozen=True, slots=True)
class Probed:
    """The kernel read of a full pass is done (None: it failed, read on the loop thread)."""

    probe: KernelProbe | None


LoopMessage = LeaseMessage | Kick | Probed


@dataclass(frozen=True, slots=True)
class LoopState:
    """What the main loop remembers between wake-ups (times on the injected clock)."""

    own_key: str
    interval: float  # the configured resync interval
    next_resync: float
    echo_until: float = 0.0  # kicks before this are the kernel echoing our own deletions
    heard: bool = False  # a lease message has arrived
    synced: bool = False  # a reconcile succeeded after the first lease message
    probing: bool = False  # a full pass's kernel read runs on another thread
    probe_started: float = 0.0
    budget: float = RESYNC_BUDGET


@dataclass(frozen=True, slots=True)
class Fold:
    """Apply these lease messages to the peer table."""

    messages: tuple[LeaseMessage, ...]


@dataclass(frozen=True, slots=True)
class Reacquire:
    """Our lease is gone from the store: register the network again."""


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Run the backend's reconcile over the peer table."""

    full: bool  # re-read the kernel's tables
    resync: bool  # a due full pass: the next resync is counted from its start
    resync_only: bool  # no lease message asked for it (quiet log, metrics label)
    probe: KernelProbe | None = None  # the kernel read made for it off the loop thread
    since: float | None = None  # when the full pass began (its kernel read), if before


@dataclass(frozen=True, slots=True)
class MarkSynced:
    """The first lease messages are programmed: the node is ready."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Start the kernel read of a due full pass on another thread."""


LoopAction = Fold | Reacquire | Reconcile | MarkSynced | Probe


@dataclass(frozen=True, slots=True)
class Reacquired:
    """The driver holds a lease again, under this key."""

    own_key: str


@dataclass(frozen=True, slots=True)
class Reconciled:
    """A reconcile pass that ran from ``started`` to the ``now`` given to settle."""

    action: Reconcile
    report: ReconcileReport
    started: float


@dataclass(frozen=True, slots=True)
class NoProbe:
    """The network cannot read the kernel off the loop thread."""


Outcome = Reacquired | Reconciled | NoProbe


def start(own_key: str, interval: float, now: float, budget: float = RESYNC_BUDGET) -> LoopState:
    return LoopState(own_key=own_key, interval=interval, next_resync=now + interval,
                     budget=budget)


def wait_seconds(state: LoopState, now: float) -> float:
    """How long the driver may block on the queue before the next decision."""
    return max(0.0, min(MAX_WAIT, state.next_resync - now))


def resync_interval(configured: float, last_full_pass: float,
                    budget: float = RESYNC_BUDGET) -> float:
    """Seconds to the next full resync: the configured interval, stretched so that
    full passes (kernel dumps) take at most 1/``budget`` of the time (0.5 %) on large
    clusters; the kernel watch still repairs damage at once in between."""
    return max(configured, budget * last_full_pass)


def step(
    state: LoopState, received: Sequence[LoopMessage], now: float
) -> tuple[LoopState, tuple[LoopAction, ...]]:
    """Decide what to do with one wake-up's messages (maybe none) at time ``now``."""
    kicks = any(isinstance(m, Kick) for m in received)
    kicked = kicks and now >= state.echo_until
    next_resync = state.next_resync
    if kicks and not kicked:  # maybe an echo, maybe new damage: look again soon
        next_resync = min(next_resync, state.echo_until)
    probed = [m for m in received if isinstance(m, Probed)]
    batch = tuple(m for m in received if not isinstance(m, Kick | Probed))
    actions: list[LoopAction] = []
    if batch:
        actions.append(Fold(batch))
    if any(loses_own_lease(state.own_key, m) for m in batch):
        actions.append(Reacquire())
    heard = state.heard or bool(batch)
    timed = now >= next_resync or kicked
    if timed:
        next_resync = now + state.interval
    # Before the first lease message the peers are unknown, not none: a pass would delete
    # every route a restarted node kept.  That message's own pass is a full one.
    due = timed and heard
    here = due and (kicked or not state.synced)  # a full pass on this thread, now
    if batch or here:
        actions.append(Reconcile(full=here or not state.synced, resync=here,
                                 resync_only=here and not batch))
    probing, probe_started = state.probing, state.probe_started
    if probed:
        probing = False
        actions.append(Reconcile(full=True, resync=True, resync_only=True,
                                 probe=probed[-1].probe, since=probe_started))
    elif due and not here and not probing:
        probing, probe_started = True, now
        actions.append(Probe())
    new = replace(state, next_resync=next_resync, heard=heard,
                  probing=probing, probe_started=probe_started)
    return new, tuple(actions)


def settle(
    state: LoopState, outcome: Outcome, now: float
) -> tuple[LoopState, tuple[LoopAction, ...]]:
    """Fold what the driver did into the state; a failed reconcile is not settled."""
    if isinstance(outcome, Reacquired):
        return replace(state, own_key=outcome.own_key), ()
    if isinstance(outcome, NoProbe):
        full = Reconcile(full=True, resync=True, resync_only=True, since=state.probe_started)
        return replace(state, probing=False), (full,)
    next_resync = state.next_resync
    if outcome.action.resync:
        # the pass's cost: its time on this thread and its kernel read's on another
        # (not the time the read waited behind events)
        cost = now - outcome.started + (outcome.action.probe.seconds if outcome.action.probe else 0)
        began = outcome.started if outcome.action.since is None else outcome.action.since
        next_resync = began + resync_interval(state.interval, cost, state.budget)
    echo_until = state.echo_until
    if outcome.report.removed or outcome.report.device_recreated:
        echo_until = now + ECHO_WINDOW
    synced = state.synced or state.heard
    new = replace(state, next_resync=next_resync, echo_until=echo_until, synced=synced)
    return new, (MarkSynced(),) if synced and not state.synced else ()
