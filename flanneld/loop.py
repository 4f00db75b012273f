"""The daemon's threads and its main loop.

Threads: a watcher (store -> queue), a renewer (etcd leases expire), and
the main thread, which owns the dataplane: it folds watch messages into the
peer table and runs the backend's reconcile on every batch of messages and
on every resync tick.  The kernel read of a periodic full pass runs on a
short-lived thread of its own, so events are served while it reads.  One ``threading.Event`` stops everything.  What the
main loop does when is decided by the pure step in ``loop_state.py``; the
loop here only waits, reads the clock and carries out the step's actions.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from backends.base import KernelProbe, Network, ReconcileReport
from flanneld import loop_state
from flanneld.loop_state import (
    RESYNC_BUDGET,
    Fold,
    LoopAction,
    LoopMessage,
    NoProbe,
    Outcome,
    Probe,
    Probed,
    Reacquire,
    Reacquired,
    Reconcile,
    Reconciled,
)
from flanneld.peertable import PeerTable
from subnet.errors import FlannelError, LeaseError, StopRequested, StoreError
from subnet.lease import Lease
from subnet.manager import LeaseMessage, StoreReport, SubnetManager, ignore_store_report
from subnet.netconf import NetConfig
from subnet.retry import Backoff, wait

log = logging.getLogger(__name__)

RENEW_RETRY_MAX = 60.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How often the main loop makes a full pass, and the most of the time full passes take."""

    resync_interval: float
    resync_budget: float = RESYNC_BUDGET  # full passes take at most 1/budget of the time


class LeaseHolder:
    """The current own lease, shared between the main loop and the renewer."""

    def __init__(self, lease: Lease) -> None:
        self._lock = threading.Lock()
        self._lease = lease
        self.changed = threading.Event()

    def get(self) -> Lease:
        with self._lock:
            return self._lease

    def set(self, lease: Lease) -> None:
        with self._lock:
            self._lease = lease
        self.changed.set()


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set ``stop``: shutdown leaves routes and the lease in place."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down (routes and lease are kept)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def log_failure(what: str, err: Exception, retry_in: float) -> None:
    """One ERROR line for a failure a thread survives; the traceback only for a bug."""
    if isinstance(err, FlannelError):
        log.error("%s failed: %s (retrying in %.1fs)", what, err, retry_in)
    else:
        log.error("%s failed unexpectedly: %r (retrying in %.1fs)", what, err, retry_in,
                  exc_info=err)


# Told of each failure a loop retries (the daemon counts it and shows it on /readyz).
ErrorHook = Callable[[Exception], None]


def _ignore(_error: Exception) -> None:
    """The default error hook: count nothing."""


def retry_until_stopped(
    what: str,
    action: Callable[[], T],
    stop: threading.Event,
    backoff: Backoff,
    on_error: ErrorHook = _ignore,
) -> T:
    """Run ``action`` until it succeeds, retrying on StoreError/LeaseError only."""
    while True:
        try:
            return action()
        except (StoreError, LeaseError) as err:
            on_error(err)
            delay = backoff.next_delay()
            log.warning("%s failed: %s (retrying in %.1fs)", what, err, delay)
            if wait(stop, delay):
                raise StopRequested() from err


def get_network_config(
    manager: SubnetManager, stop: threading.Event, on_error: ErrorHook = _ignore
) -> NetConfig:
    return retry_until_stopped(
        "reading the network config", manager.get_network_config, stop, Backoff(1.0, 10.0),
        on_error,
    )


