"""flannelctl doctor's pure parts: every check on hand-made snapshots, parsers, rendering."""

from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import replace

import pytest

from flanneld.doctor import judge
from flanneld.doctor.checks import (
    check_config_pending,
    check_lease,
    check_mtu,
    check_path_mtu,
    check_peer_state,
    check_reachability,
    check_ready,
    check_refused,
    check_running,
    check_subnet_env,
    context,
)
from flanneld.doctor.gather import parse_metrics
from flanneld.doctor.hostchecks import (
    check_br_netfilter,
    check_checksum_offload,
    check_claims,
    check_cni_bridge,
    check_cni_config,
    check_conntrack,
    check_encap_firewall,
    check_flannel_rules,
    check_forwarding,
    check_rp_filter,
    iptables_port_drops,
    kube_checks,
    nft_port_drops,
)
from flanneld.doctor.model import (
    CheckResult,
    CniDir,
    FirewallView,
    HttpAnswer,
    KernelRoute,
    KernelView,
    Link,
    NodeView,
    Observations,
    PeerProbe,
    ProbeView,
    Settings,
    Status,
    StoreView,
)
from flanneld.doctor.probe import checksum, echo_request, parse_encap, parse_icmp
from flanneld.doctor.render import render_json, render_table
from flanneld.trafficmgr import rules as R
from subnet.lease import Lease, LeaseAttrs
from subnet.netconf import parse_net_config

pytestmark = pytest.mark.timeout(30)

NOW = 1_800_000_000.0
NET = ipaddress.IPv4Network("10.244.0.0/16")
OWN = ipaddress.IPv4Network("10.244.1.0/24")
PEERS = {  # subnet -> (public IP, VTEP MAC)
    "10.244.2.0/24": ("198.18.0.12", "0e:00:00:00:00:02"),
    "10.244.3.0/24": ("198.18.0.13", "0e:00:00:00:00:03"),
}
CONFIG = parse_net_config(b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')


def lease(subnet: str, public_ip: str, mac: str) -> Lease:
    data = json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":"))
    attrs = LeaseAttrs(ipaddress.IPv4Address(public_ip), None, "vxlan", data)
    return Lease(ipaddress.IPv4Network(subnet), None, attrs)


def ipt_save() -> str:
    nets = R.FamilyNets(NET, OWN)
    body = [r.text() for r in R.masq_rules(nets, random_fully=True)]
    body += [r.text() for r in R.forward_rules(NET)]
    return "*nat\n" + "\n".join(body) + "\nCOMMIT\n"


def healthy() -> Observations:
    leases = [lease(str(OWN), "198.18.0.11", "0e:00:00:00:00:01")]
    leases += [lease(s, ip, mac) for s, (ip, mac) in PEERS.items()]
    ul0 = Link(2, "ul0", "veth", 1500, "aa:00:00:00:00:01", True, None,
               (ipaddress.ip_interface("198.18.0.11/24"),))
    links = (
        ul0,
        Link(3, "flannel.1", "vxlan", 1450, "0e:00:00:00:00:01", True, None,
             (ipaddress.ip_interface("10.244.1.0/32"),)),
        Link(4, "cni0", "bridge", 1450, "aa:00:00:00:00:04", True, None,
             (ipaddress.ip_interface("10.244.1.1/24"),)),
        Link(5, "veth1", "veth", 1450, "aa:00:00:00:00:05", True, 4),
    )
    routes = tuple(
        KernelRoute(ipaddress.IPv4Network(s), ipaddress.IPv4Network(s).network_address,
                    "flannel.1", True)
        for s in PEERS
    )
    kernel = KernelView(
        links=links,
        routes=routes,
        neighbours={str(ipaddress.IPv4Network(s).network_address): mac
                    for s, (_, mac) in PEERS.items()},
        fdb={mac: ip for ip, mac in PEERS.values()},
        sysctls={
            "net.ipv4.ip_forward": "1",
            "net.bridge.bridge-nf-call-iptables": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.netfilter.nf_conntrack_count": "10",
            "net.netfilter.nf_conntrack_max": "1000",
        },
        tx_checksum=True,
        release="6.1.0-13-amd64",
    )
    probes = tuple(
        PeerProbe(f"{ipaddress.IPv4Network(s).network_address}-24", True, True, "", True,
                  True, True, False, 0.5)
        for s in PEERS
    )
    return Observations(
        settings=Settings("/run/flannel/subnet.env", "http://127.0.0.1:8081", True, True,
                          False, 3600.0, "/etc/cni/net.d"),
        now=NOW,
        subnet_env={"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
                    "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"},
        healthz=HttpAnswer(200, "flanneld is running"),
        readyz=HttpAnswer(200, "flanneld is ready\nlease 10.244.1.0-24"),
        metrics={"flannel_lease_expiry_timestamp_seconds": NOW + 86000},
        store=StoreView(CONFIG, tuple(leases)),
        external=ul0,
        external_ip=ipaddress.IPv4Address("198.18.0.11"),
        kernel=kernel,
        firewall=FirewallView(ipt_save(), ()),
        cni=CniDir("/etc/cni/net.d", ("10-flannel.conflist",),
                   {"10-flannel.conflist": ("flannel", "portmap")}),
        probes=ProbeView(probes, capture=True),
    )


