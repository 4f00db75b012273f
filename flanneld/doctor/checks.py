"""The doctor's checks of the daemon, its peers and the overlay: pure functions.

Each check reads the :class:`~flanneld.doctor.model.Observations` snapshot
(and the :class:`Context` derived from it once) and returns result lines;
none does I/O, so each is unit-tested on hand-made snapshots.  Host
settings and the cluster view live in :mod:`flanneld.doctor.hostchecks`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from backends.model import Skipped
from flanneld.doctor.model import CheckResult, Observations, PeerProbe, Status
from flanneld.doctor.profile import Peer, Profile, own_lease, profile, split_peers
from subnet.errors import ConfigError
from subnet.lease import Lease

N = TypeVar("N", ipaddress.IPv4Network, ipaddress.IPv6Network)

METRIC_LEASE_EXPIRY = "flannel_lease_expiry_timestamp_seconds"
NETCONF_DETAIL = "net-conf.json"


@dataclass(frozen=True, slots=True)
class Context:
    """What several checks derive from the snapshot: backend, our lease, the peers."""

    profile: Profile | None
    subnet: ipaddress.IPv4Network | None  # FLANNEL_SUBNET, masked
    own: Lease | None
    peers: tuple[Peer, ...]
    refused: tuple[Skipped, ...]
    problem: str  # why profile/own/peers are missing
    subnet6: ipaddress.IPv6Network | None = None  # FLANNEL_IPV6_SUBNET, masked


def _network_of(env: Mapping[str, str] | None, key: str, kind: type[N]) -> N | None:
    """subnet.env's ``key`` as a network of ``kind``; None when absent, invalid or of
    the other family."""
    text = (env or {}).get(key, "")
    try:
        found = ipaddress.ip_network(text, strict=False) if text else None
    except ValueError:
        return None
    return found if isinstance(found, kind) else None


def context(obs: Observations) -> Context:
    subnet = _network_of(obs.subnet_env, "FLANNEL_SUBNET", ipaddress.IPv4Network)
    subnet6 = _network_of(obs.subnet_env, "FLANNEL_IPV6_SUBNET", ipaddress.IPv6Network)
    config = obs.store.config
    if config is None:
        return Context(None, subnet, None, (), (), f"lease store not read: {obs.store.error}",
                       subnet6)
    try:
        prof = profile(config)
    except ConfigError as err:
        return Context(None, subnet, None, (), (), str(err), subnet6)
    own = own_lease(obs.store.leases, subnet, subnet6)
    if own is None:
        why = ("no FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET in subnet.env"
               if subnet is None and subnet6 is None else f"no lease for {subnet or subnet6}")
        return Context(prof, subnet, None, (), (), why, subnet6)
    peers, refused = split_peers(prof, own, obs.store.leases, config)
    return Context(prof, subnet, own, tuple(peers), tuple(refused), "", subnet6)


# --- 1. the daemon ------------------------------------------------------------------


def check_running(obs: Observations) -> CheckResult:
    name = "flanneld running"
    if not obs.settings.healthz:
        return CheckResult("daemon", name, Status.SKIP,
                           "health server disabled (--healthz-port=0): cannot ask flanneld")
    answer = obs.healthz
    if answer.status == 200:
        return CheckResult("daemon", name, Status.OK, f"/healthz on {obs.settings.healthz}")
    found = f"no answer on {obs.settings.healthz}/healthz ({answer.error or answer.status})"
    return CheckResult(
        "daemon", name, Status.FAIL, found,
        "start flanneld on this node (kube: check the kube-flannel pod here; systemd: "
        "systemctl start flanneld) and read its log for why it stopped",
    )


def check_ready(obs: Observations) -> CheckResult:
    name = "flanneld ready"
    if not obs.settings.healthz:
        return CheckResult("daemon", name, Status.SKIP, "health server disabled")
    answer = obs.readyz
    if answer.status is None:
        return CheckResult("daemon", name, Status.FAIL, "flanneld is not running",
                           "start flanneld (see the line above)")
    lines = answer.body.splitlines()
    if answer.status == 200:
        return CheckResult("daemon", name, Status.OK, "; ".join(lines[1:]) or "ready")
    return CheckResult(
        "daemon", name, Status.FAIL, f"/readyz {answer.status}: {'; '.join(lines)}",
        "read flanneld's log: it has no lease yet or has not programmed its peers "
        "(lease store unreachable, no pod CIDR, subnets exhausted)",
    )


def check_config_pending(obs: Observations) -> CheckResult:
    name = "net-conf.json"
    if obs.readyz.status is None:
        return CheckResult("daemon", name, Status.SKIP, "flanneld did not answer")
    pending = [ln for ln in obs.readyz.body.splitlines()[1:] if NETCONF_DETAIL in ln]
    if not pending:
        return CheckResult("daemon", name, Status.OK, "no pending configuration problem")
    text = "; ".join(pending)
    if "rejected" in text or "gone" in text:
        return CheckResult("daemon", name, Status.FAIL, text,
                           "fix net-conf.json (check it with: flannelctl netconf validate FILE)")
    return CheckResult("daemon", name, Status.WARN, text,
                       "restart flanneld on every node to apply the edited net-conf.json")


def check_lease(obs: Observations, ctx: Context) -> CheckResult:
    name = "lease"
    if obs.store.config is None:
        return CheckResult(
            "daemon", name, Status.FAIL, f"cannot read the lease store: {obs.store.error}",
            "give doctor flanneld's own store flags (or FLANNELD_* variables) and check that "
            "etcd / the API server is reachable from this node",
        )
    if ctx.own is None:
        return CheckResult(
            "daemon", name, Status.FAIL, ctx.problem,
            "flanneld holds no lease matching subnet.env: read its log (store reachable? "
            "subnets exhausted?) and restart it",
        )
    attrs = ctx.own.attrs
    found = f"{ctx.own.key}, public IP {attrs.public_ip}"
    if ctx.own.ipv6_subnet is not None:
        found += f", public IPv6 {attrs.public_ipv6}"
    for subnet, advertised, node, what, sends, flag in (
        (ctx.own.subnet, attrs.public_ip, obs.external_ip, "address",
         "send to the lease's public IP", "--public-ip"),
        (ctx.own.ipv6_subnet, attrs.public_ipv6, obs.external_ip6, "IPv6 address",
         "send IPv6 to the lease's PublicIPv6", "--public-ipv6"),
    ):
        if subnet is not None and node is not None and advertised != node:
            return CheckResult(
                "daemon", name, Status.FAIL, f"{found}, but this node's {what} is {node}",
                f"peers {sends}: restart flanneld with the right --iface or {flag} so it "
                f"re-advertises this node's {what}",
            )
    expiry = obs.metrics.get(METRIC_LEASE_EXPIRY)
    if expiry:
        left = expiry - obs.now
        if left < obs.settings.renew_margin_s:
            return CheckResult(
                "daemon", name, Status.FAIL, f"{found}, expires in {max(left, 0) / 60:.0f} min "
                "(renewal is overdue)",
                "flanneld cannot renew its lease: check its log for store errors",
            )
        found += f", expires in {left / 3600:.1f} h"
    return CheckResult("daemon", name, Status.OK, found)


def check_subnet_env(obs: Observations, ctx: Context) -> CheckResult:
    name = "subnet.env"
    path = obs.settings.subnet_file
    if obs.subnet_env is None:
        return CheckResult(
            "daemon", name, Status.FAIL, f"{path}: {obs.subnet_env_error or 'missing'}",
            "flanneld writes it once it holds a lease: start flanneld or read its log",
        )
    env = obs.subnet_env
    own, config = ctx.own, obs.store.config
    network = config.network if config is not None else None
    network6 = config.ipv6_network if config is not None and config.enable_ipv6 else None
    wrong = [
        f"{key}={env.get(key)} ({source} {expected})"
        for key, applies, found, expected, source in (
            ("FLANNEL_SUBNET", own is not None, ctx.subnet, own.subnet if own else None, "lease"),
            ("FLANNEL_NETWORK", network is not None,
             _network_of(env, "FLANNEL_NETWORK", ipaddress.IPv4Network), network, "net-conf"),
            ("FLANNEL_IPV6_SUBNET", own is not None, ctx.subnet6, own.ipv6_subnet if own else None,
             "lease"),
            ("FLANNEL_IPV6_NETWORK", network6 is not None,
             _network_of(env, "FLANNEL_IPV6_NETWORK", ipaddress.IPv6Network), network6,
             "net-conf"),
        )
        if applies and found != expected
    ]
    device_mtu = _overlay_mtu(obs, ctx.profile)
    if device_mtu is not None and env.get("FLANNEL_MTU") != str(device_mtu):
        wrong.append(f"FLANNEL_MTU={env.get('FLANNEL_MTU')} (overlay MTU {device_mtu})")
    masq = "true" if obs.settings.ip_masq else "false"
    if env.get("FLANNEL_IPMASQ") != masq:
        wrong.append(f"FLANNEL_IPMASQ={env.get('FLANNEL_IPMASQ')} (--ip-masq={masq})")
    if wrong:
        return CheckResult("daemon", name, Status.FAIL, "; ".join(wrong),
                           "restart flanneld so it rewrites subnet.env, then recreate the pods "
                           "on this node")
    subnets = ", ".join(env[k] for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if k in env)
    return CheckResult("daemon", name, Status.OK,
                       f"subnet {subnets or '?'}, MTU {env.get('FLANNEL_MTU')}, "
                       f"masquerade {env.get('FLANNEL_IPMASQ')}")


def _overlay_mtu(obs: Observations, prof: Profile | None) -> int | None:
    """The MTU pods should get: the overlay devices' smallest (vxlan: ``flannel.1`` and,
    with IPv6, ``flannel-v6.1``), or the underlay's for host-gw."""
    if prof is None:
        return None
    if prof.device:
        devices = [obs.kernel.link(name) for name in (prof.device, prof.device6) if name]
        mtus = [device.mtu for device in devices if device is not None]
        return min(mtus) if mtus else None
    return obs.external.mtu if obs.external is not None else None


