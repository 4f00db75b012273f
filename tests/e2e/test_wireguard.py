"""The wireguard backend in the lab: three nodes, wireguard-go (this kernel has no module).

One 3-node etcd lab serves every case; each case leaves it as it found it
(test-made leases deleted, every flanneld running).  Bounds: the capture
shows nothing but UDP to the listen port between nodes and no pod payload;
a flanneld restart loses no ping at 100 pps; a killed wireguard-go is back
within one resync; a deleted lease's peer goes; a rotated key replaces the
peer.  Figures carry a ``FIGURE`` tag (``pytest -s`` shows them).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backends.wgsandbox import SOCKET_DIR
from backends.wireguard_state import DEVICE
from backends.wireguard_uapi import UapiClient, UapiError
from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import HEALTHZ_PORT, node_paths
from flanneld.lab.topology import netns_argv, run_in_netns
from tests.conftest import RUN_PREFIX, needs_root
from tests.waiting import wait_pinging, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

PREFIX = RUN_PREFIX + "w"
RESYNC = 10.0  # flanneld's default --resync-interval
LISTEN_PORT = 51820
PATTERN = "c0ffee15deadbeef"  # the payload of the captured pings


def figure(name: str, value: object) -> None:
    print(f"FIGURE {name}: {value}")


@pytest.fixture(scope="module")
def wg_lab() -> Iterator[Lab]:
    needs_root()
    try:
        yield up(nodes=3, backend="wireguard", pods_per_node=2, prefix=PREFIX)
    finally:
        down(PREFIX)


def subnets(lab: Lab) -> str:
    return lab.plan.etcd_prefix + "/subnets/"


def leases(lab: Lab) -> dict[str, str]:
    with lab.etcd_gateway() as gateway:
        found = gateway.get_prefix(subnets(lab))
    return {k.removeprefix(subnets(lab)): v for k, v in found.items()}


def put_lease(lab: Lab, key: str, value: str) -> None:
    with lab.etcd_gateway() as gateway:
        gateway.put(subnets(lab) + key, value)


def delete_lease(lab: Lab, key: str) -> None:
    subprocess.run(
        netns_argv(lab.plan.underlay_netns, ["etcdctl", f"--endpoints={lab.plan.etcd_url}",
                                             "del", subnets(lab) + key]),
        check=True, capture_output=True, timeout=20, env={"ETCDCTL_API": "3", "PATH": "/usr/bin"},
    )


def wg_lease(public_ip: str, key: bytes) -> str:
    return json.dumps({"PublicIP": public_ip, "PublicIPv6": None, "BackendType": "wireguard",
                       "BackendData": {"PublicKey": base64.b64encode(key).decode(),
                                       "Port": LISTEN_PORT}}, separators=(",", ":"))


def device_peers(lab: Lab, node: str) -> dict[bytes, object]:
    """The peers on ``node``'s flannel-wg, read over wireguard-go's UAPI socket."""
    pid = lab.wireguard_go_pid(node)
    if pid is None:
        return {}
    try:
        return dict(UapiClient(f"/proc/{pid}/root{SOCKET_DIR}/{DEVICE}.sock").get().peers)
    except UapiError:
        return {}


def own_public_key(lab: Lab, node: str) -> str:
    subnet = lab.node_lease(node).subnet
    doc = json.loads(leases(lab)[f"{subnet.network_address}-{subnet.prefixlen}"])
    return str(doc["BackendData"]["PublicKey"])


def pings(lab: Lab, src: str, dst: str) -> Callable[[], bool]:
    return lambda: lab.ping(src, dst, 1, 0.2, 5.0).lost == 0


@pytest.fixture
def lab(wg_lab: Lab) -> Iterator[Lab]:
    """The shared lab, with every flanneld running and only the nodes' own leases afterwards."""
    own = {f"{n.subnet.network_address}-{n.subnet.prefixlen}" for n in wg_lab.leases()}
    try:
        yield wg_lab
    finally:
        for key in set(leases(wg_lab)) - own:
            delete_lease(wg_lab, key)
        for node in wg_lab.plan.nodes:
            if wg_lab.flanneld_pid(node.name) is None:
                wg_lab.start_flanneld(node.name)