def with_kernel(obs: Observations, **changes: object) -> Observations:
    return replace(obs, kernel=replace(obs.kernel, **changes))  # type: ignore[arg-type]


def sysctl(obs: Observations, key: str, value: str | None) -> Observations:
    values = dict(obs.kernel.sysctls)
    if value is None:
        values.pop(key, None)
    else:
        values[key] = value
    return with_kernel(obs, sysctls=values)


def statuses(results: list[CheckResult]) -> dict[str, Status]:
    return {r.name: r.status for r in results}


# --- the whole report --------------------------------------------------------------------


def test_a_healthy_node_passes_every_check() -> None:
    results = judge(healthy())
    assert [r for r in results if r.status is not Status.OK] == []
    names = [r.name for r in results]
    assert "peer 10.244.2.0/24 kernel state" in names and "peer 10.244.3.0/24 reachable" in names


def test_render_marks_problems_and_puts_the_fix_under_them() -> None:
    results = [
        CheckResult("host", "a", Status.OK, "fine"),
        CheckResult("host", "b", Status.FAIL, "broken", "do this"),
        CheckResult("host", "c", Status.WARN, "risky", "do that"),
    ]
    text = render_table(results, 0.5)
    assert "✓ a  fine" in text and "✗ b  broken" in text and "! c  risky" in text
    assert "fix: do this" in text and "fix: do that" in text
    assert "problems found: 1 ok, 1 warn, 1 fail (0.5 s)" in text
    doc = render_json(results, 0.5)
    assert doc["ok"] is False and len(doc["checks"]) == 3  # type: ignore[arg-type]
    assert render_json(results[:1], 0.1)["ok"] is True


# --- 1. daemon ---------------------------------------------------------------------------


def test_daemon_down_fails_running_and_ready() -> None:
    obs = replace(healthy(), healthz=HttpAnswer(None, error="Connection refused"),
                  readyz=HttpAnswer(None, error="Connection refused"))
    assert check_running(obs).status is Status.FAIL
    assert "Connection refused" in check_running(obs).found
    assert check_ready(obs).status is Status.FAIL
    assert check_config_pending(obs).status is Status.SKIP


def test_health_server_disabled_is_skipped_not_failed() -> None:
    obs = replace(healthy(), settings=replace(healthy().settings, healthz=""))
    assert check_running(obs).status is Status.SKIP
    assert check_ready(obs).status is Status.SKIP


def test_not_ready_shows_the_readyz_details() -> None:
    obs = replace(healthy(), readyz=HttpAnswer(503, "flanneld is not ready yet\nlease x; "
                                                    "peers not synced yet"))
    result = check_ready(obs)
    assert result.status is Status.FAIL and "peers not synced yet" in result.found


@pytest.mark.parametrize(("detail", "status"), [
    ("net-conf.json edit rejected: bad JSON; the running config is kept", Status.FAIL),
    ("net-conf.json changed and is valid; restart flanneld on every node", Status.WARN),
])
def test_pending_netconf_problem(detail: str, status: Status) -> None:
    obs = replace(healthy(), readyz=HttpAnswer(200, f"flanneld is ready\nlease y\n{detail}"))
    assert check_config_pending(obs).status is status


def test_lease_about_to_expire_fails() -> None:
    obs = replace(healthy(), metrics={"flannel_lease_expiry_timestamp_seconds": NOW + 600})
    result = check_lease(obs, context(obs))
    assert result.status is Status.FAIL and "expires in 10 min" in result.found