# --- 2. peers in the kernel ------------------------------------------------------------


def check_peer_state(obs: Observations, ctx: Context, peer: Peer) -> CheckResult:
    """The route (and for vxlan the neighbour and FDB entry) the daemon owes ``peer``."""
    name = f"peer {peer.subnet} kernel state"
    prof = ctx.profile
    kernel = obs.kernel
    route = next((r for r in kernel.routes if r.dst == peer.subnet), None)
    missing = []
    device = prof.device_of(peer.subnet.version) if prof is not None else ""
    if prof is not None and prof.backend == "vxlan":
        direct = route is not None and route.gateway == peer.public_ip
        if not direct:
            if route is None or route.gateway != peer.gateway or route.dev != device:
                missing.append(f"route {peer.subnet} via {peer.gateway} dev {device} onlink"
                               + (f" (found via {route.gateway} dev {route.dev})" if route else ""))
            mac = kernel.neighbours.get(str(peer.gateway))
            if mac != peer.vtep_mac:
                missing.append(f"neighbour {peer.gateway} lladdr {peer.vtep_mac}"
                               + (f" (found {mac})" if mac else ""))
            dst = kernel.fdb.get(peer.vtep_mac or "")
            if dst != str(peer.public_ip):
                missing.append(f"fdb {peer.vtep_mac} dst {peer.public_ip}"
                               + (f" (found dst {dst})" if dst else ""))
    elif prof is not None and prof.backend == "host-gw":
        if route is None or route.gateway != peer.public_ip:
            missing.append(f"route {peer.subnet} via {peer.public_ip}")
    elif prof is not None and prof.backend == "wireguard":
        if kernel.link(device) is None:
            return CheckResult(
                "peers", name, Status.FAIL,
                f"no {device} device (it carries IPv{peer.subnet.version} pod traffic)",
                "flanneld recreates it (restarting wireguard-go) on its next resync: if it "
                "stays missing, read flanneld's log",
            )
        return CheckResult("peers", name, Status.SKIP, f"{peer.public_ip} on {device} "
                           "(wireguard peers live in the device; not read)")
    else:
        return CheckResult("peers", name, Status.OK,
                           f"{peer.public_ip} (udp: the daemon forwards, no per-peer route)")
    if missing:
        return CheckResult(
            "peers", name, Status.FAIL, "missing: " + "; ".join(missing),
            "flanneld re-programs peers on every resync: if this stays, read its log for "
            "netlink errors (another agent may be fighting over these entries)",
        )
    what = "route" if prof.backend == "host-gw" else "route, neighbour, FDB"
    return CheckResult("peers", name, Status.OK, f"{what} -> {peer.public_ip}")


