"""The wireguard drivers' pure parts: UAPI text, kernel requests, the key file, driver choice."""

from __future__ import annotations

import errno
import ipaddress
import stat
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from backends import wgsandbox
from backends.netlink import kernel_device_state, kernel_requests
from backends.wireguard import choose_driver, key_file_path, load_or_create_key
from backends.wireguard_state import (
    DeviceState,
    PeerPlan,
    PeerState,
    WgPeer,
    WireguardOptions,
    key_b64,
    public_key,
)
from backends.wireguard_uapi import UapiError, check_errno, decode_get, encode_set
from subnet.errors import ConfigError, DataplaneError

PRIVATE = bytes(range(32))
PSK = bytes([7]) * 32


def key(n: int) -> bytes:
    return bytes([n]) * 32


def peer(n: int, psk: bytes | None = PSK) -> WgPeer:
    return WgPeer(
        f"10.244.{n}.0-24", key(n), (ipaddress.ip_address(f"198.18.0.{n}"), 51820),
        frozenset({ipaddress.ip_network(f"10.244.{n}.0/24")}), psk=psk, keepalive=25,
    )


# --- UAPI ------------------------------------------------------------------------------------


def test_encode_set_exact_text() -> None:
    plan = PeerPlan(configure_device=True, remove=(key(3),), put=(peer(2),))
    assert encode_set(plan, PRIVATE, 51820).decode() == (
        "set=1\n"
        f"private_key={PRIVATE.hex()}\n"
        "listen_port=51820\n"
        f"public_key={key(3).hex()}\n"
        "remove=true\n"
        f"public_key={key(2).hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "endpoint=198.18.0.2:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.244.2.0/24\n"
        "\n"
    )


def test_encode_set_clears_psk_and_leaves_device_keys_alone() -> None:
    text = encode_set(PeerPlan(put=(peer(2, psk=None),)), PRIVATE, 51820).decode()
    assert f"preshared_key={'00' * 32}\n" in text
    assert "private_key" not in text and "listen_port" not in text


# What wireguard-go 0.0.20220316 answers to get=1 (keys replaced).
GET_ANSWER = (
    f"private_key={PRIVATE.hex()}\n"
    "listen_port=51820\n"
    f"public_key={key(2).hex()}\n"
    f"preshared_key={PSK.hex()}\n"
    "protocol_version=1\n"
    "endpoint=198.18.0.2:51820\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.244.2.0/24\n"
    f"public_key={key(3).hex()}\n"
    f"preshared_key={'00' * 32}\n"
    "protocol_version=1\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n"
    "\n"
)


def test_decode_get() -> None:
    state = decode_get(GET_ANSWER)
    assert state.private_key == PRIVATE and state.listen_port == 51820
    assert state.peers[key(2)] == peer(2).state()
    assert state.peers[key(3)] == PeerState(None, frozenset(), None, 0)


def test_decode_get_of_a_fresh_device() -> None:
    assert decode_get("listen_port=42396\nerrno=0\n\n") == DeviceState(None, 42396, {})


def test_errors_come_back_as_negative_errno() -> None:
    with pytest.raises(UapiError) as err:
        decode_get("errno=-22\n\n")
    assert err.value.errno == errno.EINVAL
    check_errno("0")
    with pytest.raises(UapiError):
        decode_get("garbage\n\n")


def test_encode_then_decode_is_the_plan() -> None:
    """What set writes, get reads back as the same peer state (the key hex round trip)."""
    text = encode_set(PeerPlan(True, (), (peer(2),)), PRIVATE, 51820).decode()
    answer = text.replace("set=1\n", "").replace("replace_allowed_ips=true\n", "")
    state = decode_get(answer + "errno=0\n\n")
    assert state.peers == {key(2): peer(2).state()}


# --- kernel requests ---------------------------------------------------------------------------


