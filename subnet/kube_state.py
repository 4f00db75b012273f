"""Pure parts of the Kubernetes subnet manager: no API client, no I/O.

* the ``--kube-annotation-prefix`` normalisation and the annotation names it gives;
* the annotations flanneld writes on its own Node, and which of them changed;
* a Node (the API's JSON) -> its advertised lease, and our own lease checked
  against net-conf.json;
* :class:`NodeLeaseTable`, which turns Node changes into lease messages;
* :class:`KubeSettings` from flanneld's flags and environment.

:mod:`subnet.kube` does the API calls and feeds these functions.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from subnet.errors import ConfigError, LeaseError, PeerDataError
from subnet.lease import (
    UNSPECIFIED_V4,
    Lease,
    LeaseAttrs,
    canonical_ipv4_int,
    compact_flat_object,
    compact_json,
    ipv4_address,
)
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved
from subnet.netconf import NetConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
JSON = dict[str, Any]

DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com"
DEFAULT_NET_CONFIG_PATH = "/etc/kube-flannel/net-conf.json"
DEFAULT_EVENT_QUEUE_DEPTH = 5000
# Backends whose leases may be dual-stack; every other backend is forced to IPv4 only.
DUAL_STACK_BACKENDS = frozenset({"vxlan", "host-gw", "wireguard"})

_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?")
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


# --- annotations -----------------------------------------------------------------


def normalize_annotation_prefix(prefix: str) -> str:
    """``--kube-annotation-prefix`` as upstream normalises it (``P/`` or ``P/x-``).

    Raises ConfigError with upstream's messages.
    """
    slashes = prefix.count("/")
    if slashes > 1:
        raise ConfigError("subnet/kube: prefix can contain at most single slash")
    if slashes == 0:
        prefix += "/"
    if not prefix.endswith(("/", "-")):
        prefix += "-"
    if _PREFIX_RE.fullmatch(prefix) is None:
        raise ConfigError("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*")
    return prefix


@dataclass(frozen=True, slots=True)
class AnnotationKeys:
    """The full annotation names for one normalised prefix."""

    kube_subnet_manager: str
    backend_type: str
    backend_data: str
    backend_v6_data: str
    public_ip: str
    public_ipv6: str
    public_ip_overwrite: str
    public_ipv6_overwrite: str
    node_public_ip: str
    node_public_ipv6: str

    @classmethod
    def for_prefix(cls, prefix: str = DEFAULT_ANNOTATION_PREFIX) -> AnnotationKeys:
        p = normalize_annotation_prefix(prefix)
        return cls(
            kube_subnet_manager=p + "kube-subnet-manager",
            backend_type=p + "backend-type",
            backend_data=p + "backend-data",
            backend_v6_data=p + "backend-v6-data",
            public_ip=p + "public-ip",
            public_ipv6=p + "public-ipv6",
            public_ip_overwrite=p + "public-ip-overwrite",
            public_ipv6_overwrite=p + "public-ipv6-overwrite",
            node_public_ip=p + "node-public-ip",
            node_public_ipv6=p + "node-public-ipv6",
        )


def desired_annotations(
    current: Mapping[str, str], attrs: LeaseAttrs, keys: AnnotationKeys
) -> dict[str, str]:
    """The annotations flanneld owns on its Node, as upstream writes them.

    ``current`` supplies the user's ``public-ip-overwrite`` /
    ``public-ipv6-overwrite``.  The v4 pair is written for every backend but
    IPv6-only vxlan; the v6 pair for vxlan with v6 data, wireguard with v6
    data and a public IPv6, host-gw and extension with a public IPv6.
    """
    backend_type = attrs.backend_type
    data = attrs.backend_data if attrs.backend_data is not None else "null"
    v6_data = attrs.backend_v6_data if attrs.backend_v6_data is not None else "null"
    out = {keys.backend_type: backend_type, keys.kube_subnet_manager: "true"}
    if not (backend_type == "vxlan" and data == "null"):
        out[keys.backend_data] = data
        out[keys.public_ip] = current.get(keys.public_ip_overwrite) or str(attrs.public_ip)
    has_v6_ip = attrs.public_ipv6 is not None
    if (
        (backend_type == "vxlan" and v6_data != "null")
        or (backend_type == "wireguard" and v6_data != "null" and has_v6_ip)
        or (backend_type in ("host-gw", "extension") and has_v6_ip)
    ):
        out[keys.backend_v6_data] = v6_data
        overwrite = current.get(keys.public_ipv6_overwrite)
        if overwrite:
            out[keys.public_ipv6] = overwrite
        elif attrs.public_ipv6 is not None:
            out[keys.public_ipv6] = str(attrs.public_ipv6)
    return out


def annotation_changes(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``desired`` that ``current`` lacks or has with another value."""
    return {key: value for key, value in desired.items() if current.get(key) != value}


