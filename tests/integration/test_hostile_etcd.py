"""Hostile etcd contents and settings against a real etcd (issue 9, items 1, 4 and 7)."""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client

from subnet.errors import StoreError
from subnet.etcd import EtcdSettings, EtcdSubnetManager
from subnet.lease import decode_attrs
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot
from tests.integration.conftest import Etcd, running_etcd
from tests.integration.test_etcd_manager import (
    CONFIG,
    PREFIX,
    SUBNETS,
    Watch,
    attrs,
    by_key,
    foreign,
    go_value,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

MB = 1_000_000
OWN_IP = "192.168.1.1"


@pytest.fixture
def big_etcd(tmp_path: Path) -> Iterator[Etcd]:
    """etcd accepting requests up to 12 MB (its default is 1.5 MiB)."""
    with running_etcd(tmp_path, "--max-request-bytes=12000000") as server:
        yield server


@pytest.fixture
def writer(big_etcd: Etcd) -> Iterator[Callable[[str, bytes], None]]:
    """Puts values too large for etcdctl (its client sends at most 2 MiB)."""
    host, port = big_etcd.url.removeprefix("http://").split(":")
    client = MultiEndpointEtcd3Client(
        endpoints=[Endpoint(host, int(port), secure=False, time_retry=0)], timeout=30,
        failover=True,
    )

    def put(key: str, value: bytes) -> None:
        client.put(key, value)

    yield put
    client.close()


class ReportingWatch(Watch):
    """The shared Watch helper, with the store reports collected too."""

    def __init__(self, manager: EtcdSubnetManager) -> None:
        self.reports: list[StoreError | None] = []
        self.messages: queue.Queue[LeaseMessage] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=manager.watch_leases, args=(self.messages.put, self.stop, self.reports.append),
            daemon=True,
        )
        self.thread.start()

    def failures(self) -> int:
        return sum(report is not None for report in self.reports)


def make(etcd: Etcd, **kwargs: object) -> EtcdSubnetManager:
    return EtcdSubnetManager(
        EtcdSettings(endpoints=(etcd.url,), **kwargs),  # type: ignore[arg-type]
        backoff_initial=0.02, backoff_max=0.2,
    )


