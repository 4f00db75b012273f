"""net-conf.json checking, description, and the daemon's edit watcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from flanneld.health import HealthState
from flanneld.netconf_check import NetConfWatcher, check, describe
from subnet.errors import ConfigError
from subnet.netconf import parse_net_config

GOOD = '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'


def test_check_etcd_mode_derives_ranges_and_backend_defaults() -> None:
    report = check(GOOD, "etcd")
    assert report.ranges is not None and report.ranges[0] is not None
    assert report.ranges[0].subnet_len == 24
    assert str(report.ranges[0].subnet_min) == "10.244.1.0"
    assert report.backend_options["vni"] == 1
    text = describe(report)
    assert "node subnets: /24 from 10.244.1.0 to 10.244.255.0" in text
    assert "Backend:      vxlan (vni=1" in text


def test_check_kube_mode_skips_ranges() -> None:
    report = check('{"Network": "10.244.0.0/30", "Backend": {"Type": "host-gw"}}', "kube")
    assert report.ranges is None
    assert report.backend_options == {}


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ('{"Network": "10.244.0.0/29"}', "etcd", "network is too small"),
        ('{"Backend": {"Type": "vxlan"}}', "kube", "Network is required"),
        ('{"Network": "10.0.0.0/8", "Backend": {"Type": "bogus"}}', "kube",
         "unknown backend type: bogus"),
        ('{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan", "VNI": "x"}}', "kube", "VNI"),
        ('{"Network": "10.0.0.0/8", "EnableIPv4": false}', "kube", "none defined stack"),
        ('{"Network": ', "kube", "not valid JSON"),
    ],
)
def test_check_rejects_with_a_clear_message(text: str, mode: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(text, mode)  # type: ignore[arg-type]


def make_watcher(tmp_path: Path) -> tuple[Path, NetConfWatcher, HealthState]:
    path = tmp_path / "net-conf.json"
    path.write_text(GOOD)
    health = HealthState()
    return path, NetConfWatcher(str(path), parse_net_config(GOOD), "kube", health), health


def test_unchanged_file_reports_nothing(tmp_path: Path) -> None:
    _path, watcher, health = make_watcher(tmp_path)
    watcher.poll()
    assert health.details() == ()


def test_invalid_edit_is_reported_and_kept_out(tmp_path: Path) -> None:
    path, watcher, health = make_watcher(tmp_path)
    path.write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "nope"}}')
    watcher.poll()
    (detail,) = health.details()
    assert "edit rejected: unknown backend type: nope" in detail
    assert "running config is kept" in detail


def test_valid_edit_asks_for_a_restart_and_revert_clears_it(tmp_path: Path) -> None:
    path, watcher, health = make_watcher(tmp_path)
    path.write_text('{"Network": "10.245.0.0/16", "Backend": {"Type": "vxlan"}}')
    watcher.poll()
    (detail,) = health.details()
    assert "restart flanneld" in detail
    path.write_text(GOOD.replace(" ", ""))
    watcher.poll()
    assert health.details() == ()


def test_deleted_file_is_reported(tmp_path: Path) -> None:
    path, watcher, health = make_watcher(tmp_path)
    path.unlink()
    watcher.poll()
    (detail,) = health.details()
    assert "is gone" in detail