class Renewer(threading.Thread):
    """Renews an expiring lease ``margin`` before it expires."""

    def __init__(
        self,
        manager: SubnetManager,
        holder: LeaseHolder,
        margin: timedelta,
        stop: threading.Event,
        on_renewed: Callable[[datetime | None], None],
        on_error: ErrorHook = _ignore,
    ) -> None:
        super().__init__(name="lease-renewer", daemon=True)
        self._on_error = on_error
        self._manager = manager
        self._holder = holder
        self._margin = margin
        self._stop_event = stop
        self._on_renewed = on_renewed

    def run(self) -> None:
        backoff = Backoff(1.0, RENEW_RETRY_MAX)
        while not self._stop_event.is_set():
            lease = self._holder.get()
            if lease.expiration is None:
                if self._wait_for_change(None):
                    return
                continue
            due = lease.expiration - self._margin
            delay = (due - datetime.now(UTC)).total_seconds()
            if delay > 0 and self._wait_for_change(delay):
                return
            if self._holder.get() is not lease:
                continue
            try:
                renewed = self._manager.renew_lease(lease)
            except Exception as err:  # noqa: BLE001 - no input may end this thread
                self._on_error(err)
                delay = backoff.next_delay()
                log_failure(f"renewing lease {lease.key}", err, delay)
                if wait(self._stop_event, delay):
                    return
                continue
            backoff.reset()
            if self._holder.get() is lease:
                self._holder.set(renewed)
            log.info("renewed lease %s until %s", renewed.key, renewed.expiration)
            self._on_renewed(renewed.expiration)

    def _wait_for_change(self, timeout: float | None) -> bool:
        """Wait until timeout, a lease change or stop; True when stopping."""
        self._holder.changed.clear()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop_event.is_set():
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return False
            if self._holder.changed.wait(left):
                return False
        return True


