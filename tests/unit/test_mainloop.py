"""The daemon's main loop with a fake network: batching, resync, lost lease."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence

from backends.base import ReconcileReport
from flanneld.loop import Kick, LeaseHolder, LoopSettings, MainLoop
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseRemoved, Snapshot


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

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return 1450

    def reconcile(self, peers: Sequence[Lease], full: bool = True) -> ReconcileReport:
        self.calls.append(sorted(p.key for p in peers))
        return ReconcileReport(peers=len(peers))

    def close(self) -> None:
        pass


def run_loop(loop: MainLoop, network: FakeNetwork, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=loop.run, args=(network, LeaseHolder(network.lease)))
    thread.start()
    return thread


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_messages_reconcile_and_first_batch_marks_synced() -> None:
    stop = threading.Event()
    synced = threading.Event()
    network = FakeNetwork(lease(1))
    loop = MainLoop(lambda: network, lambda _l: None, synced.set,
                    LoopSettings(resync_interval=60), stop)
    thread = run_loop(loop, network, stop)
    try:
        loop.messages.put(Snapshot((lease(1), lease(2))))
        wait_for(synced.is_set)
        loop.messages.put(LeaseAdded(lease(3)))
        wait_for(lambda: ["10.244.2.0-24", "10.244.3.0-24"] in network.calls)
        loop.messages.put(LeaseRemoved(lease(2).key))
        wait_for(lambda: network.calls[-1] == ["10.244.3.0-24"])
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
        wait_for(lambda: len(network.calls) >= 3)
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
        wait_for(lambda: len(first.calls) == 1)
        loop.messages.put(LeaseRemoved(lease(1).key))
        wait_for(lambda: announced == ["10.244.5.0-24"])
        wait_for(lambda: len(second.calls) >= 1)
    finally:
        stop.set()
        thread.join(5)
    assert second.calls[-1] == ["10.244.2.0-24"]


def test_kick_reconciles_at_once_but_does_not_count_as_synced() -> None:
    stop = threading.Event()
    synced = threading.Event()
    network = FakeNetwork(lease(1))
    loop = MainLoop(lambda: network, lambda _l: None, synced.set, LoopSettings(60), stop)
    thread = run_loop(loop, network, stop)
    try:
        loop.messages.put(Kick())
        wait_for(lambda: len(network.calls) == 1, timeout=2.0)
        assert not synced.is_set()
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
    got = retry_until_stopped("t", action, stop, Backoff(0.001, 0.002), lambda: failures.append(1))
    assert got == "ok" and len(failures) == 2

    def bad_config() -> str:
        raise ConfigError("bad")

    with pytest.raises(ConfigError):
        retry_until_stopped("t", bad_config, stop, Backoff(0.001, 0.002))


def test_resync_interval_stretches_only_for_slow_full_passes() -> None:
    from flanneld.loop import resync_interval

    assert resync_interval(10.0, 0.05) == 10.0
    assert resync_interval(10.0, 5.0) == 50.0
