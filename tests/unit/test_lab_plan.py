"""The lab's pure parts: layout, naming, argv/netconf rendering, parsers, state codec."""

from __future__ import annotations

import ipaddress
import json

import pytest

from flanneld.ctl import build_parser, render_matrix, up_json
from flanneld.lab.layout import (
    IFNAMSIZ,
    MAX_NODES,
    STATE_ROOT,
    cni_env,
    cni_netconf,
    flanneld_argv,
    flanneld_launcher,
    interface_names,
    is_lab_netns,
    make_plan,
    node_paths,
    node_pod_cidrs,
    parse_flanneld_binaries,
)
from flanneld.lab.leases import (
    NodeLease,
    node_lease,
    node_lease_from_annotations,
    parse_env_file,
    subnet_from_env,
)
from flanneld.lab.matrix import Cell, Endpoint, matrix_jobs, parse_ping, ping_argv
from flanneld.lab.state import LabState, ProcessRecord, load, save
from subnet.errors import ConfigError, PeerDataError

# --- layout ---------------------------------------------------------------------------


def test_names_and_addresses_follow_the_prefix() -> None:
    plan = make_plan("pfl", nodes=3, pods_per_node=2)
    assert plan.underlay_netns == "pfl-ul"
    assert [n.netns for n in plan.nodes] == ["pfl-n1", "pfl-n2", "pfl-n3"]
    assert [str(n.address) for n in plan.nodes] == [
        "198.18.0.11/24",
        "198.18.0.12/24",
        "198.18.0.13/24",
    ]
    assert str(plan.gateway) == "198.18.0.1/24"
    assert plan.etcd_url == "http://198.18.0.1:12379"
    assert [p.netns for p in plan.nodes[1].pods] == ["pfl-n2p1", "pfl-n2p2"]
    assert plan.state_dir == f"{STATE_ROOT}/pfl"


def test_namespaces_are_unique_ours_and_pods_come_first() -> None:
    plan = make_plan("lab7", nodes=4, pods_per_node=3)
    names = plan.namespaces()
    assert len(names) == len(set(names)) == 1 + 4 + 4 * 3
    assert all(is_lab_netns("lab7", n) for n in names)
    assert names[-1] == "lab7-ul"
    first_node = names.index("lab7-n1")
    assert all("p" in n.split("-")[1] for n in names[:first_node])


@pytest.mark.parametrize(
    "name", ["lab7x-n1", "lab-n1", "lab7-n1x", "lab7-ulx", "lab7-n", "lab7-p1", "xlab7-ul"]
)
def test_foreign_namespaces_are_not_recognised(name: str) -> None:
    assert not is_lab_netns("lab7", name)


def test_every_interface_name_fits_ifnamsiz_even_at_max_nodes() -> None:
    plan = make_plan("abcdefghijkl", nodes=MAX_NODES, pods_per_node=1)
    assert all(len(name) <= IFNAMSIZ for name in interface_names(plan))
    addresses = {n.address.ip for n in plan.nodes}
    assert len(addresses) == MAX_NODES and plan.gateway.ip not in addresses
    assert all(a in ipaddress.IPv4Network("198.18.0.0/24") for a in addresses)
    assert max(addresses) < ipaddress.IPv4Address("198.18.0.255")