# --- the matrix, and what the underlay sees -----------------------------------------------------


def test_matrix_and_underlay_capture(lab: Lab, tmp_path: Path) -> None:
    cells = lab.matrix(count=3, timeout=10.0)
    assert [c for c in cells if not c.ok] == []
    figure("wireguard matrix cells OK", f"{len(cells)}/{len(cells)}")
    capture = tmp_path / "underlay.pcap"
    gateway = str(lab.plan.gateway.ip)
    src, dst = lab.endpoints()[0], lab.endpoints()[-1]  # n1p1 -> n3p2
    # every IPv4 packet of node n1 on the underlay (its bridge port), except to/from etcd
    tcpdump = subprocess.Popen(
        netns_argv(lab.plan.underlay_netns, [
            "tcpdump", "-i", lab.plan.node("n1").bridge_port, "-nn", "-U", "-c", "60",
            "-w", str(capture), f"ip and not host {gateway}"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert tcpdump.stderr is not None
        assert "listening on" in tcpdump.stderr.readline()
        done = subprocess.run(
            netns_argv(src.netns, ["ping", "-c", "40", "-i", "0.05", "-W", "2", "-p", PATTERN,
                                   str(dst.ip)]),
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        tcpdump.wait(timeout=30)  # it stops by itself after 60 packets
    finally:
        if tcpdump.poll() is None:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=20)
        if tcpdump.stderr is not None:
            tcpdump.stderr.close()
    raw = capture.read_bytes()
    assert bytes.fromhex(PATTERN) * 2 not in raw, "pod payload in clear on the underlay"
    text = subprocess.run(["tcpdump", "-nn", "-r", str(capture)], capture_output=True, text=True,
                          timeout=30, check=True).stdout.splitlines()
    nodes = {str(n.public_ip) for n in lab.plan.nodes}
    udp = [line for line in text if " UDP" in line]
    assert len(udp) == 60, text[:5]  # of 40 requests and 40 replies, encrypted
    for line in text:
        fields = line.split()
        source, target = fields[2].rsplit(".", 1), fields[4].rstrip(":").rsplit(".", 1)
        assert " UDP" in line, line
        assert {source[0], target[0]} <= nodes, line
        assert str(LISTEN_PORT) in (source[1], target[1]), line
        assert "10.244." not in line, line
    figure("underlay packets captured (all UDP 51820 between nodes)", len(text))


def test_private_key_is_never_logged_or_served(lab: Lab) -> None:
    path = node_paths(lab.plan, lab.plan.node("n1")).wireguard_key
    assert os.stat(path).st_mode & 0o777 == 0o400
    with open(path, encoding="ascii") as fh:
        private = fh.read().strip()
    hexed = base64.b64decode(private).hex()

    def served(page: str) -> str:
        url = f"http://127.0.0.1:{HEALTHZ_PORT}{page}"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode(errors="replace"))

        return run_in_netns(lab.plan.node("n1").netns, get)

    pages = served("/readyz") + served("/metrics")
    assert "lease" in pages and "flannel" in pages  # the pages were really read
    for text in (lab.logs("n1"), pages):
        assert private not in text and hexed not in text


# --- faults ---------------------------------------------------------------------------------


def test_flanneld_restart_keeps_the_key_and_loses_no_ping(lab: Lab) -> None:
    key_before = own_public_key(lab, "n1")
    wg_pid = lab.wireguard_go_pid("n1")
    count = 600  # 100 pps for 6 s, both directions across the restart
    with ThreadPoolExecutor(max_workers=2) as pool:
        outbound = pool.submit(lab.ping, "n1p1", "n2p1", count, 0.01, 40.0)
        inbound = pool.submit(lab.ping, "n3p1", "n1p1", count, 0.01, 40.0)
        wait_pinging(lab, "n1p1")
        wait_pinging(lab, "n3p1")
        lab.kill_flanneld("n1", signal.SIGKILL)
        lab.start_flanneld("n1")
        out_stats, in_stats = outbound.result(timeout=60), inbound.result(timeout=60)
    figure("wireguard restart packets lost out/in",
           f"{out_stats.lost}/{out_stats.sent}, {in_stats.lost}/{in_stats.sent}")
    assert out_stats.sent == in_stats.sent == count
    assert out_stats.lost == 0 and in_stats.lost == 0, (out_stats, in_stats)
    assert own_public_key(lab, "n1") == key_before
    assert lab.wireguard_go_pid("n1") == wg_pid  # adopted, not restarted
    assert "adopted the running wireguard-go" in lab.logs("n1")


def test_killed_wireguard_go_is_back_within_one_resync(lab: Lab) -> None:
    wait_until(pings(lab, "n1p1", "n2p1"), 20, "n1p1 reaches n2p1")
    pid = lab.wireguard_go_pid("n1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    seconds = wait_until(
                  pings(lab, "n1p1", "n2p1"),
                  RESYNC + 5,
                  "traffic back after wireguard-go was killed",
              )
    figure("wireguard-go killed: seconds until traffic is back", f"{seconds:.1f}")
    assert lab.wireguard_go_pid("n1") not in (None, pid)
    assert "restarting it and re-programming every peer" in lab.logs("n1")


def test_deleted_lease_removes_the_peer_and_rotation_replaces_it(lab: Lab) -> None:
    key = "10.244.250.0-24"
    first, second = bytes([0x41]) * 32, bytes([0x42]) * 32
    put_lease(lab, key, wg_lease("198.18.0.250", first))
    wait_until(lambda: first in device_peers(lab, "n1"), RESYNC, "peer added on n1")
    put_lease(lab, key, wg_lease("198.18.0.250", second))  # the peer rotated its key
    wait_until(
        lambda: second in (peers := device_peers(lab, "n1")) and first not in peers,
        RESYNC,
        "rotated key replaces the peer",
    )
    assert len(device_peers(lab, "n1")) == 3  # n2, n3 and the rotated one, no duplicate
    delete_lease(lab, key)
    wait_until(lambda: second not in device_peers(lab, "n1"), RESYNC, "peer removed on n1")
    assert len(device_peers(lab, "n1")) == 2


def test_bad_peer_lease_is_skipped_once_and_others_keep_working(lab: Lab) -> None:
    key = "10.244.251.0-24"
    bad = json.dumps({"PublicIP": "198.18.0.251", "PublicIPv6": None, "BackendType": "wireguard",
                      "BackendData": {"PublicKey": "dG9vIHNob3J0", "Port": LISTEN_PORT}})
    start = len(lab.logs("n1"))
    put_lease(lab, key, bad)
    said = f"skipping peer lease {key}: PublicKey is not a WireGuard key"
    wait_until(lambda: said in lab.logs("n1")[start:], RESYNC, "skip logged")
    after = lab.logs("n1").index(said, start) + len(said)
    wait_until(pings(lab, "n1p1", "n2p1"), 10, "n1p1 still reaches n2p1")
    wait_until(lambda: "reconciled" in lab.logs("n1")[after:], RESYNC * 2, "a later pass")
    assert said not in lab.logs("n1")[after:]  # logged once, not on every pass


def test_kube_mode_matrix_and_annotations() -> None:
    """The same backend with --kube-subnet-mgr: peers come from Node annotations."""
    needs_root()
    prefix = RUN_PREFIX + "wk"  # apart from test_lab.py's "k"
    try:
        kube = up(nodes=2, backend="wireguard", pods_per_node=1, prefix=prefix, subnet_mgr="kube")
        cells = kube.matrix(count=3, timeout=10.0)
        assert [c for c in cells if not c.ok] == []
        ann = kube.kube_api.node("n1")["metadata"]["annotations"]
        assert ann["flannel.alpha.coreos.com/backend-type"] == "wireguard"
        data = json.loads(ann["flannel.alpha.coreos.com/backend-data"])
        assert list(data) == ["PublicKey", "Port"] and data["Port"] == LISTEN_PORT
        assert len(base64.b64decode(data["PublicKey"])) == 32
        peers = device_peers(kube, "n2")
        assert list(peers) == [base64.b64decode(data["PublicKey"])]
    finally:
        down(prefix)