def test_lease_with_another_public_ip_fails() -> None:
    obs = replace(healthy(), external_ip=ipaddress.IPv4Address("198.18.0.50"))
    result = check_lease(obs, context(obs))
    assert result.status is Status.FAIL and "198.18.0.50" in result.found


def test_subnet_env_missing_or_inconsistent() -> None:
    gone = replace(healthy(), subnet_env=None, subnet_env_error="No such file or directory")
    assert check_subnet_env(gone, context(gone)).status is Status.FAIL
    env = {**healthy().subnet_env, "FLANNEL_MTU": "1500", "FLANNEL_IPMASQ": "false"}  # type: ignore[dict-item]
    odd = replace(healthy(), subnet_env=env)
    result = check_subnet_env(odd, context(odd))
    assert result.status is Status.FAIL
    assert "FLANNEL_MTU=1500 (overlay MTU 1450)" in result.found
    assert "FLANNEL_IPMASQ=false" in result.found


def test_with_flannel_v6_1_flannel_mtu_is_the_smaller_device_mtu() -> None:
    base = healthy()
    v6 = Link(6, "flannel-v6.1", "vxlan", 1430, "0e:00:00:00:06:01", True, None, ())
    kernel = replace(base.kernel, links=(*base.kernel.links, v6))
    dual = parse_net_config(b'{"Network":"10.244.0.0/16","EnableIPv6":true,'
                            b'"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}')
    old = replace(base, kernel=kernel, store=StoreView(dual, base.store.leases))
    result = check_subnet_env(old, context(old))
    assert "FLANNEL_MTU=1450 (overlay MTU 1430)" in result.found
    fixed = replace(old, subnet_env={**base.subnet_env, "FLANNEL_MTU": "1430"})  # type: ignore[dict-item]
    assert "FLANNEL_MTU" not in check_subnet_env(fixed, context(fixed)).found


def test_no_lease_for_our_subnet_fails() -> None:
    obs = replace(healthy(), store=StoreView(CONFIG, healthy().store.leases[1:]))
    assert check_lease(obs, context(obs)).status is Status.FAIL


def test_unreadable_store_is_named_and_the_peer_checks_say_why_they_are_skipped() -> None:
    obs = replace(healthy(), store=StoreView(error="etcd 10.0.0.1:2379 unreachable"))
    result = check_lease(obs, context(obs))
    assert result.status is Status.FAIL and "10.0.0.1:2379 unreachable" in result.found
    assert "store flags" in result.fix
    refused = check_refused(context(obs))
    assert refused.status is Status.SKIP and "unreachable" in refused.found


# --- 2. peers -------------------------------------------------------------------------------


def test_missing_neighbour_and_wrong_fdb_are_named() -> None:
    obs = healthy()
    neighbours = {k: v for k, v in obs.kernel.neighbours.items() if k != "10.244.2.0"}
    fdb = {**obs.kernel.fdb, "0e:00:00:00:00:02": "198.18.0.99"}
    broken = with_kernel(obs, neighbours=neighbours, fdb=fdb)
    ctx = context(broken)
    peer = next(p for p in ctx.peers if str(p.subnet) == "10.244.2.0/24")
    result = check_peer_state(broken, ctx, peer)
    assert result.status is Status.FAIL
    assert "neighbour 10.244.2.0 lladdr 0e:00:00:00:00:02" in result.found
    assert "found dst 198.18.0.99" in result.found


def test_refused_peer_is_reported_with_the_daemons_reason() -> None:
    obs = healthy()
    bad = lease("10.244.1.0/25", "198.18.0.20", "0e:00:00:00:00:20")  # overlaps ours
    obs = replace(obs, store=replace(obs.store, leases=(*obs.store.leases, bad)))
    result = check_refused(context(obs))
    assert result.status is Status.FAIL and "overlaps ours" in result.found


# --- 3. reachability ---------------------------------------------------------------------------


def _probe_outcome(**fields: object) -> CheckResult:
    obs = healthy()
    base = PeerProbe("10.244.2.0-24", False, False, "", True, True, False, False)
    probe = replace(base, **fields)  # type: ignore[arg-type]
    obs = replace(obs, probes=ProbeView((probe,), capture=True))
    ctx = context(obs)
    peer = next(p for p in ctx.peers if p.key == "10.244.2.0-24")
    return check_reachability(obs, ctx, peer)