@pytest.mark.parametrize("prefix", ["", "Pfl", "1ab", "a-b", "a_b", "abcdefghijklm"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ConfigError):
        make_plan(prefix)


@pytest.mark.parametrize(
    "kwargs",
    [{"nodes": 0}, {"nodes": MAX_NODES + 1}, {"pods_per_node": -1}, {"backend": "ipip"}],
)
def test_out_of_range_sizes_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_plan("pfl", **kwargs)  # type: ignore[arg-type]


def test_unknown_node_is_a_config_error() -> None:
    plan = make_plan("pfl", nodes=2)
    assert plan.node("n2") is plan.nodes[1]
    assert plan.node("pfl-n1") is plan.nodes[0]
    with pytest.raises(ConfigError):
        plan.node("n3")


def test_net_conf_is_the_etcd_config_value() -> None:
    conf = json.loads(make_plan("pfl", backend="host-gw").net_conf())
    assert conf == {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}


# --- argv and CNI rendering -------------------------------------------------------------


def test_flanneld_argv_uses_upstream_flags_and_the_node_state_dir() -> None:
    plan = make_plan("pfl", nodes=2)
    node = plan.nodes[1]
    argv = flanneld_argv(["/venv/bin/flanneld"], plan, node)
    assert argv[0] == "/venv/bin/flanneld"
    assert "-etcd-endpoints=http://198.18.0.1:12379" in argv
    assert "-etcd-prefix=/coreos.com/network" in argv
    assert "-iface=ul0" in argv
    assert f"-subnet-file={STATE_ROOT}/pfl/n2/subnet.env" in argv
    assert any(a.startswith("-healthz-port=") and a != "-healthz-port=0" for a in argv)


def test_cni_netconf_keeps_every_file_in_the_node_state_dir() -> None:
    plan = make_plan("pfl", nodes=2)
    node = plan.nodes[0]
    conf = cni_netconf(plan, node)
    root = node_paths(plan, node).root
    assert conf["type"] == "flannel"
    assert conf["subnetFile"] == f"{root}/subnet.env"
    assert str(conf["dataDir"]).startswith(root + "/")
    ipam = conf["ipam"]
    assert isinstance(ipam, dict) and str(ipam["dataDir"]).startswith(root + "/")
    assert "/var/lib/cni" not in json.dumps(conf)


def test_cni_env_points_at_the_pod_namespace() -> None:
    plan = make_plan("pfl", nodes=1, pods_per_node=2)
    pod = plan.nodes[0].pods[1]
    env = cni_env(plan, pod, "ADD", "/x/bin:/usr/lib/cni")
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "pfl-n1p2",
        "CNI_NETNS": "/var/run/netns/pfl-n1p2",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/x/bin:/usr/lib/cni",
    }


# --- ping ---------------------------------------------------------------------------

OK_OUTPUT = """PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.

--- 10.244.2.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 402ms
rtt min/avg/max/mdev = 0.061/0.088/0.130/0.030 ms
"""

LOSSY_OUTPUT = """--- 10.244.2.2 ping statistics ---
300 packets transmitted, 297 received, 1% packet loss, time 3050ms
rtt min/avg/max/mdev = 0.041/0.512/9.100/0.800 ms, pipe 2
"""

DEAD_OUTPUT = """--- 10.244.9.2 ping statistics ---
4 packets transmitted, 0 received, +4 errors, 100% packet loss, time 3061ms
"""


def test_parse_ping_reads_counts_and_average_rtt() -> None:
    ok = parse_ping(OK_OUTPUT)
    assert (ok.sent, ok.received, ok.rtt_ms, ok.lost) == (3, 3, 0.088, 0)
    lossy = parse_ping(LOSSY_OUTPUT)
    assert (lossy.sent, lossy.received, lossy.rtt_ms, lossy.lost) == (300, 297, 0.512, 3)
    dead = parse_ping(DEAD_OUTPUT)
    assert (dead.sent, dead.received, dead.rtt_ms) == (4, 0, None)
    empty = parse_ping("ping: connect: Network is unreachable\n")
    assert (empty.sent, empty.received, empty.rtt_ms) == (0, 0, None)


def test_ping_argv_bounds_the_run() -> None:
    dst = ipaddress.IPv4Address("10.244.1.2")
    with_deadline = ping_argv(dst, 3, 0.2, 7.4)
    assert with_deadline[-1] == "10.244.1.2"
    assert with_deadline[with_deadline.index("-w") + 1] == "7"
    assert with_deadline[with_deadline.index("-c") + 1] == "3"
    fast = ping_argv(dst, 500, 0.01, None)
    assert "-w" not in fast and fast[fast.index("-i") + 1] == "0.01"


def test_matrix_pairs_every_pod_with_every_other_pod() -> None:
    eps = [
        Endpoint(f"n{i}p1", f"x-n{i}p1", ipaddress.IPv4Address(f"10.244.{i}.2"))
        for i in range(1, 5)
    ]
    jobs = matrix_jobs(eps, count=3, interval=0.2, deadline=5)
    pairs = {(j.src.name, j.dst.name) for j in jobs}
    assert len(jobs) == len(pairs) == 12
    assert all(src != dst for src, dst in pairs)
    assert all(j.argv[-1] == str(j.dst.ip) for j in jobs)


# --- leases -------------------------------------------------------------------------

SUBNET_ENV = """FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.7.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
"""


def test_subnet_env_subnet_has_host_bits_masked() -> None:
    assert parse_env_file(SUBNET_ENV)["FLANNEL_MTU"] == "1450"
    assert subnet_from_env(SUBNET_ENV) == ipaddress.IPv4Network("10.244.7.0/24")
    assert subnet_from_env("FLANNEL_MTU=1450\n") is None
    assert subnet_from_env("FLANNEL_SUBNET=bogus\n") is None


