"""The flannel CNI plugin run as a runtime runs it, inside a throw-away "host" namespace.

Each test creates a host and a pod namespace, points subnet.env, the plugin
cache and host-local's dataDir at a temp dir, and runs the plugin with
``ip netns exec <host>`` and the CNI environment, delegating to Debian's
bridge/host-local from /usr/lib/cni. Everything lives in the namespaces and
the temp dir and goes away with them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PLUGINS = "/usr/lib/cni"
NETWORK = ipaddress.ip_network("10.244.0.0/16")
SUBNET = ipaddress.ip_network("10.244.1.0/24")
GATEWAY = "10.244.1.1"
MTU = 1450

LAUNCHER = """#!{python}
import sys
sys.path.insert(0, {repo!r})
from cni.plugin import main
sys.exit(main())
"""


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


class Rig:
    """A host/pod namespace pair and the files a node would have."""

    def __init__(self, host: str, pod: str, root: Path, launcher: str) -> None:
        if not os.path.isfile(f"{SYSTEM_PLUGINS}/bridge"):
            pytest.skip("containernetworking-plugins not installed")
        self.host = host
        self.pod = pod
        self.bin = root / "bin"
        self.bin.mkdir()
        plugin = self.bin / "flannel"
        if launcher == "bundle":
            subprocess.run([sys.executable, "-m", "cni.bundle", str(plugin)], cwd=REPO, check=True)
        else:
            plugin.write_text(LAUNCHER.format(python=sys.executable, repo=str(REPO)))
            plugin.chmod(0o755)
        self.plugin = plugin
        self.cache = root / "cache"
        self.ipam = root / "ipam"
        subnet_env = root / "subnet.env"
        subnet_env.write_text(
            f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\n"
            f"FLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n"
        )
        # kube-flannel's conflist entry, with our temp paths.
        self.conf: dict[str, object] = {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(subnet_env),
            "dataDir": str(self.cache),
            "delegate": {"hairpinMode": True, "isDefaultGateway": True},
            "ipam": {"dataDir": str(self.ipam)},
        }

    def env(self, command: str, container_id: str = "ctr-1") -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/var/run/netns/{self.pod}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.bin}:{SYSTEM_PLUGINS}",
        }

    def run(
        self, env: dict[str, str], conf: Mapping[str, object] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        stdin = json.dumps(self.conf if conf is None else conf).encode()
        return subprocess.run(
            ["ip", "netns", "exec", self.host, str(self.plugin)],
            check=False,
            env=env,
            input=stdin,
            capture_output=True,
            timeout=60,
        )

    def ok(self, command: str, conf: Mapping[str, object] | None = None) -> bytes:
        proc = self.run(self.env(command), conf)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc.stdout

    def allocated(self) -> set[str]:
        network_dir = self.ipam / "cbr0"
        if not network_dir.is_dir():
            return set()
        return {name for name in os.listdir(network_dir) if name[0].isdigit()}


@pytest.fixture(params=["module", "bundle"])
def rig(request: pytest.FixtureRequest, netns_factory: Callable[[str], str], tmp_path: Path) -> Rig:
    return Rig(netns_factory("cnihost"), netns_factory("cnipod"), tmp_path, request.param)


def test_add_check_del_lifecycle(rig: Rig) -> None:
    result = json.loads(rig.ok("ADD"))
    assert result["cniVersion"] == "1.0.0"
    [ip_config] = result["ips"]
    address = ipaddress.ip_interface(ip_config["address"])
    assert address.ip in SUBNET
    assert ip_config["gateway"] == GATEWAY

    # The pod got eth0 with that address, flannel's MTU and a route to the network.
    [eth0] = ip_json("-n", rig.pod, "addr", "show", "dev", "eth0")
    assert eth0["mtu"] == MTU
    assert {(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"} == {
        (str(address.ip), 24)
    }
    routes = ip_json("-n", rig.pod, "route", "show")
    assert {"dst": str(NETWORK), "gateway": GATEWAY} in [
        {"dst": r["dst"], "gateway": r.get("gateway")} for r in routes
    ]
    # The bridge and its gateway address are in the host namespace (where the plugin ran).
    [cni0] = ip_json("-n", rig.host, "addr", "show", "dev", "cni0")
    assert GATEWAY in [a["local"] for a in cni0["addr_info"]]
    ping = subprocess.run(
        ["ip", "netns", "exec", rig.pod, "ping", "-c", "1", "-W", "2", GATEWAY],
        check=False,
        capture_output=True,
        timeout=10,
    )
    assert ping.returncode == 0, ping.stdout

    # The rendered delegate config is cached, private, and is what upstream renders.
    cached_file = rig.cache / "ctr-1"
    assert stat.S_IMODE(cached_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(rig.cache.stat().st_mode) == 0o700
    assert json.loads(cached_file.read_bytes()) == {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "hairpinMode": True,
        "isDefaultGateway": True,
        "ipMasq": False,
        "isGateway": True,
        "mtu": MTU,
        "ipam": {
            "type": "host-local",
            "dataDir": str(rig.ipam),
            "ranges": [[{"subnet": str(SUBNET)}]],
            "routes": [{"dst": str(NETWORK)}],
        },
    }
    assert rig.allocated() == {str(address.ip)}

    # CHECK with the runtime's prevResult succeeds (upstream's CHECK is a no-op).
    assert rig.ok("CHECK", {**rig.conf, "prevResult": result}) == b""
    # ... but refuses a config version that does not know CHECK, as libcni's skel does.
    proc = rig.run(rig.env("CHECK"), {**rig.conf, "cniVersion": "0.3.1"})
    assert (proc.returncode, json.loads(proc.stdout)["code"]) == (1, 1)

    assert rig.ok("DEL") == b""
    assert not cached_file.exists()
    assert rig.allocated() == set()
    assert [link["ifname"] for link in ip_json("-n", rig.pod, "link", "show")] == ["lo"]
    assert rig.ok("DEL") == b""  # idempotent


def test_missing_env_var_is_an_error_and_nothing_is_written(rig: Rig) -> None:
    env = rig.env("ADD")
    del env["CNI_NETNS"]
    proc = rig.run(env)
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["code"] == 4
    assert error["msg"] == "required env variables [CNI_NETNS] missing"
    assert not rig.cache.exists()
    assert not rig.ipam.exists()
    assert ip_json("-n", rig.host, "link", "show", "type", "bridge") == []


def test_two_pods_get_different_addresses_and_del_frees_only_its_own(rig: Rig) -> None:
    first = json.loads(rig.ok("ADD"))
    second_pod_env = rig.env("ADD", container_id="ctr-2")
    second_pod_env["CNI_IFNAME"] = "eth1"  # same pod namespace, second interface
    proc = rig.run(second_pod_env)
    assert proc.returncode == 0, proc.stdout
    second = json.loads(proc.stdout)
    addresses = {first["ips"][0]["address"], second["ips"][0]["address"]}
    assert len(addresses) == 2
    assert len(rig.allocated()) == 2
    del_env = rig.env("DEL", container_id="ctr-2")
    del_env["CNI_IFNAME"] = "eth1"
    assert rig.run(del_env).returncode == 0
    assert rig.allocated() == {first["ips"][0]["address"].split("/")[0]}
    assert (rig.cache / "ctr-1").exists()
    assert not (rig.cache / "ctr-2").exists()
    assert rig.ok("DEL") == b""
