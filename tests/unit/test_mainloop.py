"""The daemon's main loop with a fake network: batching, resync, lost lease."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from backends.base import KernelProbe, ReconcileReport
from flanneld.loop import LeaseHolder, LoopSettings, MainLoop
from flanneld.loop_state import Kick
from subnet.errors import DataplaneError
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseRemoved, Snapshot
from tests.waiting import wait_until


def lease(third: int) -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        None,
        LeaseAttrs(public_ip=ipaddress.IPv4Address(f"198.18.0.{third}"), backend_type="vxlan"),
    )


class FakeNetwork:
    def __init__(self, own: Lease) -> None:
        self._lease = own
        self.calls: list[list[str]] = []
        self.changes: list[dict[str, Lease | None] | None] = []
        self.probes: list[KernelProbe | None] = []
        self.fulls: list[bool] = []

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return 1450

    def reconcile(
        self,
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        self.calls.append(sorted(p.key for p in peers))
        self.changes.append(None if changes is None else dict(changes))
        self.probes.append(probe)
        self.fulls.append(full)
        return ReconcileReport(peers=len(peers))

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        return None

    def close(self) -> None:
        pass


def run_loop(loop: MainLoop, network: FakeNetwork, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=loop.run, args=(network, LeaseHolder(network.lease)))
    thread.start()
    return thread


WAIT = 30.0  # generous: these wait for the loop thread on a loaded machine


def test_messages_reconcile_and_first_batch_marks_synced() -> None:
    stop = threading.Event()
    synced = threading.Event()
    network = FakeNetwork(lease(1))
    loop = MainLoop(lambda: network, lambda _l: None, synced.set,
                    LoopSettings(resync_interval=60), stop)
    thread = run_loop(loop, network, stop)
    try:
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_until(synced.is_set, WAIT, "the first batch to mark synced")
        loop.messages.put(LeaseAdded(lease(3)))
        wait_until(lambda: ["10.244.2.0-24", "10.244.3.0-24"] in network.calls, WAIT,
                   "a reconcile with peers 2 and 3")
        loop.messages.put(LeaseRemoved(lease(2).key))
        wait_until(lambda: network.calls[-1] == ["10.244.3.0-24"], WAIT,
                   "a reconcile with peer 3 only")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert network.calls[0] == ["10.244.2.0-24"]


def test_resync_reconciles_without_messages() -> None:
    stop = threading.Event()
    network = FakeNetwork(lease(1))
    loop = MainLoop(lambda: network, lambda _l: None, lambda: None,
                    LoopSettings(resync_interval=0.05), stop)
    thread = run_loop(loop, network, stop)
    try:
        loop.messages.put(Snapshot((lease(1),)))  # known: no peers (unknown before it)
        wait_until(lambda: len(network.calls) >= 3, WAIT, "3 resync reconciles")
    finally:
        stop.set()
        thread.join(5)
    assert all(call == [] for call in network.calls)


def test_lost_own_lease_is_reacquired_and_reported() -> None:
    stop = threading.Event()
    first = FakeNetwork(lease(1))
    second = FakeNetwork(lease(5))
    announced: list[str] = []
    loop = MainLoop(lambda: second, lambda new: announced.append(new.key), lambda: None,
                    LoopSettings(resync_interval=60), stop)
    thread = run_loop(loop, first, stop)
    try:
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_until(lambda: len(first.calls) == 1, WAIT, "the first network's reconcile")
        loop.messages.put(LeaseRemoved(lease(1).key))
        wait_until(lambda: announced == ["10.244.5.0-24"], WAIT, "the new lease announced")
        wait_until(lambda: len(second.calls) >= 1, WAIT, "the new network's reconcile")
    finally:
        stop.set()
        thread.join(5)
    assert second.calls[-1] == ["10.244.2.0-24"]


def test_kick_before_the_first_lease_message_waits_for_its_peers() -> None:
    """A pass with the peers still unknown would delete every route a restarted node kept."""
    stop = threading.Event()
    synced = threading.Event()
    network = FakeNetwork(lease(1))
    loop = MainLoop(lambda: network, lambda _l: None, synced.set, LoopSettings(60), stop)
    thread = run_loop(loop, network, stop)
    try:
        loop.messages.put(Kick())
        wait_until(loop.messages.empty, WAIT, "the loop to take the kick")
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_until(synced.is_set, WAIT, "the first lease message's pass")
        assert network.calls == [["10.244.2.0-24"]]
    finally:
        stop.set()
        thread.join(5)


def test_retry_counts_each_store_failure_and_retries_only_store_errors() -> None:
    import pytest

    from flanneld.loop import retry_until_stopped
    from subnet.errors import ConfigError, StoreError
    from subnet.retry import Backoff

    failures: list[int] = []
    attempts = iter([StoreError("down"), StoreError("still down"), "ok"])

    def action() -> str:
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    stop = threading.Event()
    got = retry_until_stopped("t", action, stop, Backoff(0.001, 0.002), lambda _err: failures.append(1))
    assert got == "ok" and len(failures) == 2

    def bad_config() -> str:
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        retry_until_stopped("t", bad_config, stop, Backoff(0.001, 0.002))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingObserver:
    def __init__(self) -> None:
        self.passes: list[tuple[float, bool]] = []

    def record_messages(self, batch: object) -> None:
        pass

    def record_reconcile(self, report: ReconcileReport, seconds: float, resync_only: bool) -> None:
        self.passes.append((seconds, resync_only))

    def set_peers(self, count: int) -> None:
        pass

    def record_store_error(self, error: Exception | None = None) -> None:
        pass


def test_driver_carries_out_the_step_in_the_calling_thread_with_an_injected_clock() -> None:
    """No threads: the messages are queued first, the second network stops the loop."""
    stop = threading.Event()
    clock = FakeClock()
    first, second = FakeNetwork(lease(1)), FakeNetwork(lease(5))
    record = second.reconcile

    def reconcile_then_stop(
        peers: Sequence[Lease],
        full: bool = True,
        changes: Mapping[str, Lease | None] | None = None,
        probe: KernelProbe | None = None,
    ) -> ReconcileReport:
        clock.now += 2.0
        stop.set()
        return record(peers, full, changes, probe)

    second.reconcile = reconcile_then_stop  # type: ignore[method-assign]
    announced: list[str] = []
    synced: list[bool] = []
    observer = RecordingObserver()
    loop = MainLoop(lambda: second, lambda new: announced.append(new.key),
                    lambda: synced.append(True), LoopSettings(60), stop, observer, clock)
    holder = LeaseHolder(first.lease)
    for message in (Snapshot((lease(1), lease(2))), LeaseAdded(lease(3)), LeaseRemoved(lease(1).key)):
        loop.messages.put(message)
    loop.run(first, holder)
    assert first.calls == []
    assert second.calls == [["10.244.2.0-24", "10.244.3.0-24"]]
    assert announced == ["10.244.5.0-24"] and holder.get().key == "10.244.5.0-24"
    assert synced == [True]
    assert observer.passes == [(2.0, False)]


def test_each_pass_is_told_which_leases_changed_since_the_last() -> None:
    stop = threading.Event()
    network = FakeNetwork(lease(1))
    loop = MainLoop(lambda: network, lambda _l: None, lambda: None,
                    LoopSettings(resync_interval=60), stop)
    thread = run_loop(loop, network, stop)
    try:
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_until(lambda: len(network.changes) == 1, WAIT, "the snapshot's pass")
        loop.messages.put(LeaseAdded(lease(3)))
        wait_until(lambda: len(network.changes) == 2, WAIT, "the addition's pass")
        loop.messages.put(LeaseRemoved(lease(2).key))
        wait_until(lambda: len(network.changes) == 3, WAIT, "the removal's pass")
    finally:
        stop.set()
        thread.join(5)
    assert network.changes == [None, {lease(3).key: lease(3)}, {lease(2).key: None}]


class SlowReadNetwork(FakeNetwork):
    """A network whose full pass's kernel read blocks until the test lets it finish."""

    def __init__(self, own: Lease) -> None:
        super().__init__(own)
        self.reading = threading.Event()
        self.finish = threading.Event()
        self.probe = KernelProbe(generation=7, differing={}, seconds=0.01)

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        def read() -> KernelProbe:
            self.reading.set()
            self.finish.wait(WAIT)
            return self.probe

        return read