def test_node_lease_joins_subnet_env_and_the_etcd_lease() -> None:
    subnet = ipaddress.IPv4Network("10.244.7.0/24")
    kvs = {
        "/coreos.com/network/subnets/10.244.7.0-24": (
            '{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:07"}}'
        ),
        "/coreos.com/network/subnets/10.244.8.0-24": '{"PublicIP":"198.18.0.13"}',
    }
    lease = node_lease("n2", subnet, "/coreos.com/network", kvs)
    assert lease == NodeLease(
        "n2", subnet, ipaddress.IPv4Address("198.18.0.12"), "vxlan", "aa:bb:cc:dd:ee:07"
    )
    with pytest.raises(PeerDataError):
        node_lease("n9", ipaddress.IPv4Network("10.244.9.0/24"), "/coreos.com/network", kvs)


# --- state file -----------------------------------------------------------------------


def test_state_round_trips_through_the_file(tmp_path: object) -> None:
    state = (
        LabState("pfl", 2, 1, "vxlan")
        .with_namespace("pfl-ul")
        .with_process("etcd", ProcessRecord(41, "/run/pyflannel-lab/pfl/"))
        .with_process("flanneld-n1", ProcessRecord(42, "/run/pyflannel-lab/pfl/"))
        .without_process("etcd")
    )
    save(str(tmp_path), state)
    assert load(str(tmp_path)) == state
    assert load(str(tmp_path) + "/missing") is None


def test_malformed_state_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        LabState.from_json({"version": 1, "prefix": "pfl"})
    with pytest.raises(ConfigError):
        LabState.from_json({"version": 99})


# --- CLI rendering ------------------------------------------------------------------


def _cells() -> list[Cell]:
    return [
        Cell("n1p1", "n2p1", True, 0.25, 3, 3),
        Cell("n2p1", "n1p1", False, None, 5, 0),
    ]


def test_matrix_table_marks_failures() -> None:
    text = render_matrix(_cells())
    lines = text.splitlines()
    assert lines[0].split()[-2:] == ["n1p1", "n2p1"]
    assert "0.250 ms" in lines[1]
    assert "FAIL 0/5" in lines[2]


def test_up_json_has_the_documented_shape() -> None:
    lease = NodeLease(
        "n1", ipaddress.IPv4Network("10.244.3.0/24"),
        ipaddress.IPv4Address("198.18.0.11"), "vxlan", None,
    )
    doc = up_json([lease], _cells())
    assert doc["nodes"] == [{"name": "n1", "subnet": "10.244.3.0/24", "public_ip": "198.18.0.11"}]
    matrix = doc["matrix"]
    assert isinstance(matrix, list)
    assert {"src", "dst", "ok", "rtt_ms"} <= set(matrix[0])
    assert matrix[1]["ok"] is False


def test_parser_knows_the_lab_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["lab", "up", "--nodes", "2", "--prefix", "q1", "--down-after"])
    assert (args.nodes, args.prefix, args.down_after, args.backend) == (2, "q1", True, "vxlan")
    assert parser.parse_args(["lab", "down"]).prefix == "pfl"
    with pytest.raises(SystemExit):
        parser.parse_args(["lab", "up", "--backend", "ipip"])


# --- another flanneld binary on some nodes (a mixed cluster) ----------------------------


def test_flanneld_option_parses_node_equals_absolute_path() -> None:
    assert parse_flanneld_binaries(["n2=/opt/up/flanneld", "n3=/x/flanneld"]) == {
        "n2": "/opt/up/flanneld",
        "n3": "/x/flanneld",
    }
    assert parse_flanneld_binaries([]) == {}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["n2"], "NODE=PATH"),
        (["=/opt/flanneld"], "NODE=PATH"),
        (["n2="], "NODE=PATH"),
        (["n2=bin/flanneld"], "absolute"),
        (["n2=/a", "n2=/b"], "twice"),
    ],
)
def test_bad_flanneld_option_is_a_config_error(specs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_flanneld_binaries(specs)


def test_named_nodes_run_the_other_binary_with_the_same_upstream_flags() -> None:
    plan = make_plan("pfl", nodes=3, flanneld={"n2": "/opt/up/flanneld"})
    assert [n.flanneld for n in plan.nodes] == [None, "/opt/up/flanneld", None]
    ours = ["/venv/bin/flanneld"]
    mixed = flanneld_argv(flanneld_launcher(plan.nodes[1], ours), plan, plan.nodes[1])
    plain = flanneld_argv(flanneld_launcher(plan.nodes[0], ours), plan, plan.nodes[0])
    assert mixed[0] == "/opt/up/flanneld"
    assert plain[0] == "/venv/bin/flanneld"
    # the same flag set as our own flanneld gets on that node, nothing of ours added
    assert mixed[1:] == flanneld_argv([], plan, plan.nodes[1])


def test_flanneld_for_an_unknown_node_image_mode_or_network_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="n5"):
        make_plan("pfl", nodes=3, flanneld={"n5": "/opt/up/flanneld"})
    with pytest.raises(ConfigError, match="image"):
        make_plan("pfl", nodes=2, subnet_mgr="kube", image="localhost/x:1",
                  flanneld={"n2": "/opt/up/flanneld"})
    with pytest.raises(ConfigError, match="network-policy"):
        make_plan("pfl", nodes=2, subnet_mgr="kube", network_policy=True,
                  flanneld={"n2": "/opt/up/flanneld"})


