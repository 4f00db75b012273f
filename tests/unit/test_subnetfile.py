"""subnet.env: exact bytes, atomic 0644 writes, and reading the previous subnets back."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from flanneld.subnetfile import (
    read_previous_run,
    render_subnet_env,
    write_subnet_env,
)
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import NetConfig

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network

V4_CONFIG = NetConfig(network=N4("10.244.0.0/16"))
DUAL_CONFIG = NetConfig(network=N4("10.244.0.0/16"), enable_ipv6=True,
                        ipv6_network=N6("2001:cafe:42::/56"))
V6_CONFIG = NetConfig(enable_ipv4=False, enable_ipv6=True, ipv6_network=N6("2001:cafe:42::/56"))


def lease(v4: str | None, v6: str | None = None) -> Lease:
    return Lease(N4(v4) if v4 else None, N6(v6) if v6 else None, LeaseAttrs())


# --- rendering ------------------------------------------------------------------------


def test_ipv4_exact_bytes() -> None:
    text = render_subnet_env(V4_CONFIG, lease("10.244.1.0/24"), 1450, True)
    assert text == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )


def test_dual_stack_exact_bytes() -> None:
    text = render_subnet_env(DUAL_CONFIG, lease("10.244.3.0/24", "2001:cafe:42:3::/64"), 1450,
                             False)
    assert text == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.3.1/24\n"
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
        "FLANNEL_IPV6_SUBNET=2001:cafe:42:3::1/64\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_ipv6_only_exact_bytes() -> None:
    text = render_subnet_env(V6_CONFIG, lease(None, "2001:cafe:42:ff::/64"), 1500, False)
    assert text == (
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
        "FLANNEL_IPV6_SUBNET=2001:cafe:42:ff::1/64\n"
        "FLANNEL_MTU=1500\n"
        "FLANNEL_IPMASQ=false\n"
    )


def test_disabled_family_is_not_written_even_if_leased() -> None:
    # etcd mode always leases IPv4; with EnableIPv4=false it must not appear
    text = render_subnet_env(V6_CONFIG, lease("10.5.1.0/24", "2001:cafe:42:1::/64"), 1450, False)
    assert "FLANNEL_NETWORK" not in text and "FLANNEL_SUBNET" not in text


def test_enabled_ipv6_without_v6_lease_writes_no_v6_lines() -> None:
    text = render_subnet_env(DUAL_CONFIG, lease("10.244.3.0/24"), 1450, False)
    assert "IPV6" not in text
    assert text.startswith("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n")


def test_first_host_on_a_non_octet_prefix() -> None:
    text = render_subnet_env(NetConfig(network=N4("10.0.0.0/8")), lease("10.1.2.64/26"), 1400,
                             False)
    assert "FLANNEL_SUBNET=10.1.2.65/26\n" in text


# --- writing --------------------------------------------------------------------------


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_write_creates_dirs_0755_and_file_0644_under_umask_077(tmp_path: Path,
                                                               umask_077: None) -> None:
    target = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(target, "FLANNEL_MTU=1450\n")
    assert target.read_bytes() == b"FLANNEL_MTU=1450\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / "flannel").stat().st_mode) == 0o755


def test_write_leaves_existing_dir_mode_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    write_subnet_env(tmp_path / "subnet.env", "x=1\n")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "subnet.env"
    target.write_text("old\n")
    target.chmod(0o600)
    inode_before = target.stat().st_ino
    write_subnet_env(target, "new\n")
    assert target.read_text() == "new\n"
    assert target.stat().st_ino != inode_before  # a rename, not an in-place rewrite
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.env"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "subnet.env"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_subnet_env(target, "FLANNEL_MTU=\u00e9\n")  # not ASCII: fails mid-write
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.env"]


def test_write_into_a_file_path_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        write_subnet_env(blocker / "subnet.env", "x\n")


def test_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "subnet.env"
    text = render_subnet_env(DUAL_CONFIG, lease("10.244.3.0/24", "2001:cafe:42:3::/64"), 1450,
                             True)
    write_subnet_env(target, text)
    assert read_previous_run(target).subnets == (N4("10.244.3.0/24"), N6("2001:cafe:42:3::/64"))
    assert read_previous_run(target).networks == (N4("10.244.0.0/16"), N6("2001:cafe:42::/56"))


# --- reading ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subnet.env"
    path.write_text(text)
    return path


def test_read_masks_host_bits(tmp_path: Path) -> None:
    path = write(tmp_path, "FLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_IPV6_SUBNET=fd00:1:2::1/64\n")
    assert read_previous_run(path).subnets == (N4("10.5.34.0/24"), N6("fd00:1:2::/64"))


def test_read_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert read_previous_run(tmp_path / "absent.env").subnets == (None, None)
    assert "absent.env" in caplog.text


def test_read_missing_keys(tmp_path: Path) -> None:
    assert read_previous_run(write(tmp_path, "FLANNEL_MTU=1450\n")).subnets == (None, None)


def test_read_multiple_entries_is_none(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "FLANNEL_SUBNET=10.5.1.1/24,10.6.1.1/24\n"
                           "FLANNEL_IPV6_SUBNET=fd00::1/64\n")
    assert read_previous_run(path).subnets == (None, N6("fd00::/64"))
    assert "more than one entry" in caplog.text


@pytest.mark.parametrize(
    "value",
    ["garbage", "10.5.1.1", "10.5.1.1/33", "", "fd00::1/64", "10.5.1.1/24 extra", "300.1.1.1/24",
     "10.5.1.0/255.255.255.0"],
)
def test_read_garbage_is_none(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"FLANNEL_SUBNET={value}\nFLANNEL_IPV6_SUBNET=10.1.1.1/24\n")
    assert read_previous_run(path).subnets == (None, None)


def test_read_tolerates_dotenv_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "# written by hand\n\nexport FLANNEL_SUBNET=\"10.9.8.1/24\"\n"
                           "FLANNEL_IPV6_SUBNET = 'fd00:9::1/64'\nnot a pair\n")
    assert read_previous_run(path).subnets == (N4("10.9.8.0/24"), N6("fd00:9::/64"))


def test_read_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_bytes(b"\xff\xfe\x00FLANNEL_SUBNET=\x80\n")
    assert read_previous_run(path).subnets == (None, None)


def test_read_directory_instead_of_file(tmp_path: Path) -> None:
    assert read_previous_run(tmp_path).subnets == (None, None)
