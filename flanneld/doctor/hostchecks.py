"""The doctor's host and cluster checks: sysctls, firewall, CNI config, claims (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from backends.vxlan_state import previous_vtep_mac
from flanneld.doctor.checks import Context
from flanneld.doctor.model import CheckResult, Observations, Status
from flanneld.doctor.profile import Profile
from flanneld.trafficmgr import rules as R
from subnet.lease import Lease

CONNTRACK_FAIL = 0.9
CONNTRACK_WARN = 0.75
CHECKSUM_FIXED = (5, 7)  # kernels before 5.7 corrupt VXLAN checksums under SNAT
CNI_BRIDGE = "cni0"
CNI_EXTENSIONS = (".conf", ".conflist", ".json")


def sysctl_key(*parts: str) -> str:
    """A dotted sysctl name; dots inside a part (``flannel.1``) become ``/``, as sysctl(8) does."""
    return ".".join(part.replace(".", "/") for part in parts)


# --- forwarding, bridge netfilter, rp_filter, conntrack -----------------------------------


def check_forwarding(obs: Observations, version: int) -> CheckResult:
    key = "net.ipv4.ip_forward" if version == 4 else "net.ipv6.conf.all.forwarding"
    value = obs.kernel.sysctls.get(key)
    if value == "1":
        return CheckResult("host", key, Status.OK, "1")
    return CheckResult(
        "host", key, Status.FAIL, f"{value or 'unreadable'}: this node does not route pod traffic",
        f"sysctl -w {key}=1, and persist it in /etc/sysctl.d/ (something turned it off: "
        "a sysctl.d file, a security baseline, a VPN client)",
    )


def check_br_netfilter(obs: Observations) -> CheckResult:
    key = "net.bridge.bridge-nf-call-iptables"
    value = obs.kernel.sysctls.get(key)
    if value == "1":
        return CheckResult("host", key, Status.OK, "1")
    if value is None:
        return CheckResult(
            "host", key, Status.FAIL, "br_netfilter is not loaded",
            "modprobe br_netfilter and list it in /etc/modules-load.d/, or Service traffic "
            "between pods on one node bypasses kube-proxy",
        )
    return CheckResult("host", key, Status.FAIL, value,
                       f"sysctl -w {key}=1 (bridged pod traffic must pass iptables)")


def _effective_rp_filter(sysctls: Mapping[str, str], ifname: str) -> int:
    """The kernel uses the larger of ``all`` and the interface's own value."""
    def num(key: str) -> int:
        value = sysctls.get(key, "0")
        return int(value) if value.isdigit() else 0

    return max(num("net.ipv4.conf.all.rp_filter"),
               num(sysctl_key("net", "ipv4", "conf", ifname, "rp_filter")))


def rp_paths(obs: Observations, ctx: Context) -> Iterator[tuple[str, str]]:
    """(interface, source address) pairs: where flannel's packets arrive, from whom."""
    prof = ctx.profile
    peers4 = [peer for peer in ctx.peers if peer.subnet.version == 4]  # rp_filter is IPv4's
    if obs.external is not None:
        for peer in peers4:
            yield obs.external.name, str(peer.public_ip)
    if prof is not None and prof.device:
        for peer in peers4:
            yield prof.device, str(peer.gateway)
    if ctx.subnet is not None and obs.kernel.link(CNI_BRIDGE) is not None:
        yield CNI_BRIDGE, str(ctx.subnet.network_address + 2)


def check_rp_filter(obs: Observations, ctx: Context) -> CheckResult:
    name = "rp_filter"
    sysctls = obs.kernel.sysctls
    strict = sorted({dev for dev, _ in rp_paths(obs, ctx)
                     if _effective_rp_filter(sysctls, dev) == 1})
    if not strict:
        return CheckResult("host", name, Status.OK, "loose or off on flannel's interfaces")
    fix = ("set loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 "
           + " ".join(f"net.ipv4.conf.{sysctl_key(d)}.rp_filter=2" for d in strict)
           + " (and persist it in /etc/sysctl.d/)")
    asymmetric = [
        f"{src} arrives on {dev} but the route back leaves by {obs.kernel.route_out.get(src)!r}"
        for dev, src in rp_paths(obs, ctx)
        if dev in strict and obs.kernel.route_out.get(src, dev) != dev
    ]
    if asymmetric:
        return CheckResult("host", name, Status.FAIL,
                           f"strict on {', '.join(strict)}: {'; '.join(asymmetric)}", fix)
    return CheckResult(
        "host", name, Status.WARN,
        f"strict (1) on {', '.join(strict)}: routes are symmetric today, but packets are "
        "dropped as soon as they are not (second NIC, DirectRouting, a VIP)", fix,
    )


