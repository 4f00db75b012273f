"""flanneld refuses a bad net-conf.json with upstream's message and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flanneld.lab.etcd import EtcdSpec

pytestmark = pytest.mark.e2e

ETCD_PORT = 22479


def in_netns(ns: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], check=False, capture_output=True, text=True,
        timeout=60,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("net_conf", "message"),
    [
        ('{"Network": "10.244.0.0/29", "Backend": {"Type": "vxlan"}}',
         "network is too small. Minimum useful network prefix is /28"),
        ('{"Network": "10.244.0.0/16", "SubnetLen": 31}', "SubnetLen must be less than /31"),
        ('{"Network": "10.244.0.0/16", "Backend": {"Type": "carrier-pigeon"}}',
         "unknown backend type: carrier-pigeon"),
        ('{"Network": ', "not valid JSON"),
        ('{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", "Mode": "mesh"}}',
         "no valid Mode configured"),
        ('{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", "PSK": "c2VjcmV0"}}',
         "could not parse psk: key is 6 bytes, not 32; PSK must be base64 of 32 bytes"),
        # issue 9: hostile nesting, and what the validator and the daemon must agree on
        ("[" * 100_000, "net-conf.json is not valid JSON: nested too deeply"),
        ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"}',
         "SubnetMin 10.244.9.0 is above SubnetMax 10.244.2.0"),
        (('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1::/56",'
          ' "Backend": {"Type": "udp"}}'),
         "the udp backend supports IPv4 only, not IPv6"),
    ],
    ids=["too-small", "subnetlen", "backend", "truncated", "wg-mode", "wg-psk", "deep",
         "min-above-max", "ipv6-udp"],
)
def test_bad_net_conf_exits_non_zero_with_the_reason(
    netns_factory, tmp_path: Path, net_conf: str, message: str  # type: ignore[no-untyped-def]
) -> None:
    ns = netns_factory("badconf")
    spec = EtcdSpec("bad", str(tmp_path / "etcd"), "127.0.0.1", ETCD_PORT, ETCD_PORT + 1)
    etcdctl = ["etcdctl", f"--endpoints={spec.client_url}"]
    env = {**os.environ, "ETCDCTL_API": "3"}
    with open(tmp_path / "etcd.log", "wb") as log:
        etcd = subprocess.Popen(["ip", "netns", "exec", ns, *spec.argv()], stdout=log, stderr=log)
    try:
        for _ in range(100):
            if in_netns(ns, *etcdctl, "endpoint", "health", env=env).returncode == 0:
                break
        put = in_netns(ns, *etcdctl, "put", "/coreos.com/network/config", net_conf, env=env)
        assert put.returncode == 0, put.stderr
        daemon = in_netns(
            ns, sys.executable, "-m", "flanneld.cli", f"-etcd-endpoints={spec.client_url}",
            f"-subnet-file={tmp_path / 'subnet.env'}",
        )
    finally:
        etcd.terminate()
        etcd.wait(10)
    assert daemon.returncode == 1, daemon.stderr
    assert message in daemon.stderr
    assert "Traceback" not in daemon.stderr
    assert not (tmp_path / "subnet.env").exists()
    links = in_netns(ns, "ip", "-o", "link").stdout
    assert "flannel" not in links  # refused before touching the kernel