def test_unreachable_public_ip_is_told_apart() -> None:
    result = _probe_outcome(underlay_ok=False)
    assert result.status is Status.FAIL
    assert "198.18.0.12 does not answer on the underlay" in result.found


def test_replies_arriving_but_dropped_here_point_at_this_nodes_firewall() -> None:
    result = _probe_outcome(encap_received=True)
    assert "arrive here, but are dropped on this node" in result.found
    assert "allow UDP 8472 in" in result.fix


def test_nothing_listening_on_the_peer_means_not_answering_on_the_overlay() -> None:
    result = _probe_outcome(port_refused=True)
    assert "nothing listens on UDP 8472" in result.found
    assert "not answering on the overlay" in result.fix


def test_silence_means_encapsulated_traffic_blocked_on_the_path() -> None:
    result = _probe_outcome()
    assert "no UDP 8472 reply came back" in result.found


def test_not_probed_is_a_skip() -> None:
    obs = replace(healthy(), probes=ProbeView(skipped="active probes need root"))
    ctx = context(obs)
    assert check_reachability(obs, ctx, ctx.peers[0]).status is Status.SKIP


# --- 4. MTU ---------------------------------------------------------------------------------------


def test_underlay_mtu_below_overlay_needs_fails() -> None:
    obs = healthy()
    low = replace(obs.external, mtu=1400)  # type: ignore[type-var]
    obs = replace(obs, external=low)
    result = check_mtu(obs, context(obs))
    assert result.status is Status.FAIL
    assert "ul0 MTU 1400 - vxlan overhead 50 = 1350" in result.found
    assert '"MTU": 1400' in result.fix


def test_path_mtu_failure_names_the_peers() -> None:
    obs = healthy()
    probes = (replace(obs.probes.peers[0], overlay_df_ok=False, df_error="MTU 1400"),
              obs.probes.peers[1])
    obs = replace(obs, probes=ProbeView(probes, capture=True))
    result = check_path_mtu(obs, context(obs))
    assert result.status is Status.FAIL and "10.244.2.0-24 (MTU 1400)" in result.found
    assert result.found.startswith("1/2 peers")
    silent = tuple(replace(p, overlay_ok=False, overlay_df_ok=False) for p in probes)
    obs = replace(obs, probes=ProbeView(silent, capture=True))
    assert check_path_mtu(obs, context(obs)).status is Status.SKIP


# --- 5. host -------------------------------------------------------------------------------------


def test_ip_forward_off_fails() -> None:
    result = check_forwarding(sysctl(healthy(), "net.ipv4.ip_forward", "0"), 4)
    assert result.status is Status.FAIL and "sysctl -w net.ipv4.ip_forward=1" in result.fix


def test_br_netfilter_missing_or_off() -> None:
    missing = sysctl(healthy(), "net.bridge.bridge-nf-call-iptables", None)
    assert "modprobe br_netfilter" in check_br_netfilter(missing).fix
    off = sysctl(healthy(), "net.bridge.bridge-nf-call-iptables", "0")
    assert check_br_netfilter(off).status is Status.FAIL


def test_strict_rp_filter_warns_and_fails_when_a_path_is_asymmetric() -> None:
    strict = sysctl(healthy(), "net.ipv4.conf.all.rp_filter", "1")
    symmetric = with_kernel(strict, route_out={"198.18.0.12": "ul0", "198.18.0.13": "ul0",
                                               "10.244.2.0": "flannel.1",
                                               "10.244.3.0": "flannel.1", "10.244.1.2": "cni0"})
    result = check_rp_filter(symmetric, context(symmetric))
    assert result.status is Status.WARN and "rp_filter=2" in result.fix
    asym = with_kernel(symmetric, route_out={**symmetric.kernel.route_out, "198.18.0.13": "eth9"})
    result = check_rp_filter(asym, context(asym))
    assert result.status is Status.FAIL and "198.18.0.13 arrives on ul0" in result.found
    per_device = sysctl(healthy(), "net.ipv4.conf.flannel/1.rp_filter", "1")
    assert "flannel.1" in check_rp_filter(per_device, context(per_device)).found


def test_loose_rp_filter_is_fine() -> None:
    loose = sysctl(healthy(), "net.ipv4.conf.all.rp_filter", "2")
    assert check_rp_filter(loose, context(loose)).status is Status.OK