def test_state_keeps_the_other_binaries_for_restarts(tmp_path: object) -> None:
    state = LabState("pfl", 2, 1, "vxlan", flanneld={"n2": "/opt/up/flanneld"})
    save(str(tmp_path), state)
    loaded = load(str(tmp_path))
    assert loaded == state
    assert loaded is not None and loaded.plan().nodes[1].flanneld == "/opt/up/flanneld"
    # a state file written before the option existed has no binaries
    doc = state.to_json()
    del doc["flanneld"]
    assert LabState.from_json(doc).flanneld == {}


def test_lab_up_parser_takes_repeated_flanneld_options() -> None:
    args = build_parser().parse_args(
        ["lab", "up", "--flanneld", "n2=/opt/a", "--flanneld", "n3=/opt/b"]
    )
    assert args.flanneld == ["n2=/opt/a", "n3=/opt/b"]
    assert build_parser().parse_args(["lab", "up"]).flanneld == []


# --- dual stack (--ip-family dual) -------------------------------------------------------


def test_dual_plan_has_an_ipv6_underlay_and_ipv6_network() -> None:
    plan = make_plan("pfl", nodes=2, backend="host-gw", ip_family="dual")
    assert str(plan.gateway6) == "fd00:198:18::1/64"
    assert [str(n.address6) for n in plan.nodes] == ["fd00:198:18::11/64", "fd00:198:18::12/64"]
    assert plan.net_conf() == (
        '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
        '"Backend":{"Type":"host-gw"}}'
    )
    ipv4 = make_plan("pfl", nodes=2, backend="host-gw")
    assert ipv4.gateway6 is None and all(n.address6 is None for n in ipv4.nodes)
    assert ipv4.net_conf() == '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}'


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip_family": "ipv6", "backend": "host-gw"}, "ipv6 needs --subnet-mgr kube"),
        ({"ip_family": "ipv5", "backend": "host-gw"}, "must be one of ipv4, ipv6, dual"),
        ({"ip_family": "dual", "backend": "udp"}, "IPv4-only, in upstream flannel too"),
        ({"ip_family": "ipv6", "backend": "wireguard"}, "ipv6 needs --subnet-mgr kube"),
        ({"ip_family": "ipv6", "backend": "vxlan"}, "ipv6 needs --subnet-mgr kube"),
        ({"ip_family": "dual", "backend": "host-gw", "subnet_mgr": "kube", "image": "x:1"},
         "--image"),
    ],
)
def test_families_the_lab_cannot_run_are_config_errors(
    kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_plan("pfl", nodes=2, **kwargs)  # type: ignore[arg-type]


def test_vxlan_runs_dual_stack_and_ipv6_only_in_the_lab() -> None:
    dual = make_plan("pfl", nodes=2, backend="vxlan", ip_family="dual")
    assert dual.net_conf() == ('{"Network":"10.244.0.0/16","EnableIPv6":true,'
                               '"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')
    only6 = make_plan("pfl", nodes=2, backend="vxlan", ip_family="ipv6", subnet_mgr="kube")
    assert only6.net_conf() == ('{"EnableIPv4":false,"EnableIPv6":true,'
                                '"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')


def test_state_keeps_the_ip_family() -> None:
    state = LabState("pfl", 2, 1, "host-gw", ip_family="dual")
    again = LabState.from_json(state.to_json())
    assert again == state and again.plan().ipv4 and again.plan().ipv6
    legacy = state.to_json()
    del legacy["ip_family"]
    assert LabState.from_json(legacy).ip_family == "ipv4"


def test_matrix_pings_each_family_between_pods_that_have_it() -> None:
    v4 = ipaddress.IPv4Address
    v6 = ipaddress.IPv6Address
    eps = [
        Endpoint("n1p1", "x-n1p1", v4("10.244.1.2")),
        Endpoint("n1p1", "x-n1p1", v6("fd00:10:244:1::2")),
        Endpoint("n2p1", "x-n2p1", v4("10.244.2.2")),
        Endpoint("n2p1", "x-n2p1", v6("fd00:10:244:2::2")),
    ]
    jobs = matrix_jobs(eps, count=3, interval=0.2, deadline=5)
    assert sorted((j.src.name, j.dst.name, j.argv[-1]) for j in jobs) == [
        ("n1p1", "n2p1", "10.244.2.2"), ("n1p1", "n2p1", "fd00:10:244:2::2"),
        ("n2p1", "n1p1", "10.244.1.2"), ("n2p1", "n1p1", "fd00:10:244:1::2"),
    ]


def test_cells_say_their_family_and_the_table_splits_by_family() -> None:
    cells = [*_cells(), Cell("n1p1", "n2p1", True, 0.5, 3, 3, family=6)]
    assert [c.to_json()["family"] for c in cells] == ["ipv4", "ipv4", "ipv6"]
    text = render_matrix(cells)
    assert text.startswith("IPv4:\n") and "\n\nIPv6:\n" in text
    assert "0.500 ms" in text.split("IPv6:")[1]
    assert "IPv4" not in render_matrix(_cells())  # one family: the table as before


def test_node_lease_finds_a_dual_stack_key() -> None:
    subnet = ipaddress.IPv4Network("10.244.7.0/24")
    kvs = {"/coreos.com/network/subnets/10.244.7.0-24&fd00:10:244:7::-64":
           '{"PublicIP":"198.18.0.12","PublicIPv6":"fd00:198:18::12","BackendType":"host-gw"}'}
    lease = node_lease("n2", subnet, "/coreos.com/network", kvs)
    assert (lease.public_ip, lease.backend_type) == (ipaddress.IPv4Address("198.18.0.12"), "host-gw")


def test_dual_nodes_get_an_ipv6_pod_cidr_after_the_ipv4_one() -> None:
    plan = make_plan("pfl", nodes=2, backend="host-gw", subnet_mgr="kube", ip_family="dual")
    assert [[str(c) for c in node_pod_cidrs(plan, n)] for n in plan.nodes] == [
        ["10.244.1.0/24", "fd00:10:244:1::/64"],
        ["10.244.2.0/24", "fd00:10:244:2::/64"],
    ]
    ipv4 = make_plan("pfl", nodes=1, subnet_mgr="kube")
    assert [str(c) for c in node_pod_cidrs(ipv4, ipv4.nodes[0])] == ["10.244.1.0/24"]


def test_ipv6_only_plan_leaves_ipv4_out_of_net_conf_and_pod_cidrs() -> None:
    plan = make_plan("pfl", nodes=1, backend="host-gw", subnet_mgr="kube", ip_family="ipv6")
    assert (plan.ipv4, plan.ipv6) == (False, True)
    assert plan.net_conf() == (
        '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
        '"Backend":{"Type":"host-gw"}}'
    )
    assert [str(c) for c in node_pod_cidrs(plan, plan.nodes[0])] == ["fd00:10:244:1::/64"]
    assert str(plan.nodes[0].address6) == "fd00:198:18::11/64"


def test_ipv6_only_lease_reads_the_ipv6_subnet_and_public_ipv6() -> None:
    env = "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
    subnet = subnet_from_env(env, 6)
    assert subnet == ipaddress.IPv6Network("fd00:10:244:1::/64")
    assert subnet_from_env(env) is None
    annotations = {
        "flannel.alpha.coreos.com/kube-subnet-manager": "true",
        "flannel.alpha.coreos.com/public-ip": "0.0.0.0",
        "flannel.alpha.coreos.com/public-ipv6": "fd00:198:18::11",
        "flannel.alpha.coreos.com/backend-type": "host-gw",
    }
    lease = node_lease_from_annotations("n1", subnet, annotations)
    assert lease.public_ip == ipaddress.IPv6Address("fd00:198:18::11")
    with pytest.raises(PeerDataError, match="public-ipv6"):
        node_lease_from_annotations(
            "n1", subnet, {**annotations, "flannel.alpha.coreos.com/public-ipv6": "10.0.0.1"}
        )
