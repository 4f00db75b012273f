"""EtcdSubnetManager against a real etcd; etcdctl is the independent observer."""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from subnet.errors import (
    ConfigError,
    FlannelError,
    LeaseConflictError,
    StoreError,
    SubnetsExhaustedError,
)
from subnet.etcd import (
    CONFIG_NOT_FOUND,
    EtcdSettings,
    EtcdSubnetManager,
    plan_endpoints,
)
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot
from tests.integration.conftest import Etcd, make_tls_files, running_etcd
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
# A stop that interrupts a blocked watch or a backoff ends it well within this
# (measured: milliseconds); one that does not waits out a 60 s backoff or forever.
PROMPT_STOP = 4.0
CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
VXLAN_DATA = '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'
IP4 = ipaddress.IPv4Address
NET4 = ipaddress.IPv4Network
T = TypeVar("T")


def attrs(ip: str, data: str = VXLAN_DATA) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IP4(ip), backend_type="vxlan", backend_data=data)


def go_value(ip: str) -> str:
    """The lease value exactly as Go flanneld writes it for a vxlan node."""
    return (
        '{"PublicIP":"' + ip + '","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    )


@pytest.fixture
def managers(etcd: Etcd) -> Iterator[Callable[..., EtcdSubnetManager]]:
    """Build managers on the test's etcd (fast backoff); all closed afterwards."""
    made: list[EtcdSubnetManager] = []

    def make(*args: Any, **kwargs: Any) -> EtcdSubnetManager:
        kwargs.setdefault("backoff_initial", 0.02)
        kwargs.setdefault("backoff_max", 0.2)
        manager = EtcdSubnetManager(EtcdSettings(endpoints=(etcd.url,)), *args, **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


class Watch:
    """watch_leases in a thread, its messages on a queue."""

    def __init__(self, manager: EtcdSubnetManager) -> None:
        self.messages: queue.Queue[LeaseMessage] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=manager.watch_leases, args=(self.messages.put, self.stop), daemon=True
        )
        self.thread.start()

    def next(self, timeout: float = 10.0) -> LeaseMessage:
        return self.messages.get(timeout=timeout)

    def expect(self, kind: type[T], timeout: float = 10.0) -> T:
        message = self.next(timeout)
        assert isinstance(message, kind), message
        return message

    def quiet(self, seconds: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=seconds)

    def close(self) -> float:
        """Stop the watch; how long watch_leases took to return."""
        began = time.monotonic()
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "watch_leases did not return after stop"
        return time.monotonic() - began


@pytest.fixture
def watches() -> Iterator[Callable[[EtcdSubnetManager], Watch]]:
    made: list[Watch] = []

    def make(manager: EtcdSubnetManager) -> Watch:
        watch = Watch(manager)
        made.append(watch)
        return watch

    yield make
    for watch in made:
        watch.stop.set()
        watch.thread.join(5)


def by_key(leases: Sequence[Lease]) -> dict[str, Lease]:
    return {lease.key: lease for lease in leases}


def foreign(etcd: Etcd, subnet: str, ip: str, ttl: int | None = 600) -> None:
    """Another node's lease (TTL-less, a reservation, when ``ttl`` is None)."""
    lease = etcd.grant(ttl) if ttl is not None else None
    etcd.put(SUBNETS + subnet, go_value(ip), lease=lease)


# --- network config ----------------------------------------------------------------


def test_missing_config_is_a_retryable_store_error_with_upstreams_hint(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    with pytest.raises(StoreError) as info:
        managers().get_network_config()
    assert CONFIG_NOT_FOUND in str(info.value)
    assert not isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"Network": 5}', "invalid IPv4 CIDR format"),
        ('{"Network": "10.0.0.0/30"}', "network is too small"),
        ('{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}', "SubnetMin is not in the range"),
    ],
)
def test_invalid_config_is_a_config_error(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager], text: str, message: str
) -> None:
    etcd.put(PREFIX + "/config", text)
    with pytest.raises(ConfigError, match=message):
        managers().get_network_config()


def test_valid_config_is_parsed(etcd: Etcd, managers: Callable[..., EtcdSubnetManager]) -> None:
    etcd.put(PREFIX + "/config", '{"network": "10.3.0.0/16", "backend": {"type": "VXLAN"}}')
    cfg = managers().get_network_config()
    assert cfg.network == NET4("10.3.0.0/16")
    assert cfg.backend.type == "vxlan"


