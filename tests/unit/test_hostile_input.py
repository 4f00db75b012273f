"""Hostile or careless input (issue 9): one clear error, never a traceback or a dead thread."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from cni.cache import ScratchCache
from cni.errors import DECODING_FAILURE, IO_FAILURE, CniError
from cni.plugin import _cached_type, run
from cni.protocol import is_error_json
from cni.subnetenv import MAX_SUBNET_FILE, load_subnet_env
from flanneld.ctl import EXIT_FAILED
from flanneld.ctl import main as ctl_main
from flanneld.daemon import StoreStatus
from flanneld.health import HealthState, default_routes
from flanneld.loop import Periodic, Watcher
from flanneld.metrics import Metrics
from flanneld.netconf_check import NetConfWatcher, check
from subnet.allocator import choose_subnet
from subnet.errors import ConfigError, StoreError
from subnet.manager import Sink, StoreReport
from subnet.netconf import parse_net_config, subnet_ranges

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"Network": "10.244.0.0/16", "Backend": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001
GOOD = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "ctr1",
    "CNI_NETNS": "/var/run/netns/pod",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/nonexistent",
}
SUBNET_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)


def cni(stdin: bytes) -> tuple[int, dict[str, object], str]:
    stdout, stderr = io.BytesIO(), io.StringIO()
    code = run(ENV, io.BytesIO(stdin), stdout, stderr)
    return code, json.loads(stdout.getvalue()), stderr.getvalue()


# --- item 3: deeply nested JSON and numbers Go cannot hold ------------------------------


@pytest.mark.parametrize("payload", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_cni_deep_nesting_is_code_6_without_traceback(payload: bytes) -> None:
    code, body, stderr = cni(payload)
    assert code == 1
    assert body["code"] == DECODING_FAILURE
    assert "nested too deeply" in str(body["msg"])
    assert "Traceback" not in stderr


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400])
def test_cni_number_out_of_float64_range_is_code_6(tmp_path: Path, number: str) -> None:
    env_file = tmp_path / "subnet.env"
    env_file.write_text(SUBNET_ENV)
    conf = (
        '{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"'
        + str(env_file) + '","dataDir":"' + str(tmp_path / "data")
        + '","delegate":{"mtu":' + number + "}}"
    )
    code, body, stderr = cni(conf.encode())
    assert code == 1
    assert body["code"] == DECODING_FAILURE, body
    assert number in str(body["msg"])
    assert "Traceback" not in stderr


def test_cni_readers_of_foreign_json_survive_deep_nesting() -> None:
    assert is_error_json(DEEP) is False
    assert _cached_type(DEEP) is None


@pytest.mark.parametrize("payload", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_net_conf_deep_nesting_is_a_config_error(payload: bytes) -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_net_config(payload)


def test_netconf_validate_deep_nesting_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "net-conf.json"
    path.write_bytes(DEEP)
    assert ctl_main(["netconf", "validate", str(path)]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "nested too deeply" in err


def test_kube_net_conf_watch_reports_a_deep_edit_and_keeps_watching(tmp_path: Path) -> None:
    path = tmp_path / "net-conf.json"
    path.write_text(GOOD)
    health = HealthState()
    watcher = NetConfWatcher(str(path), parse_net_config(GOOD), "kube", health)
    path.write_bytes(DEEP)
    watcher.poll()
    assert any("nested too deeply" in line for line in health.details())
    path.write_text(GOOD)
    watcher.poll()
    assert health.details() == ()


def test_periodic_runner_survives_any_exception(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    done = threading.Event()

    def action() -> None:
        calls.append(1)
        if len(calls) >= 3:
            done.set()
        raise RuntimeError("boom")

    stop = threading.Event()
    runner = Periodic("test-periodic", 0.01, action, stop)
    with caplog.at_level(logging.ERROR):
        runner.start()
        assert done.wait(30), "the periodic runner died after the first exception"
        stop.set()
        runner.join(10)
    assert not runner.is_alive()
    assert any("boom" in record.getMessage() for record in caplog.records)


# --- item 5: subnetFile is read only if it is a small regular file ----------------------


def test_subnet_file_dev_zero_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(CniError) as caught:
        load_subnet_env("/dev/zero")
    assert caught.value.code == IO_FAILURE
    assert "not a regular file" in caught.value.msg
    assert time.monotonic() - started < 30


def test_subnet_file_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "subnet.env"
    os.mkfifo(fifo)
    with pytest.raises(CniError, match="not a regular file"):
        load_subnet_env(str(fifo))


def test_subnet_file_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CniError, match="not a regular file"):
        load_subnet_env(str(tmp_path))


def test_subnet_file_too_large_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "subnet.env"
    big.write_text(SUBNET_ENV + "#" * MAX_SUBNET_FILE)
    with pytest.raises(CniError) as caught:
        load_subnet_env(str(big))
    assert caught.value.code == IO_FAILURE
    assert f"larger than {MAX_SUBNET_FILE} bytes" in caught.value.msg


def test_subnet_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    text = SUBNET_ENV + "#" * (MAX_SUBNET_FILE - len(SUBNET_ENV) - 1) + "\n"
    path.write_text(text)
    assert path.stat().st_size == MAX_SUBNET_FILE
    assert load_subnet_env(str(path)).mtu == 1450


# --- item 6: the validator and the daemon share one verdict -----------------------------


def test_subnet_min_above_subnet_max_is_refused() -> None:
    text = '{"Network": "10.244.0.0/16", "SubnetMin": "10.244.200.0", "SubnetMax": "10.244.10.0"}'
    with pytest.raises(ConfigError, match="SubnetMin 10.244.200.0 is above SubnetMax"):
        subnet_ranges(parse_net_config(text))
    with pytest.raises(ConfigError, match="above SubnetMax"):
        check(text, "etcd")


@pytest.mark.parametrize("backend", ["udp"])
@pytest.mark.parametrize("mode", ["kube", "etcd"])
def test_ipv6_with_an_ipv4_only_backend_is_refused_by_the_validator(
    backend: str, mode: str
) -> None:
    text = json.dumps({
        "Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
        "Backend": {"Type": backend},
    })
    with pytest.raises(ConfigError, match="IPv6"):
        check(text, mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["kube", "etcd"])
def test_dual_stack_vxlan_passes_the_validator(mode: str) -> None:
    text = json.dumps({
        "Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
        "Backend": {"Type": "vxlan"},
    })
    check(text, mode)  # type: ignore[arg-type]


# --- item 4: a lease that no node accepts as a peer blocks nothing ---------------------


def test_a_whole_network_lease_is_not_counted_as_taken() -> None:
    rng = subnet_ranges(parse_net_config('{"Network": "10.244.0.0/28"}'))[0]
    assert rng is not None
    whole = ipaddress.ip_network("10.244.0.0/28")
    wider = ipaddress.ip_network("10.0.0.0/8")
    taken = [whole, wider, ipaddress.ip_network("10.244.0.4/30")]
    chosen = choose_subnet(rng, taken)
    assert str(chosen) in {"10.244.0.8/30", "10.244.0.12/30"}


def test_a_fifo_in_the_cache_does_not_hang_del(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ctr1")
    with pytest.raises(CniError) as caught:
        ScratchCache(str(tmp_path)).load("ctr1")
    assert caught.value.code == IO_FAILURE
    assert "not a regular file" in caught.value.details


# --- item 1: a store that keeps failing shows on /readyz and in /metrics ----------------


def test_a_failing_lease_watch_shows_on_readyz_and_in_metrics() -> None:
    now = [100.0]
    health, metrics = HealthState(), Metrics()
    health.mark_ready()
    readyz = default_routes(health)["/readyz"]
    status = StoreStatus(health, metrics, clock=lambda: now[0])
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    class FailingStore:
        def watch_leases(self, sink: Sink, stop: threading.Event, report: StoreReport) -> None:
            for _ in range(4):  # 4 s apart: 0, 4, 8, 12 s into the outage (grace 10 s)
                now[0] += 4.0
                report(StoreError("RESOURCE_EXHAUSTED: received message larger than max"))
                answer = readyz()
                seen.append((answer.status, answer.body))
            report(None)
            answer = readyz()
            seen.append((answer.status, answer.body))
            done.set()
            stop.wait()

    stop = threading.Event()
    watcher = Watcher(FailingStore(), lambda m: None, stop, report=status)  # type: ignore[arg-type]
    watcher.start()
    try:
        assert done.wait(30)
    finally:
        stop.set()
        watcher.join(10)
    assert [code for code, _ in seen] == [200, 200, 200, 503, 200]
    assert "subnet store failing for 12s: RESOURCE_EXHAUSTED" in seen[3][1]
    assert seen[4][1] == "flanneld is ready"
    assert b"flannel_store_errors_total 4.0" in metrics.exposition()
