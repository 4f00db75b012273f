"""The wireguard backend in dual-stack and IPv6-only labs (wireguard-go; this kernel has no
module): every cell of every family's ping matrix OK, in etcd and kube mode, with upstream's
default ``Mode: separate`` (IPv6 on ``flannel-wg-v6``, port 51821); ``flannelctl doctor``
finds nothing wrong and checks the IPv6 peer on ``flannel-wg-v6``; a killed IPv6
wireguard-go is restarted and re-programmed while IPv4 keeps working."""

from __future__ import annotations

import json
import os
import signal

import pytest

from backends.wireguard_state import DEVICE, DEVICE_V6, key_b64
from flanneld.lab.lab import Lab, down
from flanneld.lab.layout import is_lab_netns
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root
from tests.e2e.test_ctl import flannelctl
from tests.waiting import wait_until

ANNOTATION = "flannel.alpha.coreos.com"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("subnet_mgr", "family", "suffix"),
    [("etcd", "dual", "gd"), ("kube", "dual", "gk"), ("kube", "ipv6", "g6")],
)
def test_wireguard_lab_reaches_every_pod_in_each_family(
    subnet_mgr: str, family: str, suffix: str
) -> None:
    needs_root()
    prefix = RUN_PREFIX + suffix
    families = ["ipv4", "ipv6"] if family == "dual" else ["ipv6"]
    try:
        done = flannelctl("lab", "up", "--nodes", "2", "--backend", "wireguard", "--ip-family",
                          family, "--subnet-mgr", subnet_mgr, "--prefix", prefix, "--json")
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        matrix = json.loads(done.stdout)["matrix"]
        assert sorted((c["src"], c["dst"], c["family"]) for c in matrix) == sorted(
            (src, dst, f) for src, dst in (("n1p1", "n2p1"), ("n2p1", "n1p1")) for f in families)
        assert all(c["ok"] for c in matrix), matrix

        lab = Lab.attach(prefix)
        v6_pid = lab.wireguard_go_pid("n1", DEVICE_V6)
        assert v6_pid is not None  # separate mode: a device (and a wireguard-go) for IPv6
        assert (lab.wireguard_go_pid("n1", DEVICE) is not None) == (family == "dual")
        if subnet_mgr == "kube":  # BackendV6Data as upstream writes it: the key, port 51821
            annotations = lab.kube_api.node("n1")["metadata"]["annotations"]
            data = json.loads(annotations[f"{ANNOTATION}/backend-v6-data"])
            assert data["Port"] == 51821 and len(data["PublicKey"]) == len(key_b64(bytes(32)))
            assert annotations[f"{ANNOTATION}/public-ipv6"] == "fd00:198:18::11"
        doctor = flannelctl("lab", "doctor", "--prefix", prefix, "n1", "--json")
        report = json.loads(doctor.stdout)
        assert report["ok"], doctor.stdout[-3000:]
        v6_rows = [c for c in report["checks"] if c["check"].startswith("peer fd00:")]
        assert any("on flannel-wg-v6" in c["found"] for c in v6_rows), v6_rows
        if family == "dual":
            os.kill(v6_pid, signal.SIGKILL)  # IPv6's wireguard-go dies; IPv4 is untouched
            assert lab.ping("n1p1", "n2p1", 3, family=4).received == 3
            wait_until(lambda: lab.ping("n1p1", "n2p1", 1, family=6, timeout=5).received == 1,
                       60.0, "IPv6 pings from n1p1 to n2p1 after flannel-wg-v6's repair")
            assert lab.wireguard_go_pid("n1", DEVICE_V6) not in (None, v6_pid)
    finally:
        down(prefix)
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