def check_refused(ctx: Context) -> CheckResult:
    name = "refused peers"
    if ctx.own is None:
        return CheckResult("peers", name, Status.SKIP, ctx.problem)
    if not ctx.refused:
        return CheckResult("peers", name, Status.OK,
                           f"none; {len({p.key for p in ctx.peers})} peer(s) programmed")
    listed = "; ".join(f"{s.key}: {s.reason}" for s in ctx.refused)
    return CheckResult(
        "peers", name, Status.FAIL, f"{len(ctx.refused)} lease(s) refused: {listed}",
        "pods behind these leases are unreachable from here: fix or delete the bad leases "
        "(etcd: etcdctl del <prefix>/subnets/<key>; kube: the node's flannel annotations)",
    )


# --- 3. on-wire reachability --------------------------------------------------------------


def check_reachability(obs: Observations, ctx: Context, peer: Peer) -> CheckResult:
    name = f"peer {peer.subnet} reachable"
    if peer.subnet.version == 6:
        return CheckResult("reachability", name, Status.SKIP,
                           "not probed: the probe speaks IPv4 ICMP")
    probe = next((p for p in obs.probes.peers if p.key == peer.key), None)
    if probe is None or probe.overlay_ok is None:
        return CheckResult("reachability", name, Status.SKIP,
                           obs.probes.skipped or "not probed")
    if probe.overlay_ok:
        rtt = f" in {probe.rtt_ms:.2f} ms" if probe.rtt_ms is not None else ""
        return CheckResult("reachability", name, Status.OK,
                           f"overlay echo answered{rtt}")
    found, fix = diagnose_unreachable(probe, peer, ctx.profile, obs.probes.capture)
    return CheckResult("reachability", name, Status.FAIL, found, fix)