def test_large_values_stop_neither_start_nor_watch(
    big_etcd: Etcd, writer: Callable[[str, bytes], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.etcd")
    etcd = big_etcd
    etcd.put(PREFIX + "/config", CONFIG)
    foreign(etcd, "10.5.1.0-24", "192.168.5.1")
    etcd.put(SUBNETS + "10.5.2.0-24", go_value(OWN_IP))  # our lease from before a restart
    for third in (30, 31, 32):  # each within etcd's default request limit; 4.2 MB together
        writer(f"{SUBNETS}10.5.{third}.0-24", b"x" * int(1.4 * MB))

    # A (re)starting node: reading its previous lease and acquiring work.
    started = time.monotonic()
    manager = make(etcd)
    try:
        previous = manager.previous_attrs(ipaddress.IPv4Address(OWN_IP))
        assert previous is not None and str(previous.public_ip) == OWN_IP
        own = manager.acquire_lease(attrs(OWN_IP))
        assert own.key == "10.5.2.0-24"
        print(f"FIGURE large values: start (previous lease + acquire) with 3 x 1.4 MB values "
              f"took {time.monotonic() - started:.2f}s")

        watch = ReportingWatch(manager)
        snapshot = watch.expect(Snapshot)
        assert set(by_key(snapshot.leases)) == {"10.5.1.0-24", "10.5.2.0-24"}

        # A 10 MB value while the watch runs: skipped as a bad lease, the watch goes on.
        writer(SUBNETS + "10.5.40.0-24", b"y" * (10 * MB))
        assert watch.expect(LeaseRemoved, timeout=30).key == "10.5.40.0-24"
        began = time.monotonic()
        foreign(etcd, "10.5.3.0-24", "192.168.5.3")
        assert watch.expect(LeaseAdded).lease.key == "10.5.3.0-24"
        print(f"FIGURE large values: a new peer after a 10 MB value reached the watch in "
              f"{time.monotonic() - began:.2f}s")
        # A restart with the 10 MB value in place still lists.
        again = make(etcd)
        try:
            assert again.previous_attrs(ipaddress.IPv4Address(OWN_IP)) is not None
        finally:
            again.close()
        # Deleting it is an ordinary removal; later peers still arrive.
        etcd.delete(SUBNETS + "10.5.40.0-24")
        assert watch.expect(LeaseRemoved).key == "10.5.40.0-24"
        foreign(etcd, "10.5.4.0-24", "192.168.5.4")
        assert watch.expect(LeaseAdded).lease.key == "10.5.4.0-24"
        watch.close()
        assert watch.failures() == 0, watch.reports
    finally:
        manager.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for key in ("10.5.30.0-24", "10.5.40.0-24"):
        assert any(key in w and "more than any lease needs" in w for w in warnings), warnings
    assert not any("lease watch failed" in w for w in warnings), warnings


def test_a_failing_watch_reports_each_failure_and_the_recovery(etcd: Etcd) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    manager = make(etcd)
    try:
        watch = ReportingWatch(manager)
        watch.expect(Snapshot)
        etcd.stop()
        wait_until(lambda: watch.failures() >= 2, 60.0, "two failed watch attempts reported")
        etcd.start()
        wait_until(lambda: watch.reports[-1] is None, 60.0, "the recovery reported")
        watch.close()
    finally:
        manager.close()


def test_own_lease_overwritten_with_garbage_is_written_again(etcd: Etcd) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    manager = make(etcd)
    try:
        own = manager.acquire_lease(attrs(OWN_IP))
        watch = Watch(manager)
        watch.expect(Snapshot)
        etcd.put(SUBNETS + own.key, "garbage {")
        # The daemon sees its lease gone (as for a deletion) and acquires again:
        assert watch.expect(LeaseRemoved).key == own.key
        again = manager.acquire_lease(attrs(OWN_IP))
        assert again.key == own.key
        value = etcd.value(SUBNETS + own.key)
        assert value is not None and str(decode_attrs(value).public_ip) == OWN_IP
        assert etcd.lease_of(SUBNETS + own.key) != 0  # not left as a TTL-less reservation
        assert watch.expect(LeaseAdded).lease.key == own.key
        watch.close()
    finally:
        manager.close()


def test_credentials_without_server_auth_go_on_and_say_so_once(
    etcd: Etcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    etcd.put(PREFIX + "/config", CONFIG)
    password = "pw-Unused-0815"
    manager = make(etcd, username="flannel", password=password)
    try:
        manager.get_network_config()
        lease = manager.acquire_lease(attrs(OWN_IP))
        watch = Watch(manager)
        assert lease.key in by_key(watch.expect(Snapshot).leases)
        manager.renew_lease(lease)
        watch.close()
    finally:
        manager.close()
    notes = [r.getMessage() for r in caplog.records if "authentication disabled" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "not needed" in notes[0]
    assert not any(password in r.getMessage() for r in caplog.records)


def test_the_lease_list_is_read_page_by_page(
    etcd: Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("subnet.etcd.LIST_PAGE", 2)
    etcd.put(PREFIX + "/config", '{"Network": "10.6.0.0/27", "SubnetLen": 30}')  # .4 .. .28
    for fourth in range(4, 28, 4):  # 6 of them leased
        foreign(etcd, f"10.6.0.{fourth}-30", f"192.168.6.{fourth}")
    manager = make(etcd)
    try:
        watch = ReportingWatch(manager)
        assert len(watch.expect(Snapshot).leases) == 6
        watch.close()
        assert manager.acquire_lease(attrs(OWN_IP)).key == "10.6.0.28-30"  # the free one
    finally:
        manager.close()