# --- node -> lease ---------------------------------------------------------------------


def annotations_of(node: Mapping[str, Any]) -> dict[str, str]:
    """The Node's ``metadata.annotations`` as strings (empty if absent or malformed)."""
    meta = node.get("metadata") or {}
    found = meta.get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def node_name_of(node: Mapping[str, Any]) -> str:
    """The Node's ``metadata.name`` (empty if absent)."""
    return str((node.get("metadata") or {}).get("name") or "")


def pod_cidrs(
    node: Mapping[str, Any],
) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """The node's (IPv4, IPv6) pod CIDRs from ``spec.podCIDRs``, else ``spec.podCIDR``.

    Raises PeerDataError for three or more entries or an unparsable CIDR.
    Host bits are masked, as Go's ParseCIDR does.
    """
    spec = node.get("spec") or {}
    listed = spec.get("podCIDRs") or []
    single = spec.get("podCIDR") or ""
    if not isinstance(listed, list):
        raise PeerDataError("spec.podCIDRs is not a list")
    if len(listed) >= 3:
        raise PeerDataError(
            f'node "{node_name_of(node)}" pod cidrs should be IPv4/IPv6 only or dualstack'
        )
    texts = listed if listed else ([single] if single else [])
    v4: ipaddress.IPv4Network | None = None
    v6: ipaddress.IPv6Network | None = None
    for text in texts:
        try:
            net = _network(str(text))
        except ValueError as err:
            raise PeerDataError(f"invalid pod CIDR {text!r}: {err}") from err
        if isinstance(net, ipaddress.IPv4Network):
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``ip_network(text, strict=False)``, with the common ``a.b.c.d/n`` parsed faster.

    :func:`~subnet.lease.canonical_ipv4_int` takes exactly what :mod:`ipaddress`
    takes for IPv4 (four decimal parts up to 255, no leading zeros, ASCII
    digits only) in a third of the time; at 5000 Nodes per list the addresses were a fifth of
    the parse.  Any other form (IPv6, a netmask, garbage) takes the general
    path, so results and errors stay those of ``ip_network``.
    """
    address, slash, prefix = text.partition("/")
    if slash and prefix.isascii() and prefix.isdigit() and int(prefix) <= 32:
        value = canonical_ipv4_int(address)
        if value is not None:
            return ipaddress.IPv4Network((value, int(prefix)), strict=False)
    return ipaddress.ip_network(text, strict=False)


def _backend_json(annotations: Mapping[str, str], key: str) -> str | None:
    raw = annotations.get(key)
    if raw is None or raw == "":
        return None
    flat = compact_flat_object(raw)  # as Go wrote it: no decoding and re-encoding
    if flat is not None:
        return flat
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
        raise PeerDataError(f"annotation {key} is not JSON: {err}") from err
    return None if value is None else compact_json(value)


def node_to_lease(
    node: Mapping[str, Any],
    keys: AnnotationKeys,
    *,
    enable_ipv4: bool = True,
    enable_ipv6: bool = False,
) -> Lease | None:
    """The lease a Node advertises; None if it is not managed by flannel.

    Raises PeerDataError when the node is managed but its annotations or pod
    CIDRs cannot be used (bad public IP, non-JSON backend data, no pod CIDR
    of an enabled family).  In dual stack a family whose pod CIDR or public
    address annotation is absent is left out of the lease, so the node is
    still reached over the other one (upstream skips the whole node);
    :func:`missing_families` says why.
    """
    ann = annotations_of(node)
    if ann.get(keys.kube_subnet_manager) != "true":
        return None
    v4, v6 = pod_cidrs(node)
    use4, use6 = enable_ipv4, enable_ipv6
    if enable_ipv4 and enable_ipv6:
        use4 = v4 is not None and bool(ann.get(keys.public_ip))
        use6 = v6 is not None and bool(ann.get(keys.public_ipv6))
        if not (use4 or use6):
            use4 = use6 = True  # neither family is usable: say why in upstream's words
    public_ip = UNSPECIFIED_V4
    public_ipv6 = None
    if use4:
        public_ip = _parse_ip(ann, keys.public_ip, ipv4_address)
        if v4 is None:
            raise PeerDataError("missing IPv4 address on n.Spec.PodCIDRs")
    if use6:
        public_ipv6 = _parse_ip(ann, keys.public_ipv6, ipaddress.IPv6Address)
        if v6 is None:
            raise PeerDataError("missing IPv6 address on n.Spec.PodCIDRs")
    attrs = LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=ann.get(keys.backend_type, ""),
        backend_data=_backend_json(ann, keys.backend_data) if use4 else None,
        backend_v6_data=_backend_json(ann, keys.backend_v6_data) if use6 else None,
    )
    return Lease(
        subnet=v4 if use4 else None,
        ipv6_subnet=v6 if use6 else None,
        attrs=attrs,
        expiration=None,
        claim_order=_created(node),
    )


def missing_families(
    node: Mapping[str, Any], keys: AnnotationKeys, lease: Lease, *, enable_ipv4: bool,
    enable_ipv6: bool,
) -> str:
    """Why ``lease`` (from :func:`node_to_lease`) lacks a family the config enables ('' if not)."""
    if not (enable_ipv4 and lease.subnet is None or enable_ipv6 and lease.ipv6_subnet is None):
        return ""  # the common case, for every Node event: no pod CIDR parsed a second time
    v4, v6 = pod_cidrs(node)
    reasons = []
    for version, enabled, have, cidr, key in (
        (4, enable_ipv4, lease.subnet, v4, keys.public_ip),
        (6, enable_ipv6, lease.ipv6_subnet, v6, keys.public_ipv6),
    ):
        if enabled and have is None:
            why = f"no IPv{version} pod CIDR" if cidr is None else f"no {key} annotation"
            reasons.append(f"{why}: not reached over IPv{version}")
    return "; ".join(reasons)


def _created(node: Mapping[str, Any]) -> float | None:
    """The Node's creationTimestamp as seconds since the epoch (None if absent or bad)."""
    stamp = (node.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _parse_ip(ann: Mapping[str, str], key: str, kind: Callable[[str], T]) -> T:
    text = ann.get(key, "")
    try:
        return kind(text)
    except ValueError as err:
        raise PeerDataError(f"annotation {key}={text!r} is not a valid address") from err


def own_lease(
    node: Mapping[str, Any], node_name: str, cfg: NetConfig, attrs: LeaseAttrs
) -> Lease:
    """Our lease from our Node's pod CIDRs, checked against the cluster network.

    Raises LeaseError with upstream's texts (plus how to fix a missing podCIDR).
    """
    if not (node.get("spec") or {}).get("podCIDR"):
        raise LeaseError(
            f'node "{node_name}" pod cidr not assigned: the node has no spec.podCIDR; '
            "run kube-controller-manager with --allocate-node-cidrs=true and "
            "--cluster-cidr=<Network from net-conf.json> (kubeadm: "
            "kubeadm init --pod-network-cidr=<Network>)"
        )
    try:
        v4, v6 = pod_cidrs(node)
    except PeerDataError as err:
        raise LeaseError(str(err)) from err
    subnet = None
    ipv6_subnet = None
    if v4 is not None and cfg.enable_ipv4:
        if cfg.network is None or not v4.subnet_of(cfg.network):
            raise LeaseError(
                f'subnet "{cfg.network or "0.0.0.0/0"}" specified in the flannel net config '
                f'doesn\'t contain "{v4}" PodCIDR of the "{node_name}" node'
            )
        subnet = v4
    if v6 is not None and cfg.enable_ipv6 and attrs.backend_type in DUAL_STACK_BACKENDS:
        if cfg.ipv6_network is None or not v6.subnet_of(cfg.ipv6_network):
            raise LeaseError(
                f'subnet "{cfg.ipv6_network or "::/0"}" specified in the flannel net config '
                f'doesn\'t contain "{v6}" IPv6 PodCIDR of the "{node_name}" node'
            )
        ipv6_subnet = v6
    if subnet is None and ipv6_subnet is None:
        raise LeaseError(
            f'node "{node_name}" has no pod CIDR of an enabled address family '
            f"(podCIDRs {v4 or '-'} / {v6 or '-'})"
        )
    return Lease(subnet=subnet, ipv6_subnet=ipv6_subnet, attrs=attrs, expiration=None)


def attrs_from_annotations(
    annotations: Mapping[str, str], keys: AnnotationKeys
) -> LeaseAttrs | None:
    """What a node advertised last time, from its annotations; None if nothing.

    Unusable values (bad address, non-JSON data) are left out, not raised:
    this only seeds a backend (e.g. to keep its VTEP MAC).
    """
    if not any(k in annotations for k in (keys.backend_type, keys.backend_data,
                                          keys.backend_v6_data)):
        return None
    found: dict[str, Any] = {}
    for name, key, kind in (("public_ip", keys.public_ip, ipaddress.IPv4Address),
                            ("public_ipv6", keys.public_ipv6, ipaddress.IPv6Address)):
        try:
            found[name] = kind(annotations.get(key, ""))
        except ValueError:
            pass
    for name, key in (("backend_data", keys.backend_data),
                      ("backend_v6_data", keys.backend_v6_data)):
        try:
            found[name] = _backend_json(annotations, key)
        except PeerDataError as err:
            log.info("Ignoring our previous %s: %s", key, err)
    return LeaseAttrs(backend_type=annotations.get(keys.backend_type, ""), **found)


def vtep_mac_from_backend_data(text: str | None) -> str | None:
    """``VtepMAC`` of a vxlan backend-data JSON object, or None."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    mac = next((v for k, v in doc.items() if k.lower() == "vtepmac"), None)
    if not isinstance(mac, str) or _MAC_RE.fullmatch(mac.lower()) is None:
        return None
    return mac.lower()


def network_available_patch(now: datetime) -> JSON:
    """The status patch that marks the node's network as up."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "conditions": [
                {
                    "type": "NetworkUnavailable",
                    "status": "False",
                    "reason": "FlannelIsUp",
                    "message": "Flannel is running on this node",
                    "lastTransitionTime": stamp,
                    "lastHeartbeatTime": stamp,
                }
            ]
        }
    }