def test_custom_prefix(etcd: Etcd) -> None:
    etcd.put("/vxlan/network/config", '{"Network": "10.11.0.0/16"}')
    manager = EtcdSubnetManager(EtcdSettings(endpoints=(etcd.url,), prefix="/vxlan/network"))
    try:
        lease = manager.acquire_lease(attrs("192.168.1.1"))
    finally:
        manager.close()
    assert lease.subnet is not None and lease.subnet.subnet_of(NET4("10.11.0.0/16"))
    assert etcd.keys("/vxlan/network/subnets/") == [f"/vxlan/network/subnets/{lease.key}"]


# --- acquiring -----------------------------------------------------------------------


def test_acquire_allocates_in_range_with_go_compatible_key_and_value(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    before = datetime.now(UTC)
    lease = managers(lease_ttl=600).acquire_lease(attrs("192.168.64.3"))

    assert lease.subnet is not None and lease.ipv6_subnet is None
    assert lease.subnet.prefixlen == 24
    assert NET4("10.5.1.0/24").network_address <= lease.subnet.network_address
    assert lease.subnet.subnet_of(NET4("10.5.0.0/16"))
    key = f"{SUBNETS}{lease.subnet.network_address}-24"
    assert etcd.keys(SUBNETS) == [key]
    record = etcd.get(key)
    assert record is not None
    assert record["value"] == go_value("192.168.64.3")
    assert 590 <= etcd.lease_ttl(record["lease"]) <= 600
    assert lease.expiration is not None
    assert before + timedelta(seconds=590) <= lease.expiration
    assert lease.expiration <= datetime.now(UTC) + timedelta(seconds=600)


def test_acquire_with_same_public_ip_reuses_and_updates_the_lease(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    first = managers().acquire_lease(attrs("192.168.64.3"))
    old_etcd_lease = etcd.lease_of(SUBNETS + first.key)
    assert old_etcd_lease
    new_data = '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}'

    again = managers().acquire_lease(attrs("192.168.64.3", new_data))
    other = managers().acquire_lease(attrs("192.168.64.4"))

    assert again.key == first.key
    assert other.key != first.key
    record = etcd.get(SUBNETS + first.key)
    assert record is not None
    assert json.loads(record["value"])["BackendData"]["VtepMAC"] == "aa:bb:cc:dd:ee:ff"
    assert record["lease"] != old_etcd_lease
    assert etcd.lease_ttl(old_etcd_lease) == -1  # the replaced etcd lease was revoked
    assert len(etcd.keys(SUBNETS)) == 2


def test_previous_subnet_is_reused_when_free_and_compatible(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    lease = managers((NET4("10.5.77.0/24"), None)).acquire_lease(attrs("192.168.1.1"))
    assert lease.subnet == NET4("10.5.77.0/24")


@pytest.mark.parametrize(
    "previous",
    [
        "10.5.77.0/24",  # held by another node
        "10.6.3.0/24",  # outside Network
        "10.5.0.0/24",  # below SubnetMin (the first subnet is skipped)
        "10.5.78.0/25",  # wrong prefix length
    ],
)
def test_previous_subnet_is_not_reused_when_taken_or_incompatible(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager], previous: str
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    foreign(etcd, "10.5.77.0-24", "192.168.9.9")
    lease = managers((NET4(previous), None)).acquire_lease(attrs("192.168.1.1"))
    assert lease.subnet is not None
    assert lease.subnet != NET4("10.5.77.0/24")
    assert lease.subnet != NET4(previous)
    assert lease.subnet.prefixlen == 24 and lease.subnet.subnet_of(NET4("10.5.0.0/16"))
    assert etcd.value(SUBNETS + "10.5.77.0-24") == go_value("192.168.9.9")


def test_lease_incompatible_with_a_changed_config_is_dropped(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    old = managers().acquire_lease(attrs("192.168.1.1"))
    etcd.put(PREFIX + "/config", '{"Network": "10.8.0.0/16"}')

    new = managers().acquire_lease(attrs("192.168.1.1"))

    assert new.subnet is not None and new.subnet.subnet_of(NET4("10.8.0.0/16"))
    assert etcd.keys(SUBNETS) == [SUBNETS + new.key]
    assert etcd.get(SUBNETS + old.key) is None


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "dual"])
def test_concurrent_acquires_never_share_a_subnet(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager], ipv6: bool
) -> None:
    # 31 candidate /27s (and 32 /64s) for 20 nodes: random choices collide often.
    dual = ', "EnableIPv6": true, "IPv6Network": "fd00:9::/59"' if ipv6 else ""
    etcd.put(PREFIX + "/config", '{"Network": "10.9.0.0/22", "SubnetLen": 27' + dual + "}")
    count = 20
    nodes = [managers(attempts=30) for _ in range(count)]
    barrier = threading.Barrier(count)
    results: dict[int, Lease | FlannelError] = {}

    def run(i: int) -> None:
        barrier.wait(10)
        try:
            results[i] = nodes[i].acquire_lease(attrs(f"192.168.2.{i + 1}"))
        except FlannelError as err:  # reported below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    leases = [r for r in results.values() if isinstance(r, Lease)]
    assert len(leases) == count, results
    assert len({lease.key for lease in leases}) == count
    assert len({lease.ipv6_subnet for lease in leases}) == (count if ipv6 else 1)
    assert sorted(etcd.keys(SUBNETS)) == sorted(SUBNETS + lease.key for lease in leases)
    for i, result in results.items():
        assert isinstance(result, Lease)
        value = etcd.value(SUBNETS + result.key)
        assert value is not None and json.loads(value)["PublicIP"] == f"192.168.2.{i + 1}"


class Thief(random.Random):
    """Picks the first free subnet, but another node writes it first (``steal`` times)."""

    def __init__(self, etcd: Etcd, steal: int) -> None:
        super().__init__(0)
        self.etcd = etcd
        self.steal = steal
        self.stolen: list[str] = []

    def choice(self, seq: Any) -> Any:
        subnet = seq[0]
        if len(self.stolen) < self.steal:
            key = f"{subnet.network_address}-{subnet.prefixlen}"
            foreign(self.etcd, key, "192.168.66.66")
            self.stolen.append(key)
        return subnet


def test_lost_race_is_retried_with_a_new_choice(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    thief = Thief(etcd, steal=2)
    lease = managers(chooser=thief).acquire_lease(attrs("192.168.1.1"))
    assert thief.stolen == ["10.5.1.0-24", "10.5.2.0-24"]
    assert lease.key == "10.5.3.0-24"
    for key in thief.stolen:  # the winners' leases are untouched
        assert etcd.value(SUBNETS + key) == go_value("192.168.66.66")


def counting_lists(manager: EtcdSubnetManager) -> list[int]:
    """Count the manager's listings of the subnets prefix from now on."""
    calls: list[int] = []
    listing = manager._list

    def counted() -> Any:
        calls.append(1)
        return listing()

    manager._list = counted  # type: ignore[method-assign]
    return calls


def test_acquire_after_reading_the_previous_lease_does_not_list_again(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    foreign(etcd, "10.5.50.0-24", "192.168.5.50")
    manager = managers()
    assert manager.previous_attrs(IP4("192.168.1.1")) is None
    lists = counting_lists(manager)
    lease = manager.acquire_lease(attrs("192.168.1.1"))
    assert lists == [] and lease.key != "10.5.50.0-24"
    assert etcd.value(SUBNETS + lease.key) == go_value("192.168.1.1")


def test_dual_stack_acquire_lists_afresh(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    """The create compares only the IPv4 half of the key: the IPv6 subnet is chosen on a
    fresh listing, so nodes starting together seldom pick the same one (and have to
    choose again)."""
    etcd.put(PREFIX + "/config",
             '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}')
    manager = managers()
    assert manager.previous_attrs(IP4("192.168.1.1")) is None
    lists = counting_lists(manager)
    lease = manager.acquire_lease(attrs("192.168.1.1"))
    assert lists and lease.ipv6_subnet is not None


def test_a_subnet_taken_after_the_reused_listing_is_not_taken_twice(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager], caplog: pytest.LogCaptureFixture
) -> None:
    """The first attempt chooses from the listing made for our previous lease; a node
    that took that subnet since wins, and the next attempt lists afresh."""
    etcd.put(PREFIX + "/config", CONFIG)
    manager = managers((NET4("10.5.77.0/24"), None))
    assert manager.previous_attrs(IP4("192.168.1.1")) is None
    foreign(etcd, "10.5.77.0-24", "192.168.9.9")  # after that listing
    lists = counting_lists(manager)
    with caplog.at_level(logging.INFO, logger="subnet.etcd"):
        lease = manager.acquire_lease(attrs("192.168.1.1"))
    assert "10.5.77.0-24 was taken by another node meanwhile" in caplog.text  # the old listing
    assert lists == [1]
    assert lease.key != "10.5.77.0-24"
    assert etcd.value(SUBNETS + "10.5.77.0-24") == go_value("192.168.9.9")


def test_losing_every_race_is_a_lease_conflict(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    thief = Thief(etcd, steal=100)
    with pytest.raises(LeaseConflictError):
        managers(chooser=thief, attempts=3).acquire_lease(attrs("192.168.1.1"))
    assert len(thief.stolen) == 3
    assert len(etcd.keys(SUBNETS)) == 3  # none of ours


class V6Thief(random.Random):
    """Picks the first free subnets; another node takes our IPv6 choice first (once), under
    another IPv4 subnet: both creates succeed, as no key compare sees the IPv6 part."""

    def __init__(self, etcd: Etcd) -> None:
        super().__init__(0)
        self.etcd = etcd
        self.stolen: list[str] = []

    def choice(self, seq: Any) -> Any:
        subnet = seq[0]
        if subnet.version == 6 and not self.stolen:
            key = f"10.5.200.0-24&{subnet.network_address}-{subnet.prefixlen}"
            foreign(self.etcd, key, "192.168.66.66")
            self.stolen.append(key)
        return subnet


def test_an_ipv6_subnet_taken_at_the_same_time_is_given_up_and_another_chosen(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="subnet.etcd")
    etcd.put(
        PREFIX + "/config",
        '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}',
    )
    thief = V6Thief(etcd)
    lease = managers(chooser=thief).acquire_lease(attrs("192.168.1.1"))
    assert thief.stolen == ["10.5.200.0-24&fd00:5:0:1::-64"]
    assert lease.key == "10.5.1.0-24&fd00:5:0:2::-64"
    assert sorted(etcd.keys(SUBNETS)) == sorted(SUBNETS + k for k in (*thief.stolen, lease.key))
    assert etcd.value(SUBNETS + thief.stolen[0]) == go_value("192.168.66.66")  # untouched
    assert "IPv6 subnet fd00:5:0:1::/64 was taken by" in caplog.text


def test_dual_stack_key_cannot_shadow_an_ipv4_lease(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(
        PREFIX + "/config",
        '{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:5::/48"}',
    )
    thief = Thief(etcd, steal=1)  # writes "10.5.1.0-24" (no IPv6 part) first
    lease = managers(chooser=thief).acquire_lease(attrs("192.168.1.1"))
    assert lease.key.startswith("10.5.2.0-24&fd00:5:0:1::-64"), lease.key
    assert lease.ipv6_subnet == ipaddress.IPv6Network("fd00:5:0:1::/64")


def test_out_of_subnets_names_the_fix(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    # /28 with /30 subnets: SubnetMin .4 .. SubnetMax .12 = three subnets.
    etcd.put(PREFIX + "/config", '{"Network": "10.6.0.0/28"}')
    for i, net in enumerate(("10.6.0.4-30", "10.6.0.8-30", "10.6.0.12-30")):
        foreign(etcd, net, f"192.168.3.{i + 1}")
    with pytest.raises(SubnetsExhaustedError, match="delete leases of dead nodes"):
        managers().acquire_lease(attrs("192.168.1.1"))


# --- reservations (keys without an etcd lease) --------------------------------------


def test_reservation_is_reused_by_its_host_and_stays_ttl_less(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    foreign(etcd, "10.5.200.0-24", "192.168.1.1", ttl=None)

    data = '{"VNI":1,"VtepMAC":"aa:aa:aa:aa:aa:aa"}'
    lease = managers().acquire_lease(attrs("192.168.1.1", data))

    assert lease.key == "10.5.200.0-24"
    assert lease.expiration is None
    record = etcd.get(SUBNETS + "10.5.200.0-24")
    assert record is not None and record["lease"] == 0
    assert "aa:aa:aa:aa:aa:aa" in record["value"]
    renewed = managers().renew_lease(lease)
    assert renewed.expiration is None
    assert etcd.lease_of(SUBNETS + "10.5.200.0-24") == 0


def test_reservation_of_another_host_is_not_handed_out(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", '{"Network": "10.6.0.0/28"}')
    foreign(etcd, "10.6.0.4-30", "192.168.3.1", ttl=None)
    foreign(etcd, "10.6.0.8-30", "192.168.3.2", ttl=None)
    lease = managers().acquire_lease(attrs("192.168.1.1"))
    assert lease.key == "10.6.0.12-30"


# --- renewal ---------------------------------------------------------------------------


def test_renewal_moves_the_key_to_a_fresh_etcd_lease_and_revokes_the_old_one(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    lease = managers(lease_ttl=30).acquire_lease(attrs("192.168.1.1"))
    before = etcd.get(SUBNETS + lease.key)
    assert before is not None and etcd.lease_ttl(before["lease"]) <= 30

    renewed = managers(lease_ttl=3600).renew_lease(lease)

    after = etcd.get(SUBNETS + lease.key)
    assert after is not None
    assert after["value"] == before["value"]
    assert after["lease"] != before["lease"]
    assert 3590 <= etcd.lease_ttl(after["lease"]) <= 3600
    assert etcd.lease_ttl(before["lease"]) == -1
    assert lease.expiration is not None and renewed.expiration is not None
    assert renewed.expiration - lease.expiration > timedelta(seconds=3500)
    assert renewed.key == lease.key and renewed.attrs == lease.attrs


def test_renewal_recreates_a_vanished_lease_but_never_takes_a_foreign_one(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    manager = managers()
    lease = manager.acquire_lease(attrs("192.168.1.1"))
    etcd.delete(SUBNETS + lease.key)

    renewed = manager.renew_lease(lease)
    record = etcd.get(SUBNETS + lease.key)
    assert record is not None and record["value"] == go_value("192.168.1.1")
    assert renewed.expiration is not None

    etcd.put(SUBNETS + lease.key, go_value("192.168.7.7"))
    with pytest.raises(LeaseConflictError, match=r"192\.168\.7\.7"):
        manager.renew_lease(lease)
    assert etcd.value(SUBNETS + lease.key) == go_value("192.168.7.7")


# --- watching ----------------------------------------------------------------------------


def test_watch_reports_snapshot_then_additions_and_removals(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    foreign(etcd, "10.5.50.0-24", "192.168.5.50")
    manager = managers()
    own = manager.acquire_lease(attrs("192.168.1.1"))
    watch = watches(manager)

    snapshot = watch.expect(Snapshot)
    leases = by_key(snapshot.leases)
    assert set(leases) == {"10.5.50.0-24", own.key}
    assert leases["10.5.50.0-24"].attrs == attrs("192.168.5.50")
    assert leases[own.key].attrs == own.attrs
    # the store's creation order travels with each lease: older claims win conflicts
    first, second = leases["10.5.50.0-24"].claim_order, leases[own.key].claim_order
    assert first is not None and second is not None and first < second

    foreign(etcd, "10.5.51.0-24", "192.168.5.51")
    added = watch.expect(LeaseAdded)
    assert added.lease.key == "10.5.51.0-24"
    assert added.lease.claim_order is not None and added.lease.claim_order > second
    assert added.lease.subnet == NET4("10.5.51.0/24")
    assert added.lease.attrs == attrs("192.168.5.51")

    etcd.delete(SUBNETS + "10.5.50.0-24")
    assert watch.expect(LeaseRemoved) == LeaseRemoved("10.5.50.0-24")
    etcd.delete(SUBNETS + own.key)
    assert watch.expect(LeaseRemoved) == LeaseRemoved(own.key)
    watch.quiet()


def first_snapshot(
    manager: EtcdSubnetManager, watches: Callable[[EtcdSubnetManager], Watch]
) -> tuple[dict[str, Lease], list[int], Watch]:
    """Open the watch after the start's acquire: its first snapshot by key, the listings
    it made, and the watch."""
    lists = counting_lists(manager)
    watch = watches(manager)
    return by_key(watch.expect(Snapshot).leases), lists, watch


@pytest.mark.parametrize("write_between", [False, True])
def test_the_first_snapshot_is_the_starts_listing_and_our_lease_unless_another_write_came_between(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
    write_between: bool,
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    if not write_between:
        foreign(etcd, "10.5.50.0-24", "192.168.5.50")
    manager = managers()
    assert manager.previous_attrs(IP4("192.168.1.1")) is None  # the start's listing
    if write_between:
        foreign(etcd, "10.5.50.0-24", "192.168.5.50")
    own = manager.acquire_lease(attrs("192.168.1.1"))
    leases, lists, watch = first_snapshot(manager, watches)
    assert lists == ([1] if write_between else [])  # not listed a third time unless needed
    fresh = by_key(managers().leases())  # what a listing now says: the same, claim order too
    assert leases == fresh and set(leases) == {"10.5.50.0-24", own.key}
    assert [leases[k].claim_order for k in sorted(leases)] == [
        fresh[k].claim_order for k in sorted(fresh)]
    # the watch goes on from our write: what comes after it arrives, nothing twice
    foreign(etcd, "10.5.51.0-24", "192.168.5.51")
    assert watch.expect(LeaseAdded).lease.key == "10.5.51.0-24"
    watch.quiet()


def test_a_reused_lease_is_in_the_first_snapshot_with_its_new_value(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    foreign(etcd, "10.5.9.0-24", "192.168.1.1")  # ours, from before a restart
    manager = managers()
    previous = manager.previous_attrs(IP4("192.168.1.1"))
    assert previous is not None
    new_attrs = attrs("192.168.1.1", '{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}')
    own = manager.acquire_lease(new_attrs)
    assert own.key == "10.5.9.0-24"
    leases, lists, watch = first_snapshot(manager, watches)
    assert lists == []
    assert leases == by_key(managers().leases())
    assert leases[own.key].attrs == new_attrs
    watch.quiet()


def test_watch_misses_nothing_written_between_list_and_watch(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    messages: queue.Queue[LeaseMessage] = queue.Queue()

    def sink(message: LeaseMessage) -> None:
        if isinstance(message, Snapshot):  # runs after the list, before the watch starts
            foreign(etcd, "10.5.1.0-24", "192.168.5.1")
        messages.put(message)

    stop = threading.Event()
    thread = threading.Thread(target=managers().watch_leases, args=(sink, stop), daemon=True)
    thread.start()
    try:
        assert messages.get(timeout=10) == Snapshot(())
        added = messages.get(timeout=10)
        assert isinstance(added, LeaseAdded) and added.lease.key == "10.5.1.0-24"
    finally:
        stop.set()
        thread.join(5)


def wait_watching(etcd: Etcd, count: int = 1) -> None:
    """Until etcd serves ``count`` watches: a watcher is blocked inside its watch."""
    wait_until(lambda: etcd.watchers() >= count, 10.0, f"{count} watch(es) open in etcd")


def wait_reconnecting(caplog: pytest.LogCaptureFixture) -> None:
    """Until the watcher has noticed etcd is gone and waits to reconnect."""
    wait_until(lambda: "reconnecting in" in caplog.text, 20.0, "the watcher to notice the outage")


def test_watch_returns_promptly_when_stopped(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
) -> None:
    watch = watches(managers())
    assert watch.expect(Snapshot).leases == ()
    wait_watching(etcd)
    # Without a stop that cancels the watch it would block for good.
    assert watch.close() <= PROMPT_STOP


def test_watch_returns_promptly_when_stopped_during_an_outage(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = watches(managers(backoff_initial=60.0, backoff_max=60.0))
    watch.expect(Snapshot)
    etcd.stop()
    wait_reconnecting(caplog)
    assert watch.close() <= PROMPT_STOP  # not the 60 s backoff


def test_close_during_a_watch_is_clean(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = managers()
    watch = watches(manager)
    watch.expect(Snapshot)
    wait_watching(etcd)
    manager.close()  # the watch is cancelled first, then the channel closed
    # A window to see that nothing happens: the thread must still be there after it.
    # (A slow machine only makes the window longer, never the test flaky.)
    watch.thread.join(0.5)
    assert watch.thread.is_alive()  # returns only when stopped ...
    assert watch.close() <= PROMPT_STOP  # ... and then promptly
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_watch_survives_an_etcd_restart_without_losing_events(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = watches(managers())
    watch.expect(Snapshot)
    foreign(etcd, "10.5.1.0-24", "192.168.5.1")
    assert watch.expect(LeaseAdded).lease.key == "10.5.1.0-24"

    etcd.stop()
    wait_reconnecting(caplog)
    etcd.start()
    # Written while the watcher is still reconnecting.
    for i in range(2, 7):
        foreign(etcd, f"10.5.{i}.0-24", f"192.168.5.{i}")
    etcd.delete(SUBNETS + "10.5.1.0-24")

    seen = [watch.next() for _ in range(6)]
    assert seen == [
        *(LeaseAdded(Lease(NET4(f"10.5.{i}.0/24"), None, attrs(f"192.168.5.{i}")))
          for i in range(2, 7)),
        LeaseRemoved("10.5.1.0-24"),
    ]
    watch.quiet()  # resumed from its revision: no re-list, no duplicates


def test_watch_relists_after_compaction_while_disconnected(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign(etcd, "10.5.1.0-24", "192.168.5.1")
    foreign(etcd, "10.5.2.0-24", "192.168.5.2")
    # A long first backoff keeps the watcher away while we change and compact.
    watch = watches(managers(backoff_initial=8.0, backoff_max=8.0))
    assert set(by_key(watch.expect(Snapshot).leases)) == {"10.5.1.0-24", "10.5.2.0-24"}

    etcd.stop()
    wait_reconnecting(caplog)
    etcd.start()
    etcd.delete(SUBNETS + "10.5.1.0-24")
    foreign(etcd, "10.5.3.0-24", "192.168.5.3")
    etcd.put(PREFIX + "/unrelated", "x")  # the compaction point is past the watcher's
    etcd.compact(etcd.revision())

    snapshot = watch.expect(Snapshot, timeout=15)
    assert set(by_key(snapshot.leases)) == {"10.5.2.0-24", "10.5.3.0-24"}
    foreign(etcd, "10.5.4.0-24", "192.168.5.4")
    assert watch.expect(LeaseAdded).lease.key == "10.5.4.0-24"  # and it watches on


def test_bad_keys_and_values_are_skipped_and_logged_once(
    etcd: Etcd,
    managers: Callable[..., EtcdSubnetManager],
    watches: Callable[[EtcdSubnetManager], Watch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="subnet.etcd")
    bad = {
        "garbage": go_value("192.168.5.1"),
        "10.5.1.0-24": "not json",
        "10.5.2.0-24": '{"PublicIP":"fd00::1","PublicIPv6":null}',
        "10.5.3.0-24": '{"PublicIP":"192.168.5.3","PublicIPv6":null,"BackendType":5}',
        "10.5.4.0-24": "[1, 2]",
        "10.5.5.300-24": go_value("192.168.5.5"),
    }
    for key, value in bad.items():
        etcd.put(SUBNETS + key, value)
    foreign(etcd, "10.5.9.0-24", "192.168.5.9")
    etcd.put(PREFIX + "/config", CONFIG)
    manager = managers()
    watch = watches(manager)

    assert set(by_key(watch.expect(Snapshot).leases)) == {"10.5.9.0-24"}
    etcd.put(SUBNETS + "10.5.6.0-24", "{broken")
    assert watch.expect(LeaseRemoved).key == "10.5.6.0-24"  # no usable lease there
    foreign(etcd, "10.5.10.0-24", "192.168.5.10")
    assert watch.expect(LeaseAdded).lease.key == "10.5.10.0-24"
    own = manager.acquire_lease(attrs("192.168.1.1"))  # lists the bad keys again
    assert watch.expect(LeaseAdded).lease.key == own.key
    watch.quiet()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in [*bad, "10.5.6.0-24"]:
        hits = [w for w in warnings if key in w]
        assert len(hits) == 1, (key, warnings)
    assert any("not JSON" in w for w in warnings)
    assert any("PublicIP is not a valid address" in w for w in warnings)


def test_bad_values_still_block_their_subnet(
    etcd: Etcd, managers: Callable[..., EtcdSubnetManager]
) -> None:
    etcd.put(PREFIX + "/config", '{"Network": "10.6.0.0/28"}')
    etcd.put(SUBNETS + "10.6.0.4-30", "not json")
    etcd.put(SUBNETS + "10.6.0.8-30", "not json either")
    lease = managers().acquire_lease(attrs("192.168.1.1"))
    assert lease.key == "10.6.0.12-30"


# --- client set-up --------------------------------------------------------------------


def test_fails_over_to_a_live_endpoint_within_one_call(etcd: Etcd) -> None:
    etcd.put(PREFIX + "/config", CONFIG)
    dead = "http://127.0.0.1:1"
    # The client starts at a random endpoint: with eight managers, some start at the dead one.
    for _ in range(8):
        manager = EtcdSubnetManager(EtcdSettings(endpoints=(dead, etcd.url)))
        try:
            assert manager.get_network_config().network == NET4("10.5.0.0/16")
            assert manager.get_network_config().network == NET4("10.5.0.0/16")
        finally:
            manager.close()


def test_unreachable_etcd_is_a_store_error() -> None:
    manager = EtcdSubnetManager(EtcdSettings(endpoints=("http://127.0.0.1:1",)), rpc_timeout=2)
    try:
        with pytest.raises(StoreError) as info:
            manager.get_network_config()
        assert info.value.__cause__ is not None
    finally:
        manager.close()


def test_password_never_appears_in_the_settings_repr() -> None:
    settings = EtcdSettings(username="flannel", password="s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(settings)
    assert "flannel" in repr(settings)


@pytest.mark.parametrize(
    ("kwargs", "secure"),
    [
        ({"endpoints": ("http://10.0.0.1:2379",)}, [False]),
        ({"endpoints": ("https://10.0.0.1",)}, [True]),
        ({"endpoints": ("https://10.0.0.1", "http://h:1")}, [True, False]),
        ({"endpoints": ("https://10.0.0.1",), "cafile": "/ca.pem"}, [True]),
        ({"endpoints": ("https://10.0.0.1",), "certfile": "/c", "keyfile": "/k"}, [True]),
    ],
)
def test_the_url_scheme_decides_tls_like_etcds_go_client(
    kwargs: dict[str, Any], secure: list[bool], caplog: pytest.LogCaptureFixture
) -> None:
    plans = plan_endpoints(EtcdSettings(**kwargs))
    assert [p.secure for p in plans] == secure
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cafile": "/ca.pem"},  # upstream's CA-only quirk: silently plain
        {"certfile": "/c", "keyfile": "/k"},
        {"endpoints": ("https://a:1", "http://b:2"), "cafile": "/ca.pem"},
    ],
)
def test_tls_files_ignored_by_http_endpoints_are_warned_about(
    kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    kwargs.setdefault("endpoints", ("http://127.0.0.1:2379",))
    plans = plan_endpoints(EtcdSettings(**kwargs))
    plain = [url for url, plan in zip(kwargs["endpoints"], plans, strict=True) if not plan.secure]
    assert plain
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "PLAIN HTTP" in warnings[0] and all(url in warnings[0] for url in plain)


def test_endpoint_urls_are_parsed() -> None:
    plans = plan_endpoints(EtcdSettings(endpoints=("https://[fd00::1]:4001", "http://etcd")))
    assert [(p.host, p.port) for p in plans] == [("fd00::1", 4001), ("etcd", 2379)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"certfile": "/c"}, "together"),
        ({"keyfile": "/k"}, "together"),
        ({"endpoints": ("127.0.0.1:2379",)}, "bad etcd endpoint"),
        ({"endpoints": ("http://h:99999",)}, "bad etcd endpoint"),
        ({"endpoints": ()}, "no etcd endpoints"),
    ],
)
def test_unusable_tls_or_endpoint_settings_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_endpoints(EtcdSettings(**kwargs))


# --- authentication ------------------------------------------------------------------------

PASSWORD = "pw-Secret-4711"


def test_auth_logs_in_again_after_token_expiry_and_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, watches: Callable[[EtcdSubnetManager], Watch]
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_etcd(tmp_path, "--auth-token-ttl=1") as etcd:
        etcd.enable_auth("flannel", PASSWORD)
        etcd.put(PREFIX + "/config", CONFIG)
        settings = EtcdSettings(endpoints=(etcd.url,), username="flannel", password=PASSWORD)
        manager = EtcdSubnetManager(settings, backoff_initial=0.05, backoff_max=0.2)
        try:
            watch = watches(manager)
            assert watch.expect(Snapshot).leases == ()
            lease = manager.acquire_lease(attrs("192.168.1.1"))
            assert watch.expect(LeaseAdded).lease.key == lease.key

            time.sleep(2.5)  # the scenario: idle past the 1 s token TTL (etcd's own clock)
            renewed = manager.renew_lease(lease)
            assert renewed.expiration is not None
            assert watch.expect(LeaseAdded).lease.key == lease.key

            etcd.stop()
            etcd.start()  # tokens do not survive a restart
            foreign(etcd, "10.5.200.0-24", "192.168.5.5")
            assert watch.expect(LeaseAdded).lease.key == "10.5.200.0-24"
            watch.close()
        finally:
            manager.close()

        wrong = EtcdSubnetManager(EtcdSettings(endpoints=(etcd.url,), username="flannel",
                                               password="nope"))
        try:
            with pytest.raises(StoreError):
                wrong.get_network_config()
        finally:
            wrong.close()

    assert any("refused our auth token" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
        assert PASSWORD not in str(record.args)


# --- TLS -------------------------------------------------------------------------------------


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    with running_etcd(tmp_path, tls=tls) as etcd:
        assert etcd.url.startswith("https://")
        etcd.put(PREFIX + "/config", CONFIG)
        good = EtcdSettings(
            endpoints=(etcd.url,), cafile=tls.ca, certfile=tls.client_cert, keyfile=tls.client_key
        )
        manager = EtcdSubnetManager(good)
        try:
            lease = manager.acquire_lease(attrs("192.168.1.1"))
        finally:
            manager.close()
        assert etcd.value(SUBNETS + lease.key) == go_value("192.168.1.1")

        for bad in (
            EtcdSettings(endpoints=(etcd.url,), cafile=tls.ca),  # no client certificate
            EtcdSettings(  # server not verifiable against the system roots
                endpoints=(etcd.url,), certfile=tls.client_cert, keyfile=tls.client_key
            ),
            EtcdSettings(endpoints=(etcd.url.replace("https", "http"),)),
        ):
            refused = EtcdSubnetManager(bad, rpc_timeout=2)
            try:
                with pytest.raises(StoreError):
                    refused.get_network_config()
            finally:
                refused.close()


def test_unreadable_tls_file_is_a_config_error(tmp_path: Path) -> None:
    settings = EtcdSettings(endpoints=("https://127.0.0.1:1",), cafile=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigError, match="cannot read etcd CA file"):
        EtcdSubnetManager(settings)
