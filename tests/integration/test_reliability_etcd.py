"""Reliability cases of the etcd subnet manager against a real etcd, no daemon.

The lower-level twins of tests/e2e/test_reliability.py: re-acquiring a
deleted lease, keys that would alias a real lease, values that break the
JSON parser, and how soon a watch resumes after an etcd outage.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from subnet.etcd import EtcdSettings, EtcdSubnetManager
from subnet.lease import LeaseAttrs
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot
from tests.integration.conftest import Etcd, running_etcd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'


def value(ip: str, mac: str = "0e:00:00:00:00:01") -> str:
    return (
        '{"PublicIP":"' + ip + '","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"' + mac + '"}}'
    )


class Watch:
    def __init__(self, manager: EtcdSubnetManager) -> None:
        self.messages: queue.Queue[LeaseMessage] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=manager.watch_leases, args=(self.messages.put, self.stop), daemon=True
        )
        self.thread.start()

    def next(self, timeout: float) -> LeaseMessage:
        return self.messages.get(timeout=timeout)

    def quiet(self, seconds: float = 0.5) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=seconds)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    with running_etcd(tmp_path) as server:
        server.put(PREFIX + "/config", CONFIG)
        yield server


@pytest.fixture
def manager(etcd: Etcd) -> Iterator[EtcdSubnetManager]:
    made = EtcdSubnetManager(EtcdSettings(endpoints=(etcd.url,)))  # production backoff
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def watch(manager: EtcdSubnetManager) -> Iterator[Watch]:
    running = Watch(manager)
    try:
        yield running
    finally:
        running.stop.set()
        running.thread.join(5)
    assert not running.thread.is_alive()


def test_reacquire_after_our_key_was_deleted_gets_the_same_subnet(
    etcd: Etcd, manager: EtcdSubnetManager
) -> None:
    ours = LeaseAttrs(public_ip=ipaddress.IPv4Address("192.168.7.1"), backend_type="vxlan")
    first = manager.acquire_lease(ours)
    for round_ in range(5):  # a random pick among ~100 free subnets would differ
        etcd.delete(SUBNETS + first.key)
        etcd.put(SUBNETS + f"10.5.{200 + round_}.0-24", value(f"192.168.7.{10 + round_}"))
        again = manager.acquire_lease(ours)
        assert again.key == first.key, round_


def test_a_key_with_host_bits_is_skipped_and_never_aliases_a_real_lease(
    etcd: Etcd, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.etcd")
    etcd.put(SUBNETS + "10.5.1.0-24", value("192.168.7.1"))
    snapshot = watch.next(10.0)
    assert isinstance(snapshot, Snapshot) and [x.key for x in snapshot.leases] == []
    assert isinstance(added := watch.next(10.0), LeaseAdded)
    assert added.lease.key == "10.5.1.0-24"
    etcd.put(SUBNETS + "10.5.1.1-24", value("192.168.7.66", "0e:00:00:00:00:66"))
    etcd.delete(SUBNETS + "10.5.1.1-24")
    watch.quiet()  # neither a LeaseAdded over 10.5.1.0-24 nor its LeaseRemoved
    assert "not canonical" in caplog.text and "10.5.1.1-24" in caplog.text


def test_a_value_nested_too_deeply_is_skipped_and_the_watch_goes_on(
    etcd: Etcd, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.etcd")
    assert isinstance(watch.next(10.0), Snapshot)
    etcd.put(SUBNETS + "10.5.2.0-24", "[" * 100_000)
    etcd.put(SUBNETS + "10.5.4.0-24", value("192.168.7.4").replace(
        '"BackendData":{', '"BackendData":{"x":' + "[" * 5_000 + "]" * 5_000 + ","))
    etcd.put(SUBNETS + "10.5.3.0-24", value("192.168.7.3"))
    # An unreadable value is a removal of its key (as a fresh list sees it), then the good
    # lease after them arrives on the same watch.
    first, second, added = (watch.next(10.0) for _ in range(3))
    assert first == LeaseRemoved("10.5.2.0-24") and second == LeaseRemoved("10.5.4.0-24")
    assert isinstance(added, LeaseAdded) and added.lease.key == "10.5.3.0-24"
    assert watch.thread.is_alive()
    assert "10.5.2.0-24" in caplog.text and "10.5.4.0-24" in caplog.text


def test_watch_resumes_within_seconds_after_a_long_etcd_outage(etcd: Etcd, watch: Watch) -> None:
    """slow: a 10 s outage."""
    assert isinstance(watch.next(10.0), Snapshot)
    etcd.stop()
    time.sleep(10.0)  # the scenario: a 10 s outage
    etcd.start()
    back = time.monotonic()
    etcd.put(SUBNETS + "10.5.9.0-24", value("192.168.7.9"))
    added = watch.next(10.0)
    took = time.monotonic() - back
    print(f"FIGURE watch resumed and delivered after a 10 s etcd outage (s): {took:.2f}")
    assert isinstance(added, LeaseAdded) and added.lease.key == "10.5.9.0-24"
    assert took <= 15.0  # etcd's retry cap is 2 s; a watch that never resumes never delivers
