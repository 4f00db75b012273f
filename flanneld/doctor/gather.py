"""The doctor's thin I/O layer: read everything once into an Observations snapshot.

Reads happen in parallel, each bounded by the timeout: subnet.env, the
daemon's ``/healthz``, ``/readyz`` and ``/metrics``, the lease store (with
flanneld's own flags), the kernel (netlink through
:class:`backends.netlink.Netlink`, sysctls from ``/proc``), the firewall
(``iptables-save`` and ``nft -j list ruleset``, read-only) and the CNI
config directory.  Then the active probes run against the peers found.
Nothing here writes anything.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import fcntl
import ipaddress
import json
import logging
import os
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from backends import wireguard_state
from backends.base import ExternalInterface
from backends.model import Route
from backends.netlink import Netlink
from flanneld import iface
from flanneld.doctor.checks import Context, context
from flanneld.doctor.hostchecks import CNI_EXTENSIONS, rp_paths, sysctl_key
from flanneld.doctor.model import (
    CniDir,
    FirewallView,
    HttpAnswer,
    KernelRoute,
    KernelView,
    Link,
    NodeView,
    Observations,
    ProbeTarget,
    ProbeView,
    Settings,
    StoreView,
)
from flanneld.doctor.probe import run_probes
from flanneld.doctor.profile import UDP_DEVICE, probe_address
from flanneld.flags import Flags
from subnet.errors import ConfigError, FlannelError, PeerDataError
from subnet.netconf import IPStack, ip_stack

log = logging.getLogger(__name__)

T = TypeVar("T")

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
HOST_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.conf.all.rp_filter",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_max",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """How the doctor runs: flanneld's flags plus its own options."""

    flags: Flags
    timeout: float = 2.0
    cni_conf_dir: str = "/etc/cni/net.d"
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict)


def settings_of(options: Options) -> Settings:
    flags = options.flags
    host = "127.0.0.1" if flags.healthz_ip in ("", "0.0.0.0", "::") else flags.healthz_ip
    if ":" in host:
        host = f"[{host}]"
    return Settings(
        subnet_file=flags.subnet_file,
        healthz=f"http://{host}:{flags.healthz_port}" if flags.healthz_port else "",
        ip_masq=flags.ip_masq,
        forward_rules=flags.iptables_forward_rules,
        kube=flags.kube_subnet_mgr,
        renew_margin_s=flags.subnet_lease_renew_margin * 60.0,
        cni_conf_dir=options.cni_conf_dir,
        node_name=options.environ.get("NODE_NAME", ""),
        in_pod=bool(options.environ.get("KUBERNETES_SERVICE_HOST")),
    )


# --- files and HTTP -----------------------------------------------------------------------


def read_subnet_env(path: str) -> tuple[dict[str, str] | None, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        return None, err.strerror or str(err)
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}, ""


