"""What ``flannelctl doctor`` observed on a node, and what it concluded (plain values).

:mod:`flanneld.doctor.gather` fills an :class:`Observations` snapshot (files,
HTTP answers, the lease store, the kernel, firewall rules, probe outcomes);
the pure functions of :mod:`flanneld.doctor.checks` turn it into
:class:`CheckResult` lines; :mod:`flanneld.doctor.render` prints them.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from subnet.lease import Lease
from subnet.netconf import NetConfig


class Status(enum.Enum):
    """The outcome of one check.  Only FAIL makes the command exit non-zero."""

    OK = "ok"
    WARN = "warn"  # works now, but a known way for pod networking to break
    FAIL = "fail"
    SKIP = "skip"  # could not be checked (said why in ``found``)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report: what was checked, what was found, and the fix."""

    group: str  # daemon, peers, reachability, mtu, host, cluster
    name: str
    status: Status
    found: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "group": self.group,
            "check": self.name,
            "status": self.status.value,
            "found": self.found,
            "fix": self.fix,
        }


# --- observations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What the doctor was told (flanneld's flags and its own options)."""

    subnet_file: str
    healthz: str  # host:port of flanneld's health server, "" when --healthz-port=0
    ip_masq: bool
    forward_rules: bool
    kube: bool
    renew_margin_s: float
    cni_conf_dir: str
    node_name: str = ""  # kube mode
    in_pod: bool = False  # run inside a pod (the host's CNI directory is usually not mounted)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP GET: the status and body, or the error that prevented one."""

    status: int | None
    body: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class StoreView:
    """The lease store as read once: config and every lease (or why not)."""

    config: NetConfig | None = None
    leases: tuple[Lease, ...] = ()
    error: str = ""
    # kube mode: every Node as (name, podCIDR or None, managed by flannel, lease or error)
    nodes: tuple[NodeView, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeView:
    """One Kubernetes Node as the cluster check needs it."""

    name: str
    pod_cidr: ipaddress.IPv4Network | None
    flannel: bool  # carries flannel's annotations
    lease: Lease | None = None
    problem: str = ""  # why its annotations cannot be used
    pod_cidr6: ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface with what the checks need of it."""

    index: int
    name: str
    kind: str
    mtu: int
    mac: str
    up: bool
    master: int | None
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """One of our routes (flanneld's protocol id), as the kernel lists it."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dev: str
    onlink: bool


@dataclass(frozen=True, slots=True)
class KernelView:
    """Links, our routes, permanent neighbours and FDB entries, sysctls, offloads."""

    links: tuple[Link, ...] = ()
    routes: tuple[KernelRoute, ...] = ()
    neighbours: Mapping[str, str] = field(default_factory=dict)  # overlay IP -> MAC
    fdb: Mapping[str, str] = field(default_factory=dict)  # MAC -> remote IP
    sysctls: Mapping[str, str] = field(default_factory=dict)  # dotted key -> value
    # route lookups: destination -> outgoing interface name ("" = unreachable)
    route_out: Mapping[str, str] = field(default_factory=dict)
    tx_checksum: bool | None = None  # overlay device's TX checksum offload
    release: str = ""  # kernel release (uname -r)
    error: str = ""

    def link(self, name: str) -> Link | None:
        return next((lk for lk in self.links if lk.name == name), None)


@dataclass(frozen=True, slots=True)
class FirewallView:
    """Rule listings: ``iptables-save`` (IPv4) and ``nft -j list ruleset`` (parsed)."""

    iptables_save: str | None = None  # None: not available
    nft_ruleset: tuple[Mapping[str, Any], ...] | None = None  # the "nftables" array
    error: str = ""


@dataclass(frozen=True, slots=True)
class CniDir:
    """The CNI config directory: file names in load order and each file's plugin types."""

    path: str
    files: tuple[str, ...] = ()
    types: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    error: str = ""
    missing: bool = False  # the directory does not exist


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One peer to probe: its overlay address, public IP, and the packet sizes to try."""

    key: str  # lease key
    overlay: ipaddress.IPv4Address
    public_ip: ipaddress.IPv4Address
    overlay_mtu: int
    encap_port: int  # 0 for host-gw (no encapsulation)


@dataclass(frozen=True, slots=True)
class PeerProbe:
    """What the active probes saw for one peer (None: that probe did not run)."""

    key: str
    overlay_ok: bool | None = None
    overlay_df_ok: bool | None = None  # an overlay-MTU-sized echo with DF set
    df_error: str = ""  # e.g. "message too long (local MTU smaller)"
    underlay_ok: bool | None = None
    encap_sent: bool | None = None  # our encapsulated packets left the underlay device
    encap_received: bool | None = None  # the peer's encapsulated packets reached it
    port_refused: bool | None = None  # ICMP port unreachable for the encapsulation port
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeView:
    """All probes, or why none ran."""

    peers: tuple[PeerProbe, ...] = ()
    skipped: str = ""  # why probes (or the capture) did not run
    capture: bool = False  # whether the underlay capture ran


@dataclass(frozen=True, slots=True)
class Observations:
    """Everything the checks read; gathered once, then judged without I/O."""

    settings: Settings
    now: float  # Unix time when gathered
    subnet_env: Mapping[str, str] | None = None  # None: missing or unreadable
    subnet_env_error: str = ""
    healthz: HttpAnswer = HttpAnswer(None, error="not checked")
    readyz: HttpAnswer = HttpAnswer(None, error="not checked")
    metrics: Mapping[str, float] = field(default_factory=dict)
    store: StoreView = StoreView(error="not read")
    external: Link | None = None  # the underlay interface flanneld uses
    external_ip: ipaddress.IPv4Address | None = None
    external_ip6: ipaddress.IPv6Address | None = None
    external_error: str = ""
    kernel: KernelView = KernelView()
    firewall: FirewallView = FirewallView()
    cni: CniDir = CniDir("")
    probes: ProbeView = ProbeView(skipped="not run")