def test_kernel_requests() -> None:
    plan = PeerPlan(configure_device=True, remove=(key(3),), put=(peer(2),))
    assert kernel_requests(plan, PRIVATE, 51820) == [
        {"private_key": key_b64(PRIVATE), "listen_port": 51820},
        {"peer": {"public_key": key_b64(key(3)), "remove": True}},
        {"peer": {
            "public_key": key_b64(key(2)),
            "preshared_key": key_b64(PSK),
            "endpoint_addr": "198.18.0.2",
            "endpoint_port": 51820,
            "persistent_keepalive": 25,
            "replace_allowed_ips": True,
            "allowed_ips": ["10.244.2.0/24"],
        }},
    ]


def _through_pyroute2(requests: list[dict[str, Any]]) -> list[Any]:
    """Encode each request as pyroute2 would send it, and decode the bytes again."""
    builder = object.__new__(AsyncWireGuard)  # only its message-building helpers are used
    out = []
    for request in requests:
        msg = wgmsg()
        msg["cmd"] = 1
        msg["version"] = 1
        msg["attrs"].append(["WGDEVICE_A_IFNAME", "flannel-wg"])
        if "private_key" in request:
            msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", request["private_key"]])
            msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", request["listen_port"]])
        if "peer" in request:
            builder._wg_set_peer(msg, request["peer"])
        msg.encode()
        decoded = wgmsg(msg.data)
        decoded.decode()
        out.append(decoded)
    return out


def test_kernel_requests_survive_pyroute2_encoding() -> None:
    """The request dicts are what pyroute2 encodes, and the decoder reads its messages back."""
    msgs = _through_pyroute2(kernel_requests(PeerPlan(True, (), (peer(2), peer(4, None))),
                                             PRIVATE, 51820))
    state = kernel_device_state(msgs)
    assert state.private_key == PRIVATE and state.listen_port == 51820
    assert state.peers == {key(2): peer(2).state(), key(4): peer(4, None).state()}


def peer6(n: int, both: bool = False) -> WgPeer:
    """An IPv6 peer (flannel-wg-v6), or with ``both`` a one-device peer carrying both subnets."""
    allowed = {ipaddress.ip_network(f"fd00:10:244:{n}::/64")}
    if both:
        allowed.add(ipaddress.ip_network(f"10.244.{n}.0/24"))
    return WgPeer(f"10.244.{n}.0-24&fd00:10:244:{n}::-64", key(n),
                  (ipaddress.ip_address(f"fd00:198:18::{n}"), 51821), frozenset(allowed),
                  psk=PSK, keepalive=25)


def test_ipv6_peer_in_uapi_text_and_back() -> None:
    text = encode_set(PeerPlan(put=(peer6(2, both=True),)), PRIVATE, 51821).decode()
    assert "endpoint=[fd00:198:18::2]:51821\n" in text
    assert "allowed_ip=10.244.2.0/24\nallowed_ip=fd00:10:244:2::/64\n" in text
    answer = text.replace("set=1\n", "").replace("replace_allowed_ips=true\n", "")
    assert decode_get(answer + "errno=0\n\n").peers == {key(2): peer6(2, both=True).state()}


def test_ipv6_kernel_requests_survive_pyroute2_encoding() -> None:
    """The kernel driver (not run here without the module): IPv6 endpoint and allowed IPs."""
    requests = kernel_requests(PeerPlan(True, (), (peer6(2), peer6(3, both=True))), PRIVATE, 51821)
    assert requests[1]["peer"]["endpoint_addr"] == "fd00:198:18::2"
    assert requests[2]["peer"]["allowed_ips"] == ["10.244.3.0/24", "fd00:10:244:3::/64"]
    state = kernel_device_state(_through_pyroute2(requests))
    assert state.listen_port == 51821
    assert state.peers == {key(2): peer6(2).state(), key(3): peer6(3, both=True).state()}


# --- the key file ---------------------------------------------------------------------------


def test_key_file_path_default_and_env() -> None:
    assert key_file_path({}) == "/run/flannel/wgkey"
    assert key_file_path({"WIREGUARD_KEY_FILE": "/x/k"}) == "/x/k"