def http_get(url: str, timeout: float) -> HttpAnswer:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return HttpAnswer(int(resp.status), resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as err:
        return HttpAnswer(int(err.code), err.read().decode(errors="replace"))
    except (OSError, urllib.error.URLError) as err:
        reason = getattr(err, "reason", err)
        return HttpAnswer(None, error=str(getattr(reason, "strerror", None) or reason))


def parse_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition, by name."""
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            values[name] = float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return values


# --- the lease store ------------------------------------------------------------------------


def read_store(options: Options) -> StoreView:
    """Config and leases (kube: and Nodes) read once with flanneld's flags."""
    from flanneld.daemon import etcd_settings, kube_settings

    flags = options.flags
    try:
        if flags.kube_subnet_mgr:
            return _read_kube(kube_settings(flags, options.environ), options)
        from subnet.etcd import EtcdSubnetManager

        manager = EtcdSubnetManager(etcd_settings(flags), rpc_timeout=options.timeout)
        try:
            return StoreView(manager.get_network_config(), manager.leases())
        finally:
            manager.close()
    except FlannelError as err:
        return StoreView(error=str(err))


def _read_kube(settings: Any, options: Options) -> StoreView:
    from subnet.kube import KubeSubnetManager, KubeTimings
    from subnet.kube_state import (
        AnnotationKeys,
        annotations_of,
        node_name_of,
        node_to_lease,
        pod_cidrs,
    )

    timings = KubeTimings(request_timeout=options.timeout, retry_deadline=options.timeout)
    manager = KubeSubnetManager.connect(settings, options.environ, timings)
    try:
        config = manager.get_network_config()
        keys = AnnotationKeys.for_prefix(settings.annotation_prefix)
        views, leases = [], []
        for node in manager.nodes():
            name = node_name_of(node)
            flannel = annotations_of(node).get(keys.kube_subnet_manager) == "true"
            try:
                cidr, cidr6 = pod_cidrs(node)
                lease = node_to_lease(node, keys, enable_ipv4=config.enable_ipv4,
                                      enable_ipv6=config.enable_ipv6)
            except PeerDataError as err:
                views.append(NodeView(name, None, flannel, problem=str(err)))
                continue
            views.append(NodeView(name, cidr, flannel, lease, pod_cidr6=cidr6))
            if lease is not None:
                leases.append(lease)
        return StoreView(config, tuple(leases), nodes=tuple(views))
    finally:
        manager.close()


# --- the kernel -------------------------------------------------------------------------------


def read_sysctl(key: str) -> str | None:
    path = "/proc/sys/" + "/".join(part.replace("/", ".") for part in key.split("."))
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def tx_checksum(name: str) -> bool | None:
    """Whether TX checksum offload is on for link ``name`` (ETHTOOL_GTXCSUM); None if unknown."""
    value = array.array("I", [ETHTOOL_GTXCSUM, 0])
    request = struct.pack("16sP", name.encode()[:15], value.buffer_info()[0])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
    except OSError:
        return None
    return bool(value[1])


def _is_overlay(name: str) -> bool:
    return name.startswith(("flannel.", "flannel-v6.")) or name in (
        UDP_DEVICE, wireguard_state.DEVICE, wireguard_state.DEVICE_V6)


def read_kernel() -> KernelView:
    """Links with addresses, our routes, permanent neighbours and FDB entries (on the
    overlay device, found by flannel's names before the store says which), sysctls."""
    try:
        with Netlink() as netlink:
            states = netlink.links()
            addresses = {
                info.index: tuple(
                    ipaddress.ip_interface(f"{a.address}/{a.prefixlen}") for a in info.addresses
                )
                for info in netlink.interfaces()
            }
            names = {s.index: s.name for s in states}
            overlay = [s.index for s in states if _is_overlay(s.name)]
            state = netlink.observe(overlay, [socket.AF_INET, socket.AF_INET6])
    except FlannelError as err:
        return KernelView(error=str(err), release=os.uname().release)
    links = tuple(
        Link(s.index, s.name, s.kind, s.mtu, s.mac, s.up, s.master, addresses.get(s.index, ()))
        for s in states
    )
    keys = list(HOST_SYSCTLS)
    for link in links:
        keys.append(sysctl_key("net", "ipv4", "conf", link.name, "rp_filter"))
    sysctls = {k: v for k in keys if (v := read_sysctl(k)) is not None}
    return KernelView(
        links=links,
        routes=tuple(_route(r, names) for r in state.routes),
        neighbours={str(n.dst): n.lladdr for n in state.neighbours},
        fdb={e.lladdr: str(e.dst) for e in state.fdb},
        sysctls=sysctls,
        tx_checksum=next((tx_checksum(s.name) for s in states if s.name.startswith("flannel.")),
                         None),
        release=os.uname().release,
    )


def _route(route: Route, names: Mapping[int, str]) -> KernelRoute:
    dev = names.get(route.ifindex, "") if route.ifindex is not None else ""
    return KernelRoute(route.dst, route.gateway, dev, route.onlink)


def route_out(addresses: Sequence[str]) -> dict[str, str]:
    """The interface the kernel would send to each address by ("" if unreachable)."""
    found = {}
    try:
        with Netlink() as netlink:
            names = {s.index: s.name for s in netlink.links()}
            for text in addresses:
                answer = netlink.route_get(ipaddress.ip_address(text))
                found[text] = names.get(answer[0].ifindex, "") if answer else ""
    except FlannelError as err:
        log.info("route lookups failed: %s", err)
    return found


def external_interface(
    flags: Flags, links: Sequence[Link], stack: IPStack = IPStack.IPV4
) -> tuple[Link | None, ExternalInterface | None, str]:
    """The underlay link flanneld chooses with these flags for ``stack``, its addresses, or
    why not."""
    try:
        with Netlink() as netlink:
            ext = iface.discover(netlink, flags, stack)
    except FlannelError as err:
        return None, None, str(err)
    link = next((lk for lk in links if lk.index == ext.index), None)
    return link, ext, ""


# --- firewall and CNI ---------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.info("%s failed: %s", argv[0], err)
        return None
    if done.returncode != 0:
        log.info("%s exited %d: %s", argv[0], done.returncode, done.stderr.strip())
        return None
    return done.stdout


def read_firewall(timeout: float) -> FirewallView:
    saved = _run(["iptables-save"], timeout)
    listed = _run(["nft", "-j", "list", "ruleset"], timeout)
    ruleset = None
    if listed is not None:
        try:
            items = json.loads(listed).get("nftables", [])
            ruleset = tuple(i for i in items if isinstance(i, dict))
        except (ValueError, AttributeError):
            ruleset = None
    error = "" if saved is not None or ruleset is not None else "iptables-save and nft failed"
    return FirewallView(saved, ruleset, error)


def read_cni_dir(path: str) -> CniDir:
    try:
        names = sorted(os.listdir(path))
    except OSError as err:
        return CniDir(path, error=err.strerror or str(err), missing=err.errno == errno.ENOENT)
    types: dict[str, tuple[str, ...]] = {}
    for name in names:
        if not name.endswith(CNI_EXTENSIONS):
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            types[name] = ()
            continue
        plugins = doc.get("plugins") if isinstance(doc, dict) else None
        entries = plugins if isinstance(plugins, list) else [doc]
        types[name] = tuple(str(p.get("type")) for p in entries if isinstance(p, dict))
    return CniDir(path, tuple(names), types)


# --- all of it --------------------------------------------------------------------------------


def observe(options: Options) -> Observations:
    """Read everything, then probe the peers found; bounded by about 2 x timeout."""
    settings = settings_of(options)
    timeout = options.timeout
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="doctor") as pool:
        jobs: dict[str, Any] = {
            "env": pool.submit(read_subnet_env, settings.subnet_file),
            "store": pool.submit(read_store, options),
            "kernel": pool.submit(read_kernel),
            "firewall": pool.submit(read_firewall, timeout),
            "cni": pool.submit(read_cni_dir, options.cni_conf_dir),
        }
        if settings.healthz:
            for path in ("healthz", "readyz", "metrics"):
                jobs[path] = pool.submit(http_get, f"{settings.healthz}/{path}", timeout)
        done = {name: _result(job, timeout) for name, job in jobs.items()}
    env, env_error = done["env"] or (None, "unreadable")
    kernel: KernelView = done["kernel"] or KernelView(error="timed out")
    store: StoreView = done["store"] or StoreView(error=f"no answer within {timeout:g} s")
    ext, addrs, ext_error = external_interface(options.flags, kernel.links, _stack(store))
    metrics_answer: HttpAnswer | None = done.get("metrics")
    obs = Observations(
        settings=settings,
        now=time.time(),
        subnet_env=env,
        subnet_env_error=env_error,
        healthz=done.get("healthz") or HttpAnswer(None, error="disabled"),
        readyz=done.get("readyz") or HttpAnswer(None, error="disabled"),
        metrics=parse_metrics(metrics_answer.body) if metrics_answer else {},
        store=store,
        external=ext,
        external_ip=addrs.ext_addr if addrs is not None else None,
        external_ip6=addrs.ext_addr6 if addrs is not None else None,
        external_error=ext_error,
        kernel=kernel,
        firewall=done["firewall"] or FirewallView(error="timed out"),
        cni=done["cni"] or CniDir(options.cni_conf_dir, error="timed out"),
    )
    ctx = context(obs)
    lookups = route_out(sorted({src for _, src in rp_paths(obs, ctx)}))
    obs = dataclasses.replace(obs, kernel=dataclasses.replace(kernel, route_out=lookups))
    return dataclasses.replace(obs, probes=probe(obs, ctx, timeout))