def check_conntrack(obs: Observations) -> CheckResult:
    name = "conntrack table"
    count = obs.kernel.sysctls.get("net.netfilter.nf_conntrack_count", "")
    limit = obs.kernel.sysctls.get("net.netfilter.nf_conntrack_max", "")
    if not (count.isdigit() and limit.isdigit() and int(limit)):
        return CheckResult("host", name, Status.OK, "conntrack not loaded")
    used = int(count) / int(limit)
    found = f"{count}/{limit} entries ({used:.0%})"
    fix = ("raise net.netfilter.nf_conntrack_max (new connections are dropped when it is "
           "full: 'nf_conntrack: table full' in dmesg)")
    if used >= CONNTRACK_FAIL:
        return CheckResult("host", name, Status.FAIL, found, fix)
    if used >= CONNTRACK_WARN:
        return CheckResult("host", name, Status.WARN, found, fix)
    return CheckResult("host", name, Status.OK, found)


# --- firewall rules ---------------------------------------------------------------------------


def _without_random_fully(line: str) -> str:
    return line.replace(" --random-fully", "")


def check_flannel_rules(obs: Observations, ctx: Context) -> CheckResult:
    """Our masquerade and forward rules, in the mode (iptables or nftables) in use."""
    name = "masquerade/forward rules"
    config = obs.store.config
    wanted = [w for w, on in (("masquerade", obs.settings.ip_masq),
                              ("forward", obs.settings.forward_rules)) if on]
    if not wanted:
        return CheckResult("host", name, Status.OK, "none asked for (--ip-masq off, "
                           "--iptables-forward-rules=false)")
    if config is None or config.network is None or ctx.subnet is None:
        return CheckResult("host", name, Status.SKIP, ctx.problem or "no IPv4 network")
    nets = R.FamilyNets(config.network, ctx.subnet)
    if config.enable_nftables:
        missing = _missing_nft_chains(obs, wanted)
        mode = "nftables"
    else:
        missing = _missing_ipt_rules(obs, nets, wanted)
        mode = "iptables"
    if missing is None:
        return CheckResult("host", name, Status.SKIP, f"cannot list {mode} rules: "
                           f"{obs.firewall.error or 'tool missing'}")
    if missing:
        return CheckResult(
            "host", name, Status.FAIL, f"{mode}: missing " + "; ".join(missing),
            "flanneld restores its rules every --iptables-resync seconds: if they stay "
            "missing, another tool (firewalld, a kube-proxy of the other iptables flavour) "
            "is removing them; read flanneld's log",
        )
    return CheckResult("host", name, Status.OK, f"{mode}: {' and '.join(wanted)} rules present")


def _missing_ipt_rules(obs: Observations, nets: R.FamilyNets,
                       wanted: Sequence[str]) -> list[str] | None:
    text = obs.firewall.iptables_save
    if text is None:
        return None
    present = {_without_random_fully(line.strip()) for line in text.splitlines()}
    expected: list[R.IptRule] = []
    if "masquerade" in wanted:
        expected += R.masq_rules(nets, random_fully=False)
    if "forward" in wanted:
        expected += R.forward_rules(nets.network)
    return [rule.text() for rule in expected if rule.text() not in present]


def _missing_nft_chains(obs: Observations, wanted: Sequence[str]) -> list[str] | None:
    ruleset = obs.firewall.nft_ruleset
    if ruleset is None:
        return None
    table = R.nft_table(4)
    chains = {R.NFT_POSTRTG: "masquerade", R.NFT_FORWARD: "forward"}
    counts: dict[str, int] = {}
    for item in ruleset:
        rule = item.get("rule")
        if isinstance(rule, dict) and rule.get("table") == table:
            counts[str(rule.get("chain"))] = counts.get(str(rule.get("chain")), 0) + 1
    return [f"chain ip {table} {chain} ({what})" for chain, what in chains.items()
            if what in wanted and not counts.get(chain)]