def diagnose_unreachable(
    probe: PeerProbe, peer: Peer, prof: Profile | None, captured: bool
) -> tuple[str, str]:
    """Why the overlay echo to ``peer`` failed, from the second-stage probes."""
    encap = prof.encap if prof is not None else "encapsulated traffic"
    head = f"no answer through the overlay from {peer.subnet}"
    if probe.underlay_ok is False:
        return (
            f"{head}; its public IP {peer.public_ip} does not answer on the underlay either",
            (f"make {peer.public_ip} reachable from this node (underlay route, security "
            "group, host firewall for ICMP), or fix the lease if that node's address changed "
            "(restart its flanneld with the right --iface / --public-ip)"),
        )
    if prof is not None and prof.port and captured:
        if probe.encap_received:
            return (
                (f"{head}; {peer.public_ip} answers on the underlay and its {encap} replies "
                "arrive here, but are dropped on this node"),
                (f"allow {encap} in from the other nodes in this node's firewall (INPUT), and "
                "check rp_filter (see the host checks)"),
            )
        if probe.encap_sent is False:
            return (
                (f"{head}; {peer.public_ip} answers on the underlay, but no {encap} packet "
                "to it left this node"),
                (f"allow {encap} out in this node's firewall (OUTPUT) and check this node's "
                "route/FDB entries for the peer (see the peers checks)"),
            )
    if probe.port_refused:
        return (
            (f"{head}; {peer.public_ip} answers on the underlay but nothing listens on "
            f"{encap} there"),
            ("the peer is reachable but not answering on the overlay: flanneld on that node "
            "is not running or its overlay device is missing; run flannelctl doctor there"),
        )
    return (
        f"{head}; {peer.public_ip} answers on the underlay, but no {encap} reply came back",
        (f"{encap} is blocked between the nodes or on the peer: allow it between the nodes' "
        "public IPs (cloud security groups, host firewalls) and run flannelctl doctor on the "
        "peer"),
    )