@pytest.mark.parametrize(("count", "status"), [("100", Status.OK), ("800", Status.WARN),
                                               ("950", Status.FAIL)])
def test_conntrack_pressure(count: str, status: Status) -> None:
    assert check_conntrack(sysctl(healthy(), "net.netfilter.nf_conntrack_count",
                                  count)).status is status


def test_missing_masquerade_rule_is_named() -> None:
    obs = healthy()
    text = "\n".join(ln for ln in ipt_save().splitlines() if "MASQUERADE" not in ln)
    obs = replace(obs, firewall=FirewallView(text, ()))
    result = check_flannel_rules(obs, context(obs))
    assert result.status is Status.FAIL and "-j MASQUERADE" in result.found


def test_nft_mode_needs_our_chains() -> None:
    config = parse_net_config(b'{"Network":"10.244.0.0/16","EnableNFTables":true,'
                              b'"Backend":{"Type":"vxlan"}}')
    obs = healthy()
    obs = replace(obs, store=replace(obs.store, config=config))
    rules = tuple({"rule": {"family": "ip", "table": "flannel-ipv4", "chain": c}}
                  for c in ("postrtg", "postrtg"))
    obs = replace(obs, firewall=FirewallView(None, rules))
    result = check_flannel_rules(obs, context(obs))
    assert result.status is Status.FAIL and "forward" in result.found


NFT_DROP = {
    "rule": {
        "family": "inet", "table": "fw", "chain": "input", "handle": 7,
        "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": {"set": [4789, 8472]}}},
            {"drop": None},
        ],
    }
}


def test_firewall_rules_dropping_the_vxlan_port_are_named() -> None:
    assert nft_port_drops([NFT_DROP], 8472) == [
        "nft rule in inet fw input (drop): nft delete rule inet fw input handle 7"
    ]
    assert nft_port_drops([NFT_DROP], 8285) == []
    saved = ("*filter\n-A INPUT -p udp -m udp --dport 8470:8480 -j DROP\n"
             "-A INPUT -p udp -m udp --dport 8472 -j ACCEPT\nCOMMIT\n")
    assert iptables_port_drops(saved, 8472) == [
        "iptables -t filter -D INPUT -p udp -m udp --dport 8470:8480 -j DROP"
    ]
    obs = replace(healthy(), firewall=FirewallView(ipt_save(), (NFT_DROP,)))
    result = check_encap_firewall(obs, context(obs).profile)
    assert result.status is Status.FAIL and "handle 7" in result.found


def test_checksum_offload_bug_only_on_old_kernels() -> None:
    obs = healthy()
    assert check_checksum_offload(obs, context(obs).profile).status is Status.OK
    old = with_kernel(obs, release="4.18.0-305.el8.x86_64")
    result = check_checksum_offload(old, context(old).profile)
    assert result.status is Status.FAIL and "tx-checksum-ip-generic off" in result.fix
    off = with_kernel(old, tx_checksum=False)
    assert check_checksum_offload(off, context(off).profile).status is Status.OK


def test_a_foreign_cni_config_sorting_first_fails() -> None:
    cni = CniDir("/etc/cni/net.d", ("00-old.conf", "10-flannel.conflist"),
                 {"00-old.conf": ("bridge",), "10-flannel.conflist": ("flannel",)})
    result = check_cni_config(replace(healthy(), cni=cni))
    assert result.status is Status.FAIL and "remove /etc/cni/net.d/00-old.conf" in result.fix
    empty = check_cni_config(replace(healthy(), cni=CniDir("/etc/cni/net.d")))
    assert empty.status is Status.FAIL
    gone = CniDir("/etc/cni/net.d", error="No such file or directory", missing=True)
    assert check_cni_config(replace(healthy(), cni=gone)).status is Status.FAIL
    in_pod = replace(healthy(), cni=gone, settings=replace(healthy().settings, in_pod=True))
    assert check_cni_config(in_pod).status is Status.SKIP


def test_cni0_with_an_old_subnet_fails() -> None:
    obs = healthy()
    links = tuple(
        replace(lk, addresses=(*lk.addresses, ipaddress.ip_interface("10.244.9.1/24")))
        if lk.name == "cni0" else lk
        for lk in obs.kernel.links
    )
    obs = with_kernel(obs, links=links)
    result = check_cni_bridge(obs, context(obs))
    assert result.status is Status.FAIL and "10.244.9.1/24" in result.found
    assert "ip link delete cni0" in result.fix