def test_key_file_created_0400_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "wgkey"
    first = load_or_create_key(str(path), lambda n: b"\xff" * n)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert path.read_text() == key_b64(first)  # as upstream: base64, no newline
    assert first[0] == 0xF8  # clamped
    assert load_or_create_key(str(path), lambda n: b"\x01" * n) == first


def test_key_file_written_by_wg_genkey_is_read(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    path.write_text("8DpI0hIw088OBi2Rmv5TI7XerugoHEN1ixBJafphlms=\n")
    path.chmod(0o600)
    assert key_b64(public_key(load_or_create_key(str(path)))) == (
        "7gqnFKRC45Lu7cEb3wWiamtb9/lyYGxeV5TLPMkOYhM=")


def test_key_file_readable_by_others_names_the_fix(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "wgkey"
    path.write_text("8DpI0hIw088OBi2Rmv5TI7XerugoHEN1ixBJafphlms=")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=f"mode 0644.*chmod 400 {path}"):
        load_or_create_key(str(path))


def test_key_file_with_garbage_names_the_fix_without_the_content(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    path.write_text("secret-but-not-a-key")
    path.chmod(0o400)
    with pytest.raises(ConfigError) as err:
        load_or_create_key(str(path))
    assert "holds no private key" in str(err.value) and "delete it" in str(err.value)
    assert "secret-but-not-a-key" not in str(err.value)


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_or_create_key(str(tmp_path))


def test_unreadable_key_file(tmp_path: Path) -> None:
    loop = tmp_path / "wgkey"
    loop.symlink_to(loop)  # stat fails with ELOOP: neither absent nor readable
    with pytest.raises(ConfigError, match=f"cannot read WireGuard key file {loop}"):
        load_or_create_key(str(loop))


def test_key_file_in_an_unwritable_place() -> None:
    with pytest.raises(ConfigError, match="cannot create WireGuard key file.*WIREGUARD_KEY_FILE"):
        load_or_create_key("/proc/self/no-such-dir/wgkey")


# --- driver choice ----------------------------------------------------------------------------


class FakeNetlink:
    def __init__(self, err: int | None) -> None:
        self.err = err

    def link(self, name: str) -> None:
        return None

    def ensure_wireguard(self, name: str) -> tuple[object, bool]:
        if self.err is not None:
            raise DataplaneError("link add: Operation not supported", self.err)
        return object(), True


class FakeUserspace:
    name = "userspace"

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname


def choose(driver: str, err: int | None, device: str = "flannel-wg") -> str:
    chosen = choose_driver(WireguardOptions(driver=driver), FakeNetlink(err),  # type: ignore[arg-type]
                           FakeUserspace, device)  # type: ignore[arg-type]
    return str(chosen.name)


def test_auto_picks_userspace_without_the_module(caplog: Any) -> None:
    caplog.set_level("INFO")
    assert choose("auto", errno.EOPNOTSUPP) == "userspace"
    assert choose("auto", errno.ENOENT) == "userspace"
    assert "no wireguard module" in caplog.text
    assert choose("auto", None) == "kernel"
    assert choose("userspace", None) == "userspace"
    assert choose("auto", errno.EOPNOTSUPP, "flannel-wg-v6") == "userspace"
    assert "using wireguard-go (userspace) for flannel-wg-v6" in caplog.text


def test_kernel_forced_without_the_module_names_the_fix() -> None:
    with pytest.raises(DataplaneError, match="modprobe wireguard"):
        choose("kernel", errno.EOPNOTSUPP)


def test_other_link_errors_are_not_mistaken_for_a_missing_module() -> None:
    with pytest.raises(DataplaneError):
        choose("auto", errno.EPERM)


def test_sandbox_without_a_program_prints_its_usage(capsys: Any) -> None:
    assert wgsandbox.main([]) == 2
    assert wgsandbox.main(["--netns", "/var/run/netns/x", "--"]) == 2
    assert "usage: python -m backends.wgsandbox" in capsys.readouterr().err
