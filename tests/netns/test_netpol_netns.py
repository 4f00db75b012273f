"""NetworkPolicy table in a real kernel: apply, no-op re-apply, element-only relabel, traffic.

A node namespace holds a bridge with three pod namespaces (a, b, c) on it;
same-node pod traffic is bridged, so the forward hook sees it only through
br_netfilter (``bridge-nf-call-iptables=1``, set by the code under test).
Reachability is checked with real TCP connections; the table is read back
with ``nft`` directly and compared with the pure function's output.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flanneld.lab import topology
from flanneld.netpol.model import Cluster, Pod, parse_namespace, parse_policy
from flanneld.netpol.ruleset import LocalNode, desired_ruleset
from flanneld.netpol.script import expected, observe
from flanneld.netpol.table import FAMILY, TABLE
from flanneld.trafficmgr.policy import PolicyTable, ensure_bridge_netfilter
from flanneld.trafficmgr.runner import CommandRunner

pytestmark = pytest.mark.netns

GW = ipaddress.IPv4Interface("10.244.0.1/24")
PODS = {"a": "10.244.0.2", "b": "10.244.0.3", "c": "10.244.0.4"}
SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(64)\n"
    "while True:\n    c,_=s.accept(); c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "except OSError:\n    sys.exit(1)\n"
)
PORT = 8080


def connects(ns: str, ip: str, port: int = PORT) -> bool:
    argv = topology.netns_argv(ns, [sys.executable, "-c", CLIENT, ip, str(port)])
    return subprocess.run(argv, timeout=30, check=False).returncode == 0


def nft_json(ns: str) -> dict[str, object]:
    out = subprocess.run(
        topology.netns_argv(ns, ["nft", "-j", "list", "table", FAMILY, TABLE]),
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture
def node(netns_factory: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """Node namespace with bridge br0 and pods a, b, c plugged in, a server on each pod."""
    names = {"node": netns_factory("npnode")}
    topology.add_bridge(names["node"], "br0")
    topology.add_address(names["node"], "br0", GW)
    topology.set_up(names["node"], "br0")
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for pod, ip in PODS.items():
            names[pod] = netns_factory(f"np{pod}")
            topology.bridge_port(names["node"], "br0", f"vp{pod}", names[pod], "eth0",
                                 ipaddress.IPv4Interface(f"{ip}/24"))
            topology.add_default_route(names[pod], GW.ip)
            servers.append(subprocess.Popen(
                topology.netns_argv(names[pod], [sys.executable, "-c", SERVER, str(PORT)])))
        deadline = time.monotonic() + 60
        while not all(connects(names["node"], ip) for ip in PODS.values()):
            assert time.monotonic() < deadline, "pod servers never came up"
            time.sleep(0.2)
        yield names
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(timeout=30)


def cluster(labels_c: str = "c") -> Cluster:
    policy, problems = parse_policy({
        "metadata": {"name": "only-b", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                              "ports": [{"port": PORT}]}]},
    })
    ns, _ = parse_namespace({"metadata": {"name": "x"}})
    assert policy is not None and ns is not None and not problems
    pods = tuple(
        Pod("x", name, (("pod", labels_c if name == "c" else name),),
            (ipaddress.ip_address(ip),), node_name="n1")
        for name, ip in PODS.items()
    )
    return Cluster((policy,), (ns,), pods)


def test_policy_enforces_bridged_traffic_and_relabel_updates_elements(
    node: dict[str, str],
) -> None:
    ns = node["node"]
    topology.write_sysctl(ns, "net.bridge.bridge-nf-call-iptables", "0")
    topology.run_in_netns(ns, lambda: ensure_bridge_netfilter(CommandRunner()))
    assert topology.read_sysctl(ns, "net.bridge.bridge-nf-call-iptables") == "1"
    assert topology.read_sysctl(ns, "net.bridge.bridge-nf-call-ip6tables") == "1"

    table = PolicyTable(CommandRunner(prefix=tuple(topology.netns_argv(ns, []))))
    desired = desired_ruleset(cluster(), LocalNode("n1")).ruleset
    assert table.apply(desired).kind == "full"
    assert observe(nft_json(ns)) == expected(desired)
    assert table.apply(desired).kind == "none"
    restarted = PolicyTable(CommandRunner(prefix=tuple(topology.netns_argv(ns, []))))
    assert restarted.apply(desired).kind == "none"  # a restart reads back: no window, no write

    assert connects(node["b"], PODS["a"])
    assert not connects(node["c"], PODS["a"])
    assert connects(node["a"], PODS["c"])  # a is isolated for ingress only
    assert connects(ns, PODS["a"])  # the node itself always reaches its pods
    assert table.apply(desired).kind == "none"  # a verifying pass reads the counters too
    assert sum(table.counters().values()) >= 1  # the reject counter saw c's attempt

    relabelled = desired_ruleset(cluster(labels_c="b"), LocalNode("n1")).ruleset
    result = table.apply(relabelled, verify=False)  # planned from our last apply, no read-back
    assert result.kind == "incremental" and result.commands <= 2
    assert observe(nft_json(ns)) == expected(relabelled)
    assert connects(node["c"], PODS["a"])

    assert table.remove()
    assert not table.remove()


def test_damaged_table_is_repaired_and_empty_policy_set_opens(node: dict[str, str]) -> None:
    ns = node["node"]
    table = PolicyTable(CommandRunner(prefix=tuple(topology.netns_argv(ns, []))))
    desired = desired_ruleset(cluster(), LocalNode("n1")).ruleset
    table.apply(desired)
    chain = next(c.name for c in desired.chains if c.name.startswith("pol_"))
    subprocess.run(topology.netns_argv(ns, ["nft", "flush", "chain", FAMILY, TABLE, chain]),
                   check=True, timeout=30)
    assert table.apply(desired).kind == "incremental"
    assert observe(nft_json(ns)) == expected(desired)
    assert not connects(node["c"], PODS["a"])

    open_all = desired_ruleset(Cluster((), cluster().namespaces, cluster().pods), LocalNode("n1"))
    assert table.apply(open_all.ruleset).kind == "incremental"
    assert observe(nft_json(ns)) == expected(open_all.ruleset)
    assert connects(node["c"], PODS["a"])
    table.remove()


def test_missing_bridge_netfilter_names_the_fix(tmp_path: Path) -> None:
    from subnet.errors import ConfigError

    with pytest.raises(ConfigError, match="modprobe br_netfilter"):
        ensure_bridge_netfilter(CommandRunner(prefix=("false",)), proc_sys=tmp_path)