# --- 6. cluster ----------------------------------------------------------------------------------


def test_two_leases_with_one_vtep_mac_fail() -> None:
    obs = healthy()
    twin = lease("10.244.4.0/24", "198.18.0.14", "0e:00:00:00:00:02")
    obs = replace(obs, store=replace(obs.store, leases=(*obs.store.leases, twin)))
    result = check_claims(obs, context(obs))
    assert result.status is Status.FAIL and "VTEP MAC 0e:00:00:00:00:02" in result.found


def test_kube_view_compares_pod_cidr_and_lists_bare_nodes() -> None:
    obs = healthy()
    nodes = (
        NodeView("n1", ipaddress.IPv4Network("10.244.7.0/24"), True, obs.store.leases[0]),
        NodeView("n2", ipaddress.IPv4Network("10.244.2.0/24"), False),
    )
    obs = replace(obs, settings=replace(obs.settings, kube=True, node_name="n1"),
                  store=replace(obs.store, nodes=nodes))
    found = statuses(kube_checks(obs, context(obs)))
    assert found == {"node podCIDR": Status.FAIL, "annotated nodes": Status.WARN}


# --- parsers ------------------------------------------------------------------------------------


def test_parse_metrics_reads_unlabelled_samples() -> None:
    text = ("# HELP x\nflannel_lease_expiry_timestamp_seconds 1.7e+09\n"
            'flannel_lease_events_total{kind="added"} 3.0\nbad line\n')
    assert parse_metrics(text) == {"flannel_lease_expiry_timestamp_seconds": 1.7e9}