def _stack(store: StoreView) -> IPStack:
    """The families the cluster runs (IPv4 when the store is unreadable)."""
    try:
        return ip_stack(store.config) if store.config is not None else IPStack.IPV4
    except ConfigError:
        return IPStack.IPV4


def _result(job: Any, timeout: float) -> Any:
    try:
        return job.result(timeout=timeout * 2 + 5)
    except Exception as err:  # noqa: BLE001 - one failed reader must not sink the report
        log.warning("a doctor reader failed: %s", err)
        return None


def probe(obs: Observations, ctx: Context, timeout: float) -> ProbeView:
    prof = ctx.profile
    if prof is None or not ctx.peers:
        return ProbeView(skipped=ctx.problem or "no peers to probe")
    env_mtu = (obs.subnet_env or {}).get("FLANNEL_MTU", "")
    mtu = int(env_mtu) if env_mtu.isdigit() else 1400
    targets = []
    for peer in ctx.peers:  # the probe speaks IPv4 ICMP
        overlay, public = probe_address(prof, peer), peer.public_ip
        if isinstance(overlay, ipaddress.IPv4Address) and isinstance(public, ipaddress.IPv4Address):
            targets.append(ProbeTarget(peer.key, overlay, public, mtu, prof.port))
    if not targets:
        return ProbeView(skipped="no IPv4 peer to probe (the probe speaks IPv4 ICMP)")
    underlay = obs.external.name if obs.external is not None else None
    return run_probes(targets, underlay, timeout)