@contextmanager
def resyncing_often(network: FakeNetwork) -> Iterator[MainLoop]:
    """The loop running on ``network`` with a full pass due every 50 ms; stopped after."""
    stop = threading.Event()
    loop = MainLoop(lambda: network, lambda _l: None, lambda: None,
                    LoopSettings(resync_interval=0.05), stop)
    thread = run_loop(loop, network, stop)
    try:
        yield loop
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_an_event_is_served_while_a_full_pass_reads_the_kernel() -> None:
    network = SlowReadNetwork(lease(1))
    with resyncing_often(network) as loop:
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_until(network.reading.is_set, WAIT, "a full pass's kernel read to begin")
        loop.messages.put(LeaseAdded(lease(3)))
        wait_until(lambda: {lease(3).key: lease(3)} in network.changes, WAIT,
                   "the addition reconciled while the read still runs")
        assert not network.finish.is_set() and network.probe not in network.probes
        network.finish.set()
        wait_until(lambda: network.probe in network.probes, WAIT,
                   "the full pass finished with the read")
    assert network.calls[network.probes.index(network.probe)] == ["10.244.2.0-24", "10.244.3.0-24"]


class FailingReadNetwork(FakeNetwork):
    """A network whose full pass's kernel read fails."""

    def begin_probe(self) -> Callable[[], KernelProbe] | None:
        def read() -> KernelProbe:
            raise DataplaneError("netlink socket for the full pass: no buffer space", 105)

        return read


def test_a_failed_kernel_read_gives_the_full_pass_to_the_loop_thread(caplog: Any) -> None:
    network = FailingReadNetwork(lease(1))
    with resyncing_often(network) as loop:
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_until(lambda: len(network.fulls) >= 2, WAIT, "a full pass after the failed read")
    assert network.fulls[1] is True and network.probes[1] is None
    assert "the full pass's kernel read failed" in caplog.text