def _port_matches(right: Any, port: int) -> bool:
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict):
        if "set" in right:
            return any(_port_matches(item, port) for item in right["set"])
        if "range" in right:
            low, high = right["range"]
            return isinstance(low, int) and isinstance(high, int) and low <= port <= high
    if isinstance(right, list):
        return any(_port_matches(item, port) for item in right)
    return False


def nft_port_drops(ruleset: Sequence[Mapping[str, Any]], port: int) -> list[str]:
    """nft rules that drop or reject UDP to or from ``port`` (from ``nft -j list ruleset``)."""
    found = []
    for item in ruleset:
        rule = item.get("rule")
        if not isinstance(rule, dict):
            continue
        exprs = rule.get("expr") or []
        verdict = next((v for e in exprs if isinstance(e, dict)
                        for v in ("drop", "reject") if v in e), None)
        if verdict is None:
            continue
        if any(_matches_udp_port(e, port) for e in exprs if isinstance(e, dict)):
            where = f"{rule.get('family')} {rule.get('table')} {rule.get('chain')}"
            found.append(f"nft rule in {where} ({verdict}): nft delete rule {where} "
                         f"handle {rule.get('handle')}")
    return found


def _matches_udp_port(expr: Mapping[str, Any], port: int) -> bool:
    match = expr.get("match")
    if not isinstance(match, dict) or match.get("op", "==") not in ("==", "in"):
        return False
    payload = (match.get("left") or {}).get("payload") if isinstance(match.get("left"), dict) \
        else None
    if not isinstance(payload, dict) or payload.get("field") not in ("dport", "sport"):
        return False
    return payload.get("protocol") in ("udp", "th", None) and _port_matches(match.get("right"),
                                                                            port)


def iptables_port_drops(text: str, port: int) -> list[str]:
    """iptables-save rules that drop or reject UDP ``port``."""
    found = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        words = line.split()
        if not words or words[0] != "-A" or "udp" not in words:
            continue
        target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
        if target not in ("DROP", "REJECT"):
            continue
        ports = [words[i + 1] for i, w in enumerate(words[:-1])
                 if w in ("--dport", "--sport", "--dports", "--sports")]
        if any(_in_port_list(value, port) for value in ports):
            found.append(f"iptables -t {table} {line.strip().replace('-A', '-D', 1)}")
    return found


def _in_port_list(value: str, port: int) -> bool:
    for part in value.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and int(low) <= port <= int(high or low):
            return True
    return False


def check_encap_firewall(obs: Observations, prof: Profile | None) -> CheckResult:
    name = "firewall"
    if prof is None or not prof.port:
        return CheckResult("host", name, Status.OK, "no encapsulation port to keep open")
    drops: list[str] = []
    if obs.firewall.nft_ruleset is not None:
        drops += nft_port_drops(obs.firewall.nft_ruleset, prof.port)
    if obs.firewall.iptables_save is not None:
        drops += iptables_port_drops(obs.firewall.iptables_save, prof.port)
    if obs.firewall.nft_ruleset is None and obs.firewall.iptables_save is None:
        return CheckResult("host", name, Status.SKIP, obs.firewall.error or "no rule listing")
    if drops:
        return CheckResult(
            "host", name, Status.FAIL,
            f"{len(drops)} rule(s) drop {prof.encap}, which carries all pod traffic between "
            f"nodes: {'; '.join(drops)}",
            f"remove them, or allow {prof.encap} from the other nodes' public IPs before them",
        )
    return CheckResult("host", name, Status.OK, f"no rule drops {prof.encap}")


# --- checksum offload (upstream issue 1279) ---------------------------------------------------


def kernel_version(release: str) -> tuple[int, int] | None:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or "0")
    except (IndexError, ValueError):
        return None


