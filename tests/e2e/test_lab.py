"""The multi-node lab end to end: real etcd, real flanneld per node, pods
attached by our CNI plugin, pings across the vxlan overlay.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from flanneld.lab import procs
from flanneld.lab import state as statefile
from flanneld.lab.lab import DownReport, Lab, down, up
from flanneld.lab.layout import DEFAULT_NETWORK, is_lab_netns, state_dir
from flanneld.lab.state import LabState, ProcessRecord
from flanneld.lab.topology import (
    create_netns,
    delete_netns,
    ipv4_addresses,
    link_address,
    list_netns,
)
from tests.conftest import RUN_PREFIX, needs_root
from tests.waiting import wait_pinging

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PREFIX = RUN_PREFIX + "l"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    needs_root()
    try:
        yield up(nodes=3, backend="vxlan", pods_per_node=1, prefix=PREFIX)
    finally:
        down(PREFIX)
    assert not [n for n in list_netns() if is_lab_netns(PREFIX, n)]


def _assert_full_matrix(lab: Lab) -> None:
    cells = lab.matrix(count=3, timeout=10.0)
    assert len(cells) == 6  # 3 pods, every ordered pair
    failed = [c for c in cells if not c.ok]
    assert not failed, failed
    assert all(c.rtt_ms is not None and c.rtt_ms > 0 for c in cells)


def test_nodes_lease_distinct_subnets_and_every_pod_reaches_every_pod(lab: Lab) -> None:
    leases = lab.leases()
    subnets = [lease.subnet for lease in leases]
    assert len(set(subnets)) == 3
    assert all(s.subnet_of(DEFAULT_NETWORK) and s.prefixlen == 24 for s in subnets)
    assert [str(lease.public_ip) for lease in leases] == [
        "198.18.0.11",
        "198.18.0.12",
        "198.18.0.13",
    ]
    assert all(lease.backend_type == "vxlan" and lease.vtep_mac for lease in leases)
    for node, lease in zip(lab.plan.nodes, leases, strict=True):
        (pod,) = node.pods
        (addr,) = ipv4_addresses(pod.netns, "eth0")
        assert addr.ip in lease.subnet, (pod.name, addr, lease.subnet)
        assert link_address(node.netns, "flannel.1") == lease.vtep_mac
    _assert_full_matrix(lab)


def test_flanneld_kill_and_restart_keeps_subnet_and_other_traffic(lab: Lab) -> None:
    before = lab.node_lease("n1")
    old_pid = lab.flanneld_pid("n1")
    assert old_pid is not None
    count = 400
    with ThreadPoolExecutor(max_workers=1) as pool:
        # 100 packets a second between n2 and n3 for ~4 s, across the restart.
        pinging = pool.submit(lab.ping, "n2p1", "n3p1", count, 0.01, 30.0)
        wait_pinging(lab, "n2p1")
        lab.kill_flanneld("n1", signal.SIGKILL)
        assert lab.flanneld_pid("n1") is None
        time.sleep(0.5)  # the scenario: n1's flanneld stays down for a while under traffic
        new_pid = lab.start_flanneld("n1")
        stats = pinging.result(timeout=40)
    assert new_pid != old_pid
    assert stats.sent == count
    assert stats.lost == 0, stats
    after = lab.node_lease("n1")
    assert after.subnet == before.subnet
    assert after.vtep_mac == before.vtep_mac
    assert after.public_ip == ipaddress.IPv4Address("198.18.0.11")
    _assert_full_matrix(lab)


def test_down_removes_exactly_its_own_lab(lab: Lab) -> None:
    # A second, small lab next to the module's: its down must leave the big one alone.
    prefix = RUN_PREFIX + "d"
    try:
        small = up(nodes=1, pods_per_node=1, prefix=prefix)
        records = list(small.processes.values())
        assert len(records) == 2 and all(procs.is_ours(r) for r in records)
        report = down(prefix)
        assert set(report.stopped) == {"etcd", "flanneld-n1"}
        assert set(report.namespaces) == {f"{prefix}-ul", f"{prefix}-n1", f"{prefix}-n1p1"}
        assert report.state_removed
        assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
        assert not any(procs.is_ours(r) for r in records)
        assert not os.path.exists(state_dir(prefix))
        again = down(prefix)
        assert again == DownReport((), (), False)
    finally:
        down(prefix)
    assert all(lab.flanneld_pid(node.name) is not None for node in lab.plan.nodes)
    assert set(lab.plan.namespaces()) <= set(list_netns())


def test_down_after_a_crash_finds_namespaces_by_name_and_spares_foreign_pids() -> None:
    needs_root()
    prefix = RUN_PREFIX + "k"
    ours = [f"{prefix}-ul", f"{prefix}-n1", f"{prefix}-n1p1", f"{prefix}-n12"]
    foreign = f"{prefix}x-n1"  # another lab's name that merely starts alike
    try:
        for name in [*ours, foreign]:
            create_netns(name)
        # A state file that lists none of them and a PID that is not a lab process.
        stale = LabState(prefix, 1, 1, "vxlan").with_process(
            "flanneld-n1", ProcessRecord(os.getpid(), state_dir(prefix) + "/")
        )
        statefile.save(state_dir(prefix), stale)
        report = down(prefix)
        assert report.stopped == ()
        assert set(report.namespaces) == set(ours)
        assert report.state_removed and not os.path.exists(state_dir(prefix))
        assert foreign in list_netns()
    finally:
        for name in [*ours, foreign]:
            delete_netns(name)


# Upstream's udp backend advertises no BackendType at all.
@pytest.mark.parametrize(("backend", "advertised"), [("host-gw", "host-gw"), ("udp", "")])
def test_other_backends_connect_every_pod(backend: str, advertised: str) -> None:
    needs_root()
    prefix = RUN_PREFIX + backend[0]
    try:
        other = up(nodes=2, backend=backend, pods_per_node=1, prefix=prefix)
        leases = other.leases()
        assert len({lease.subnet for lease in leases}) == 2
        assert all(lease.backend_type == advertised for lease in leases)
        cells = other.matrix(count=3, timeout=10.0)
        assert len(cells) == 2 and all(c.ok for c in cells), cells
    finally:
        down(prefix)