def _ipv4(proto: int, src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


def test_echo_requests_carry_a_valid_checksum_and_replies_are_matched() -> None:
    request = echo_request(0x1234, 7, 56)
    assert checksum(request) == 0 and len(request) == 64
    reply = bytes([0, 0]) + request[2:]
    event = parse_icmp(_ipv4(1, "10.244.2.0", "10.244.1.0", reply))
    assert event is not None and (event.kind, event.ident, event.seq) == ("reply", 0x1234, 7)
    quoted = _ipv4(1, "10.244.1.0", "10.244.2.0", request)[:28]
    frag = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + quoted
    event = parse_icmp(_ipv4(1, "198.18.0.1", "10.244.1.0", frag))
    assert event is not None and (event.kind, event.seq, event.mtu) == ("frag", 7, 1400)


def test_encapsulated_packets_are_recognised_and_our_port_probe_is_not() -> None:
    vxlan = struct.pack("!HHHH", 40000, 8472, 16, 0) + b"\x08\x00\x00\x00\x00\x00\x01\x00"
    packet = parse_encap(_ipv4(17, "198.18.0.12", "198.18.0.11", vxlan), False, 8472)
    assert packet is not None and packet.peer == "198.18.0.12" and not packet.outgoing
    sent = parse_encap(_ipv4(17, "198.18.0.11", "198.18.0.12", vxlan), True, 8472)
    assert sent is not None and sent.peer == "198.18.0.12"
    probe = struct.pack("!HHHH", 40000, 8472, 16, 0) + b"\x00" * 8
    assert parse_encap(_ipv4(17, "198.18.0.11", "198.18.0.12", probe), True, 8472) is None


# --- IPv6: dual-stack and IPv6-only wireguard ---------------------------------------------

WG_KEY = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="


def wg_lease(n: int, v4: bool = True) -> Lease:
    data = json.dumps({"PublicKey": WG_KEY.replace("AQ", f"A{n}", 1), "Port": 51820},
                      separators=(",", ":"))
    data6 = data.replace("51820", "51821")
    return Lease(
        ipaddress.IPv4Network(f"10.244.{n}.0/24") if v4 else None,
        ipaddress.IPv6Network(f"fd00:10:244:{n}::/64"),
        LeaseAttrs(ipaddress.IPv4Address(f"198.18.0.1{n}" if v4 else "0.0.0.0"),
                   ipaddress.IPv6Address(f"fd00:198:18::1{n}"), "wireguard",
                   data if v4 else None, data6),
    )


def wg_node(v4: bool = True) -> Observations:
    """A healthy wireguard node of a dual-stack (or IPv6-only) cluster, Mode separate."""
    conf = ('{"Network":"10.244.0.0/16",' if v4 else '{"EnableIPv4":false,') + (
        '"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}')
    obs = healthy()
    devices = [Link(6, "flannel-wg-v6", "", 1420, "", True, None)]
    if v4:
        devices.append(Link(7, "flannel-wg", "", 1420, "", True, None))
    env = {"FLANNEL_IPV6_NETWORK": "fd00:10:244::/56", "FLANNEL_IPV6_SUBNET": "fd00:10:244:1::1/64",
           "FLANNEL_MTU": "1420", "FLANNEL_IPMASQ": "true"}
    if v4:
        env.update(FLANNEL_NETWORK="10.244.0.0/16", FLANNEL_SUBNET="10.244.1.1/24")
    links = tuple(lk for lk in obs.kernel.links if lk.name != "flannel.1") + tuple(devices)
    return replace(
        obs, subnet_env=env,
        store=StoreView(parse_net_config(conf.encode()), tuple(wg_lease(n, v4) for n in (1, 2))),
        external_ip=ipaddress.IPv4Address("198.18.0.11") if v4 else None,
        external_ip6=ipaddress.IPv6Address("fd00:198:18::11"),
        kernel=replace(obs.kernel, links=tuple(
            replace(lk, mtu=1420) if lk.name in ("cni0", "veth1") else lk for lk in links)),
    )


def test_dual_stack_wireguard_node_checks_both_families() -> None:
    obs = wg_node()
    ctx = context(obs)
    assert ctx.profile is not None and (ctx.profile.device, ctx.profile.device6) == (
        "flannel-wg", "flannel-wg-v6")
    assert sorted(str(p.subnet) for p in ctx.peers) == ["10.244.2.0/24", "fd00:10:244:2::/64"]
    lease_line = check_lease(obs, ctx)
    assert lease_line.status is Status.OK and "public IPv6 fd00:198:18::11" in lease_line.found
    env_line = check_subnet_env(obs, ctx)
    assert env_line.status is Status.OK and "fd00:10:244:1::1/64" in env_line.found
    v6 = next(p for p in ctx.peers if p.subnet.version == 6)
    state = check_peer_state(obs, ctx, v6)
    assert state.status is Status.SKIP and "on flannel-wg-v6" in state.found
    assert check_reachability(obs, ctx, v6).status is Status.SKIP
    assert check_mtu(obs, ctx).status is Status.OK


def test_missing_flannel_wg_v6_fails_the_ipv6_peer_only() -> None:
    obs = wg_node()
    obs = replace(obs, kernel=replace(obs.kernel, links=tuple(
        lk for lk in obs.kernel.links if lk.name != "flannel-wg-v6")))
    ctx = context(obs)
    results = {str(p.subnet): check_peer_state(obs, ctx, p) for p in ctx.peers}
    assert results["fd00:10:244:2::/64"].status is Status.FAIL
    assert "no flannel-wg-v6 device" in results["fd00:10:244:2::/64"].found
    assert results["10.244.2.0/24"].status is Status.SKIP
    assert check_mtu(obs, ctx).status is Status.FAIL


def test_ipv6_only_node_finds_its_lease_by_the_ipv6_subnet() -> None:
    obs = wg_node(v4=False)
    ctx = context(obs)
    assert ctx.own is not None and ctx.own.key == "fd00:10:244:1::-64"
    assert ctx.profile is not None and ctx.profile.device == "flannel-wg-v6"
    assert [str(p.subnet) for p in ctx.peers] == ["fd00:10:244:2::/64"]
    assert check_lease(obs, ctx).status is Status.OK
    assert check_subnet_env(obs, ctx).status is Status.OK


def test_wrong_ipv6_subnet_env_and_public_ipv6_fail() -> None:
    obs = wg_node()
    env = dict(obs.subnet_env or {})
    env["FLANNEL_IPV6_NETWORK"] = "fd00:99::/56"
    bad = replace(obs, subnet_env=env, external_ip6=ipaddress.IPv6Address("fd00:198:18::99"))
    ctx = context(bad)
    assert "FLANNEL_IPV6_NETWORK=fd00:99::/56" in check_subnet_env(bad, ctx).found
    lease_line = check_lease(bad, ctx)
    assert lease_line.status is Status.FAIL and "IPv6 address is fd00:198:18::99" in lease_line.found