# --- 4. MTU -----------------------------------------------------------------------------------


def check_mtu(obs: Observations, ctx: Context) -> CheckResult:
    """Overlay device, subnet.env, cni0 and pod MTUs against the underlay minus overhead."""
    name = "MTU"
    prof, ext = ctx.profile, obs.external
    if prof is None or ext is None:
        return CheckResult("mtu", name, Status.SKIP, ctx.problem or obs.external_error)
    limit = ext.mtu - prof.overhead
    seen: list[tuple[str, int]] = []
    for device_name in (prof.device, prof.device6):
        if not device_name:
            continue
        device = obs.kernel.link(device_name)
        if device is None:
            return CheckResult("mtu", name, Status.FAIL, f"no {device_name} device",
                               "restart flanneld: it recreates its device")
        seen.append((device_name, device.mtu))
    env_mtu = (obs.subnet_env or {}).get("FLANNEL_MTU", "")
    if env_mtu.isdigit():
        seen.append(("FLANNEL_MTU", int(env_mtu)))
    bridge = obs.kernel.link("cni0")
    if bridge is not None:
        seen.append(("cni0", bridge.mtu))
        pods = [lk for lk in obs.kernel.links if lk.master == bridge.index]
        if pods:
            seen.append((f"pods ({len(pods)})", max(lk.mtu for lk in pods)))
    too_big = [(what, mtu) for what, mtu in seen if mtu > limit]
    basis = f"{ext.name} MTU {ext.mtu} - {prof.backend} overhead {prof.overhead} = {limit}"
    listed = ", ".join(f"{what} {mtu}" for what, mtu in seen)
    if too_big:
        return CheckResult(
            "mtu", name, Status.FAIL, f"{listed}; above {basis}",
            f"set \"MTU\": {ext.mtu} in net-conf.json's Backend (the underlay MTU), restart "
            "flanneld, then recreate this node's pods so they get the new MTU",
        )
    return CheckResult("mtu", name, Status.OK, f"{listed}; limit {basis}")


def check_path_mtu(obs: Observations, ctx: Context) -> CheckResult:
    name = "path MTU"
    tried = [p for p in obs.probes.peers if p.overlay_df_ok is not None and p.overlay_ok]
    if not tried:
        return CheckResult("mtu", name, Status.SKIP,
                           obs.probes.skipped or "no peer answered through the overlay")
    mtu = (obs.subnet_env or {}).get("FLANNEL_MTU", "?")
    failed = [p for p in tried if not p.overlay_df_ok]
    if failed:
        names = ", ".join(f"{p.key}{' (' + p.df_error + ')' if p.df_error else ''}"
                          for p in failed)
        return CheckResult(
            "mtu", name, Status.FAIL,
            f"{len(failed)}/{len(tried)} peers answer small packets but not {mtu}-byte ones "
            f"with DF: {names}",
            "a link on the path has a smaller MTU: set net-conf.json Backend \"MTU\" to the "
            "smallest underlay MTU, restart flanneld on every node and recreate pods (if the "
            "underlay is already fixed, the kernel remembers the old path MTU for up to 10 "
            "minutes: ip route flush cache)",
        )
    ok = sum(1 for p in tried if p.overlay_df_ok)
    return CheckResult("mtu", name, Status.OK,
                       f"{ok}/{len(tried)} peers carry {mtu}-byte packets with DF")


# --- all of them ------------------------------------------------------------------------------


def overlay_checks(obs: Observations, ctx: Context) -> list[CheckResult]:
    """Checks 1-4: daemon, per-peer kernel state and reachability, MTU."""
    results = [
        check_running(obs),
        check_ready(obs),
        check_config_pending(obs),
        check_lease(obs, ctx),
        check_subnet_env(obs, ctx),
        check_refused(ctx),
    ]
    per_peer: Sequence[Callable[[Observations, Context, Peer], CheckResult]] = (
        check_peer_state, check_reachability,
    )
    for check in per_peer:
        results.extend(check(obs, ctx, peer) for peer in ctx.peers)
    results.extend([check_mtu(obs, ctx), check_path_mtu(obs, ctx)])
    return results