class NodeLeaseTable:
    """Node name -> lease, turning node changes into lease messages."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}

    def leases(self) -> tuple[Lease, ...]:
        return tuple(self._leases[name] for name in sorted(self._leases))

    def lease(self, name: str) -> Lease | None:
        """``name``'s lease (None: unknown or unmanaged)."""
        return self._leases.get(name)

    def set(self, name: str, lease: Lease | None) -> list[LeaseMessage]:
        """Record ``name``'s lease (None: gone or unmanaged); the messages to send."""
        old = self._leases.get(name)
        if lease is None:
            if old is None:
                return []
            del self._leases[name]
            return [LeaseRemoved(old.key)]
        self._leases[name] = lease
        if old == lease:
            return []
        if old is not None and old.key != lease.key:
            return [LeaseRemoved(old.key), LeaseAdded(lease)]
        return [LeaseAdded(lease)]


# --- settings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """What flanneld's flags and environment say about kube mode.

    ``event_queue_depth`` (EVENT_QUEUE_DEPTH) sizes the daemon's message
    queue; the manager hands every message straight to the sink.
    ``cont_when_cache_not_ready`` (CONT_WHEN_CACHE_NOT_READY) lets
    :meth:`KubeSubnetManager.wait_for_sync` continue after its timeout.
    """

    api_url: str = ""
    kubeconfig_file: str = ""
    annotation_prefix: str = DEFAULT_ANNOTATION_PREFIX
    node_name: str = ""  # empty: resolve from NODE_NAME / POD_NAME+POD_NAMESPACE
    net_config_path: str = DEFAULT_NET_CONFIG_PATH
    set_node_network_unavailable: bool = True
    event_queue_depth: int = DEFAULT_EVENT_QUEUE_DEPTH
    cont_when_cache_not_ready: bool = False


def parse_event_queue_depth(value: str | None) -> int:
    """``EVENT_QUEUE_DEPTH``: a positive integer (others keep the default 5000)."""
    if not value:
        return DEFAULT_EVENT_QUEUE_DEPTH
    try:
        depth = int(value)
    except ValueError as err:
        raise ConfigError(f"env EVENT_QUEUE_DEPTH={value} format error: {err}") from err
    return depth if depth > 0 else DEFAULT_EVENT_QUEUE_DEPTH


def parse_env_bool(name: str, value: str | None) -> bool:
    """A Go ``strconv.ParseBool`` value of an environment variable (unset: false)."""
    if not value:
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ConfigError(f"env {name}={value} is not a boolean")


# --- object watches (NetworkPolicy informers) -----------------------------------------

WATCHED_KINDS = ("networkpolicies", "namespaces", "pods")


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One message of an object watch (:class:`subnet.kube.ObjectWatch`).

    ``type`` is ``SNAPSHOT`` (``objects`` is every object of ``kind`` after a
    (re)list: replace what you hold), or ``ADDED``/``MODIFIED``/``DELETED``
    with the one object.  Objects are the API's JSON, unparsed.
    """

    kind: str  # one of WATCHED_KINDS
    type: str
    objects: tuple[JSON, ...]