def check_checksum_offload(obs: Observations, prof: Profile | None) -> CheckResult:
    name = "VXLAN checksum offload"
    if prof is None or prof.backend != "vxlan":
        return CheckResult("host", name, Status.OK, "not a vxlan node")
    version = kernel_version(obs.kernel.release)
    state = {True: "on", False: "off", None: "unknown"}[obs.kernel.tx_checksum]
    found = f"kernel {obs.kernel.release or '?'}, TX checksum offload on {prof.device} {state}"
    if version is not None and version < CHECKSUM_FIXED and obs.kernel.tx_checksum \
            and obs.settings.ip_masq:
        return CheckResult(
            "host", name, Status.FAIL, found + ": such kernels corrupt VXLAN UDP checksums of "
            "masqueraded traffic (Service and DNS traffic across nodes is dropped)",
            f"ethtool -K {prof.device} tx-checksum-ip-generic off (persist it with a udev "
            "rule), or upgrade the kernel to 5.7 or later",
        )
    return CheckResult("host", name, Status.OK, found)


# --- CNI config and cni0 ------------------------------------------------------------------


def check_cni_config(obs: Observations) -> CheckResult:
    name = "CNI config"
    cni = obs.cni
    if cni.missing and obs.settings.in_pod:
        return CheckResult("host", name, Status.SKIP,
                           f"{cni.path} is not mounted in this pod: pass --cni-conf-dir with "
                           "a mount of the host's directory, or run doctor on the host")
    if cni.error:
        return CheckResult("host", name, Status.FAIL, f"{cni.path}: {cni.error}",
                           "install flannel's conflist (kube-flannel.yml's install-cni "
                           "init container writes 10-flannel.conflist)")
    configs = sorted(f for f in cni.files if f.endswith(CNI_EXTENSIONS))
    ours = [f for f in configs if "flannel" in cni.types.get(f, ())]
    if not ours:
        return CheckResult("host", name, Status.FAIL,
                           f"no config of type flannel in {cni.path} ({', '.join(configs) or 'empty'})",
                           "install flannel's conflist (10-flannel.conflist)")
    first = configs[0]
    if first != ours[0]:
        types = ", ".join(cni.types.get(first, ())) or "unreadable"
        return CheckResult(
            "host", name, Status.FAIL,
            f"{first} (type {types}) sorts before {ours[0]}: the container runtime uses it "
            "for every new pod",
            f"remove {cni.path}/{first} (left by an earlier network plugin), then recreate "
            "the pods that started since",
        )
    return CheckResult("host", name, Status.OK, f"{first} is the first of {len(configs)}")


def check_cni_bridge(obs: Observations, ctx: Context) -> CheckResult:
    name = "cni0 address"
    bridge = obs.kernel.link(CNI_BRIDGE)
    if bridge is None:
        return CheckResult("host", name, Status.OK, "no cni0 yet (no pod on this node)")
    if ctx.subnet is None:
        return CheckResult("host", name, Status.SKIP, "no FLANNEL_SUBNET to compare with")
    v4 = [a for a in bridge.addresses if isinstance(a, ipaddress.IPv4Interface)]
    stray = [str(a) for a in v4 if a.ip not in ctx.subnet]
    if stray:
        return CheckResult(
            "host", name, Status.FAIL,
            f"cni0 has {', '.join(stray)}, outside this node's subnet {ctx.subnet}: new pods "
            "fail with 'cni0 already has an IP address different from ...'",
            "drain the node, delete the bridge (ip link delete cni0), and let the next pod "
            "recreate it with the current subnet",
        )
    return CheckResult("host", name, Status.OK, ", ".join(str(a) for a in v4) or "no address")


# --- 6. cluster view ------------------------------------------------------------------------


def _duplicates(leases: Sequence[Lease]) -> list[str]:
    found = []
    by_subnet: dict[str, list[str]] = {}
    by_mac: dict[str, list[str]] = {}
    for lease in leases:
        for subnet in lease.subnets():
            by_subnet.setdefault(str(subnet), []).append(lease.key)
        mac = previous_vtep_mac(lease.attrs.backend_data)
        if mac:
            by_mac.setdefault(mac, []).append(f"{lease.key} ({lease.attrs.public_ip})")
    found += [f"subnet {s} claimed by {len(k)} leases" for s, k in by_subnet.items() if len(k) > 1]
    found += [f"VTEP MAC {m} claimed by {', '.join(k)}" for m, k in by_mac.items() if len(k) > 1]
    return found