class Watcher(threading.Thread):
    """Runs the manager's watch, restarting it if it ever fails unexpectedly."""

    def __init__(
        self,
        manager: SubnetManager,
        sink: Callable[[LeaseMessage], None],
        stop: threading.Event,
        on_error: ErrorHook = _ignore,
        report: StoreReport = ignore_store_report,
    ) -> None:
        super().__init__(name="lease-watcher", daemon=True)
        self._manager = manager
        self._sink = sink
        self._stop_event = stop
        self._on_error = on_error
        self._report = report

    def run(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while not self._stop_event.is_set():
            try:
                self._manager.watch_leases(self._sink, self._stop_event, self._report)
            except Exception as err:  # noqa: BLE001 - no input may end this thread
                self._on_error(err)
                delay = backoff.next_delay()
                log_failure("lease watch", err, delay)
                wait(self._stop_event, delay)


def drain(q: queue.Queue[LoopMessage], timeout: float) -> list[LoopMessage]:
    """Block up to ``timeout`` for one message, then take whatever else is queued."""
    try:
        first = q.get(timeout=max(0.0, timeout))
    except queue.Empty:
        return []
    batch = [first]
    while True:
        try:
            batch.append(q.get_nowait())
        except queue.Empty:
            return batch


class LoopObserver(Protocol):
    """Where the main loop reports what it did (the Prometheus metrics)."""

    def record_messages(self, batch: Iterable[LeaseMessage]) -> None: ...

    def record_reconcile(self, report: ReconcileReport, seconds: float, resync_only: bool) -> None: ...

    def set_peers(self, count: int) -> None: ...

    def record_store_error(self, error: Exception | None = None) -> None: ...


class MainLoop:
    """Owns the network: folds lease messages, reconciles, re-acquires a lost lease."""

    def __init__(
        self,
        register: Callable[[], Network],
        on_lease: Callable[[Lease], None],
        on_synced: Callable[[], None],
        settings: LoopSettings,
        stop: threading.Event,
        observer: LoopObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._register = register
        self._on_lease = on_lease
        self._on_synced = on_synced
        self._settings = settings
        self._stop = stop
        self._observer = observer
        self.messages: queue.Queue[LoopMessage] = queue.Queue()

    def run(self, network: Network, holder: LeaseHolder) -> None:
        """Wait, let ``loop_state.step`` decide, do what it says; until stopped."""
        table = PeerTable(network.lease.key)
        state = loop_state.start(network.lease.key, self._settings.resync_interval, self._clock(),
                                 self._settings.resync_budget)
        while not self._stop.is_set():
            received = drain(self.messages, loop_state.wait_seconds(state, self._clock()))
            state, actions = loop_state.step(state, received, self._clock())
            pending = deque(actions)
            while pending:
                network, outcome = self._execute(pending.popleft(), network, table, holder)
                if outcome is not None:
                    state, more = loop_state.settle(state, outcome, self._clock())
                    pending.extend(more)

    def _execute(
        self, action: LoopAction, network: Network, table: PeerTable, holder: LeaseHolder
    ) -> tuple[Network, Outcome | None]:
        """Do one action; returns the network (new after a re-acquisition) and what happened."""
        if isinstance(action, Fold):
            for message in action.messages:
                table.apply(message)
            if self._observer is not None:
                self._observer.record_messages(action.messages)
                self._observer.set_peers(len(table))
            return network, None
        if isinstance(action, Reacquire):
            network = self._reacquire(network, table, holder)
            return network, Reacquired(network.lease.key)
        if isinstance(action, Reconcile):
            return network, self._reconcile(network, table, action)
        if isinstance(action, Probe):
            read = network.begin_probe()
            if read is None:
                return network, NoProbe()
            threading.Thread(target=self._probe, args=(read,), name="full-pass-read",
                             daemon=True).start()
            return network, None
        self._on_synced()
        return network, None

    def _probe(self, read: Callable[[], KernelProbe]) -> None:
        """(The full pass's thread.)  Read the kernel; the loop finishes the pass."""
        probe = None
        try:
            probe = read()
        except Exception as err:  # the loop then reads on its own thread
            if not self._stop.is_set():  # at shutdown its socket may close under it
                log.error("the full pass's kernel read failed: %r (reading on the loop thread)",
                          err, exc_info=not isinstance(err, FlannelError))
        self.messages.put(Probed(probe))

    def _reconcile(self, network: Network, table: PeerTable, action: Reconcile) -> Outcome | None:
        started = self._clock()
        changes = table.take_changes()
        try:
            report = network.reconcile(table.peers(), full=action.full, changes=changes,
                                       probe=action.probe)
        except FlannelError as err:
            table.forget_changes()
            log.error("reconcile failed: %s (retrying at the next resync)", err)
            return None
        seconds = self._clock() - started
        if action.probe is not None:  # the kernel read, made on another thread, is part of it
            seconds += action.probe.seconds
        self._log_report(report, seconds, resync=action.resync_only)
        if self._observer is not None:
            self._observer.record_reconcile(report, seconds, resync_only=action.resync_only)
        return Reconciled(action, report, started)

    def _reacquire(self, network: Network, table: PeerTable, holder: LeaseHolder) -> Network:
        old = network.lease
        log.warning(
            "our lease %s was deleted or expired in the store; re-acquiring (routes stay in place)",
            old.key,
        )
        try:
            new_network = retry_until_stopped(
                "re-acquiring our lease", self._register, self._stop, Backoff(1.0, 30.0),
                self._observer.record_store_error if self._observer else _ignore,
            )
        except StopRequested:
            return network
        table.set_own_key(new_network.lease.key)
        holder.set(new_network.lease)
        if new_network.lease.subnets() != old.subnets():
            log.warning("our subnet changed from %s to %s", old.key, new_network.lease.key)
        else:
            log.info("re-acquired the same lease %s", new_network.lease.key)
        self._on_lease(new_network.lease)
        return new_network

    @staticmethod
    def _log_report(report: ReconcileReport, seconds: float, resync: bool) -> None:
        if report.added or report.removed or report.failed or report.device_recreated:
            log.info(
                "reconciled %d peers in %.3fs: %d kernel objects written, %d removed, %d failed%s",
                report.peers, seconds, report.added, report.removed, len(report.failed),
                ", device recreated" if report.device_recreated else "",
            )
        elif not resync:
            log.debug("reconciled %d peers in %.3fs: no change", report.peers, seconds)
        for failure in report.failed:
            log.error("kernel write failed: %s", failure)



class Periodic(threading.Thread):
    """Calls ``action`` every ``interval`` seconds until stopped; logs its failures."""

    def __init__(
        self, name: str, interval: float, action: Callable[[], None], stop: threading.Event
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._interval = interval
        self._action = action
        self._stop_event = stop

    def run(self) -> None:
        while not wait(self._stop_event, self._interval):
            try:
                self._action()
            except Exception as err:  # noqa: BLE001 - no input may end this thread
                log_failure(self.name, err, self._interval)