def check_claims(obs: Observations, ctx: Context) -> CheckResult:
    name = "unique claims"
    if obs.store.config is None:
        return CheckResult("cluster", name, Status.SKIP, obs.store.error)
    leases: list[Lease] = list(obs.store.leases)
    dupes = _duplicates(leases)
    if obs.settings.kube:
        cidrs: dict[str, list[str]] = {}
        for node in obs.store.nodes:
            for cidr in (node.pod_cidr, node.pod_cidr6):
                if cidr is not None:
                    cidrs.setdefault(str(cidr), []).append(node.name)
        dupes += [f"podCIDR {c} on nodes {', '.join(n)}" for c, n in cidrs.items() if len(n) > 1]
    if dupes:
        return CheckResult(
            "cluster", name, Status.FAIL, "; ".join(dupes),
            "only the oldest claim is routed: give the other node a new subnet (etcd: delete "
            "its lease and restart its flanneld) or a new VTEP MAC (delete flannel.1 there "
            "and restart its flanneld)",
        )
    return CheckResult("cluster", name, Status.OK,
                       f"{len(leases)} leases, no subnet or VTEP MAC claimed twice")


def kube_checks(obs: Observations, ctx: Context) -> list[CheckResult]:
    """podCIDR against our lease, and nodes flannel has not annotated."""
    if not obs.settings.kube:
        return []
    results = []
    mine = next((n for n in obs.store.nodes if n.name == obs.settings.node_name), None)
    if mine is None:
        results.append(CheckResult("cluster", "node podCIDR", Status.SKIP,
                                   f"node {obs.settings.node_name!r} not listed"))
    else:
        config = obs.store.config
        pairs = [(mine.pod_cidr, ctx.subnet, config is None or config.enable_ipv4),
                 (mine.pod_cidr6, ctx.subnet6, config is not None and config.enable_ipv6)]
        wanted = [(cidr, env) for cidr, env, enabled in pairs if enabled]
        if any(cidr is None or cidr != env for cidr, env in wanted):
            results.append(CheckResult(
                "cluster", "node podCIDR", Status.FAIL,
                f"node {mine.name} spec.podCIDRs "
                f"{', '.join(str(c) for c, _ in wanted)}, subnet.env "
                f"{', '.join(str(e) for _, e in wanted)}",
                "restart flanneld on this node so it takes the node's podCIDR, then recreate "
                "its pods (and delete cni0 if it kept the old subnet)",
            ))
        else:
            results.append(CheckResult("cluster", "node podCIDR", Status.OK,
                                       f"{mine.name}: {', '.join(str(c) for c, _ in wanted)} "
                                       "= lease"))
    bare = sorted(n.name for n in obs.store.nodes if not n.flannel)
    broken = sorted(f"{n.name} ({n.problem})" for n in obs.store.nodes if n.problem)
    if bare or broken:
        text = "; ".join(filter(None, [
            f"without flannel annotations: {', '.join(bare)}" if bare else "",
            f"unusable annotations: {', '.join(broken)}" if broken else "",
        ]))
        results.append(CheckResult(
            "cluster", "annotated nodes", Status.WARN, text,
            "pods on those nodes are unreachable: check the kube-flannel pod on each "
            "(kubectl -n kube-flannel get pods -o wide)",
        ))
    else:
        results.append(CheckResult("cluster", "annotated nodes", Status.OK,
                                   f"all {len(obs.store.nodes)} nodes run flannel"))
    return results


def host_checks(obs: Observations, ctx: Context) -> list[CheckResult]:
    """Checks 5 and 6: host settings, firewall, CNI config, cluster view."""
    results = [check_forwarding(obs, 4)]
    if obs.store.config is not None and obs.store.config.enable_ipv6:
        results.append(check_forwarding(obs, 6))
    results += [
        check_br_netfilter(obs),
        check_rp_filter(obs, ctx),
        check_conntrack(obs),
        check_flannel_rules(obs, ctx),
        check_encap_firewall(obs, ctx.profile),
        check_checksum_offload(obs, ctx.profile),
        check_cni_config(obs),
        check_cni_bridge(obs, ctx),
        check_claims(obs, ctx),
        *kube_checks(obs, ctx),
    ]
    return results
