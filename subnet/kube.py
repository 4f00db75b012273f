"""The Kubernetes subnet manager (``--kube-subnet-mgr``).

Each node's subnet is its ``spec.podCIDR``/``spec.podCIDRs``, assigned by
kube-controller-manager.  flanneld does not allocate anything here: it
advertises its attributes as Node annotations (written through the
``nodes/status`` subresource, as upstream does, so RBAC needs no ``nodes``
patch) and learns its peers from the annotations of the other Nodes.

Design, and where it departs from upstream on purpose:

* Peers come from a list + watch of all Nodes.  Every (re)list produces a
  :class:`~subnet.manager.Snapshot`, so after a 410 Gone or a reconnect no
  peer is missed or left stale.  An update produces an event exactly when the
  node's lease changes, podCIDR included; a lease whose key changes is
  reported as removed and added.
* A node with garbage annotations is logged once (until it changes) and
  skipped; its previous lease, if any, is kept, as upstream does.
* Annotations are compared with what we would write and only the differing
  keys are sent, as a strategic merge patch of ``nodes/status``.
* The previous VTEP MAC is read by decoding the backend-data JSON.

This is the only module that imports ``kubernetes``.  API and transport
errors are translated here into :class:`StoreError` (HTTP failures as
:class:`KubeAPIError`, with the status), :class:`WatchExpiredError` (410)
and :class:`LeaseError`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.config import incluster_config, kube_config
from kubernetes.config.config_exception import ConfigException

from flanneld.config import NetConfig, parse_net_config
from flanneld.errors import (
    ConfigError,
    FlannelError,
    LeaseError,
    PeerDataError,
    StoreError,
    WatchExpiredError,
)
from flanneld.retry import Backoff
from subnet.lease import Lease, LeaseAttrs, compact_json
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Sink, Snapshot

if TYPE_CHECKING:
    from flanneld.cli import Flags

log = logging.getLogger(__name__)

T = TypeVar("T")
JSON = dict[str, Any]

DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com"
DEFAULT_NET_CONFIG_PATH = "/etc/kube-flannel/net-conf.json"
DEFAULT_EVENT_QUEUE_DEPTH = 5000
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# Backends whose leases may be dual-stack; every other backend is forced to IPv4 only.
DUAL_STACK_BACKENDS = frozenset({"vxlan", "host-gw", "wireguard"})

_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?")
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


class KubeAPIError(StoreError):
    """The API server answered with an HTTP error ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


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


# --- node -> lease (pure) -------------------------------------------------------------


def _annotations(node: Mapping[str, Any]) -> dict[str, str]:
    meta = node.get("metadata") or {}
    found = meta.get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def node_name_of(node: Mapping[str, Any]) -> str:
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
            net = ipaddress.ip_network(str(text), strict=False)
        except ValueError as err:
            raise PeerDataError(f"invalid pod CIDR {text!r}: {err}") from err
        if isinstance(net, ipaddress.IPv4Network):
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6


def _backend_json(annotations: Mapping[str, str], key: str) -> str | None:
    raw = annotations.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except ValueError as err:
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
    of an enabled family).
    """
    ann = _annotations(node)
    if ann.get(keys.kube_subnet_manager) != "true":
        return None
    v4, v6 = pod_cidrs(node)
    public_ip = ipaddress.IPv4Address("0.0.0.0")
    public_ipv6 = None
    if enable_ipv4:
        public_ip = _parse_ip(ann, keys.public_ip, ipaddress.IPv4Address)
        if v4 is None:
            raise PeerDataError("missing IPv4 address on n.Spec.PodCIDRs")
    if enable_ipv6:
        public_ipv6 = _parse_ip(ann, keys.public_ipv6, ipaddress.IPv6Address)
        if v6 is None:
            raise PeerDataError("missing IPv6 address on n.Spec.PodCIDRs")
    attrs = LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=ann.get(keys.backend_type, ""),
        backend_data=_backend_json(ann, keys.backend_data) if enable_ipv4 else None,
        backend_v6_data=_backend_json(ann, keys.backend_v6_data) if enable_ipv6 else None,
    )
    return Lease(
        subnet=v4 if enable_ipv4 else None,
        ipv6_subnet=v6 if enable_ipv6 else None,
        attrs=attrs,
        expiration=None,
    )


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
    except ValueError:
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


class PeerTable:
    """Node name -> lease, turning node changes into lease messages."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}

    def leases(self) -> tuple[Lease, ...]:
        return tuple(self._leases[name] for name in sorted(self._leases))

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


def settings_from_flags(flags: Flags, environ: Mapping[str, str]) -> KubeSettings:
    """KubeSettings from flanneld's flags and EVENT_QUEUE_DEPTH/CONT_WHEN_CACHE_NOT_READY."""
    return KubeSettings(
        api_url=flags.kube_api_url,
        kubeconfig_file=flags.kubeconfig_file,
        annotation_prefix=flags.kube_annotation_prefix,
        net_config_path=flags.net_config_path,
        set_node_network_unavailable=flags.set_node_network_unavailable,
        event_queue_depth=parse_event_queue_depth(environ.get("EVENT_QUEUE_DEPTH")),
        cont_when_cache_not_ready=parse_env_bool(
            "CONT_WHEN_CACHE_NOT_READY", environ.get("CONT_WHEN_CACHE_NOT_READY")
        ),
    )


@dataclass(frozen=True, slots=True)
class KubeTimings:
    """Timeouts and retry pacing; tests shrink them."""

    request_timeout: float = 30.0  # one API call (connect and read)
    watch_timeout: int = 300  # server-side timeoutSeconds of one watch request
    retry_interval: float = 3.0  # upstream polls its Node and patches every 3 s ...
    retry_deadline: float = 30.0  # ... for at most 30 s
    sync_timeout: float = 600.0  # wait_for_sync: upstream's node controller timeout
    backoff_initial: float = 0.2  # watch reconnects: exponential, with jitter
    backoff_max: float = 5.0
    stop_poll: float = 0.2  # how often the watch interrupter checks for stop

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial, self.backoff_max)


# --- API access ------------------------------------------------------------------------


def build_api_client(settings: KubeSettings) -> Any:
    """An ApiClient like client-go's BuildConfigFromFlags(api_url, kubeconfig).

    kubeconfig file if given (``api_url`` overrides its server), else
    ``api_url`` alone, else in-cluster, else ``~/.kube/config``.
    """
    cfg = client.Configuration()
    try:
        if settings.kubeconfig_file:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig_file, client_configuration=cfg,
                persist_config=False,
            )
        elif not settings.api_url:
            try:
                incluster_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=cfg
                )
            except ConfigException:
                kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=cfg, persist_config=False
                )
    except (ConfigException, OSError, ValueError, TypeError) as err:
        raise ConfigError(f"fail to create kubernetes config: {err}") from err
    if settings.api_url:
        _override_host(cfg, settings.api_url.rstrip("/"))
    cfg.retries = False  # retries live in this module's loops
    return client.ApiClient(cfg)


def _override_host(cfg: Any, host: str) -> None:
    """Point ``cfg`` at ``host`` for good.

    With a token, the kubeconfig loader installs a refresh hook that runs
    before every request, copies the file's server back into the
    configuration and installs a fresh hook; :class:`_HostPin` wraps it again
    each time.
    """
    cfg.host = host
    if cfg.refresh_api_key_hook is not None:
        cfg.refresh_api_key_hook = _HostPin(host, cfg.refresh_api_key_hook)


class _HostPin:
    def __init__(self, host: str, inner: Callable[[Any], None]) -> None:
        self.host = host
        self.inner = inner

    def __call__(self, configuration: Any) -> None:
        self.inner(configuration)
        latest = configuration.refresh_api_key_hook
        if latest is not None and latest is not self:
            self.inner = latest
        configuration.refresh_api_key_hook = self
        configuration.host = self.host


def _status_message(err: Any) -> str:
    try:
        doc = json.loads(err.body or "")
    except (TypeError, ValueError):
        doc = None
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])
    return str(err.reason or "")


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the API; translate its failures into our exception tree."""
    try:
        return fn(*args, **kwargs)
    except client.ApiException as err:
        status = int(err.status or 0)
        message = f"{what}: {status} {_status_message(err)}".rstrip()
        if status == 410:
            raise WatchExpiredError(message) from err
        if status == 0:
            raise StoreError(message) from err
        raise KubeAPIError(message, status) from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StoreError(f"{what}: {err}") from err


def _json_response(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> JSON:
    resp = _call(what, fn, *args, _preload_content=False, **kwargs)
    try:
        doc = json.loads(resp.data)
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StoreError(f"{what}: {err}") from err
    except ValueError as err:
        raise StoreError(f"{what}: the response is not JSON: {err}") from err
    finally:
        resp.release_conn()
    if not isinstance(doc, dict):
        raise StoreError(f"{what}: the response is not a JSON object")
    return doc


def _retryable(err: StoreError) -> bool:
    """Transport failures, 409, 429 and 5xx are worth retrying; other 4xx are not."""
    if isinstance(err, KubeAPIError):
        return err.status in (409, 429) or err.status >= 500
    return True


def resolve_node_name(environ: Mapping[str, str], api: Any, request_timeout: float = 30.0) -> str:
    """NODE_NAME, else the ``spec.nodeName`` of pod POD_NAMESPACE/POD_NAME.

    ``api`` is a ``kubernetes.client.CoreV1Api``.
    """
    name = environ.get("NODE_NAME", "")
    if name:
        return name
    pod = environ.get("POD_NAME", "")
    namespace = environ.get("POD_NAMESPACE", "")
    if not pod or not namespace:
        raise ConfigError("env variables POD_NAME and POD_NAMESPACE must be set")
    what = f"error retrieving pod spec for '{namespace}/{pod}'"
    doc = _json_response(
        what, api.read_namespaced_pod, pod, namespace,
        _request_timeout=(request_timeout, request_timeout),
    )
    node_name = (doc.get("spec") or {}).get("nodeName") or ""
    if not node_name:
        raise ConfigError(f"node name not present in pod spec '{namespace}/{pod}'")
    return str(node_name)


# --- the manager ---------------------------------------------------------------------


@dataclass(slots=True)
class _WatchState:
    """Per watch_leases call: the open stream (for interruption), bad nodes logged."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    response: Any = None
    done: bool = False
    bad: dict[str, str] = field(default_factory=dict)


class KubeSubnetManager:
    """SubnetManager over the Kubernetes API: leases are Nodes' pod CIDRs."""

    def __init__(
        self,
        settings: KubeSettings,
        api_client: Any,
        *,
        node_name: str,
        timings: KubeTimings | None = None,
    ) -> None:
        self.settings = settings
        self.keys = AnnotationKeys.for_prefix(settings.annotation_prefix)
        self.node_name = node_name
        self.timings = timings or KubeTimings()
        self._api_client = api_client
        self._api = client.CoreV1Api(api_client)
        self._config: NetConfig | None = None
        self._config_lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        settings: KubeSettings,
        environ: Mapping[str, str],
        timings: KubeTimings | None = None,
    ) -> KubeSubnetManager:
        """Build the client from the settings and resolve our node's name."""
        normalize_annotation_prefix(settings.annotation_prefix)  # a bad prefix fails first
        api_client = build_api_client(settings)
        timings = timings or KubeTimings()
        try:
            name = settings.node_name or resolve_node_name(
                environ, client.CoreV1Api(api_client), timings.request_timeout
            )
        except FlannelError:
            api_client.close()
            raise
        return cls(settings, api_client, node_name=name, timings=timings)

    def close(self) -> None:
        self._api_client.close()

    # --- SubnetManager -------------------------------------------------------------

    def get_network_config(self) -> NetConfig:
        """net-conf.json from ``--net-config-path`` (read once)."""
        with self._config_lock:
            if self._config is None:
                try:
                    with open(self.settings.net_config_path, "rb") as handle:
                        text = handle.read()
                except OSError as err:
                    raise ConfigError(f"failed to read net conf: {err}") from err
                try:
                    self._config = parse_net_config(text)
                except ConfigError as err:
                    raise ConfigError(f"error parsing subnet config: {err}") from err
            return self._config

    def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Our Node's pod CIDRs as the lease; advertise ``attrs`` as annotations."""
        cfg = self.get_network_config()
        node = self._retrying("get node", self._read_own_node, fail=LeaseError)
        lease = own_lease(node, self.node_name, cfg, attrs)
        current = _annotations(node)
        overwrite = current.get(self.keys.public_ip_overwrite)
        if overwrite and overwrite != str(attrs.public_ip):
            log.info("Overriding public ip with %r from node annotation %r",
                     overwrite, self.keys.public_ip_overwrite)
        changes = annotation_changes(current, desired_annotations(current, attrs, self.keys))
        if changes:
            self._retrying("patch node", self._patch_status,
                           {"metadata": {"annotations": changes}}, fail=LeaseError)
            log.info("Annotated node %s: %s", self.node_name, ", ".join(sorted(changes)))
        return lease

    def renew_lease(self, lease: Lease) -> Lease:
        """Kube leases (pod CIDRs) do not expire: nothing to do."""
        return lease

    def watch_leases(self, sink: Sink, stop: threading.Event) -> None:
        """Snapshot of every flannel-managed Node's lease, then their changes."""
        cfg = self.get_network_config()
        state = _WatchState()
        interrupter = threading.Thread(
            target=self._interrupt_on_stop, args=(state, stop),
            name="kube-watch-stop", daemon=True,
        )
        interrupter.start()
        backoff = self.timings.backoff()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    self._list_and_watch(cfg, sink, stop, state)
                except WatchExpiredError as err:
                    if stop.is_set():
                        break
                    log.info("Node watch expired (%s); listing nodes again", err)
                    continue
                except StoreError as err:
                    if stop.is_set():
                        break
                    if time.monotonic() - started > 10 * self.timings.backoff_max:
                        backoff.reset()  # it worked for a while: start over
                    delay = backoff.next_delay()
                    log.warning("Kubernetes API failure (%s); listing nodes again in %.1f s",
                                err, delay)
                    stop.wait(delay)
        finally:
            state.done = True
            interrupter.join(timeout=2 * self.timings.stop_poll + 1)

    # --- helpers the daemon needs ------------------------------------------------

    def wait_for_sync(self) -> None:
        """Wait until the Nodes can be listed (upstream: node controller sync).

        After ``timings.sync_timeout`` raise StoreError, or only log when
        ``cont_when_cache_not_ready`` is set.
        """
        deadline = time.monotonic() + self.timings.sync_timeout
        backoff = self.timings.backoff()
        while True:
            try:
                self._list_nodes()
                return
            except StoreError as err:
                if time.monotonic() >= deadline:
                    if self.settings.cont_when_cache_not_ready:
                        log.warning("Node list not ready (%s); continuing anyway", err)
                        return
                    raise StoreError(f"error waiting for nodes to sync state: {err}") from err
                time.sleep(min(backoff.next_delay(), max(0.0, deadline - time.monotonic())))

    def public_ip_override(self) -> ipaddress.IPv4Address | None:
        """Our Node's ``node-public-ip`` annotation (acts as --public-ip)."""
        return self.node_public_ip_override()[0]

    def previous_attrs(self, public_ip: ipaddress.IPv4Address | None) -> LeaseAttrs | None:
        """What our Node's annotations advertised (``public_ip`` is not needed here:
        the Node is ours by name)."""
        del public_ip
        node = self._retrying("get node", self._read_own_node)
        return attrs_from_annotations(_annotations(node), self.keys)

    def node_public_ip_override(
        self,
    ) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
        """Our Node's ``node-public-ip`` / ``node-public-ipv6`` annotations (acts as --public-ip)."""
        ann = _annotations(self._retrying("get node", self._read_own_node))
        found: list[Any] = []
        for key, kind in ((self.keys.node_public_ip, ipaddress.IPv4Address),
                          (self.keys.node_public_ipv6, ipaddress.IPv6Address)):
            text = ann.get(key, "")
            try:
                found.append(kind(text) if text else None)
            except ValueError as err:
                raise ConfigError(f"annotation {key}={text!r} is not a valid address") from err
        return found[0], found[1]

    def previous_vtep_mac(self, v6: bool = False) -> str | None:
        """The VTEP MAC our backend-data (or backend-v6-data) annotation advertises."""
        ann = _annotations(self._retrying("get node", self._read_own_node))
        key = self.keys.backend_v6_data if v6 else self.keys.backend_data
        mac = vtep_mac_from_backend_data(ann.get(key))
        if mac is None and ann.get(key):
            log.info("No usable VtepMAC in annotation %s; a new MAC will be chosen", key)
        return mac

    def mark_network_available(self) -> None:
        """Set NetworkUnavailable=False (FlannelIsUp) unless switched off."""
        if not self.settings.set_node_network_unavailable:
            return
        self._retrying("patch node status", self._patch_status,
                       network_available_patch(datetime.now(UTC)))
        log.info("Set condition NetworkUnavailable=False on node %s", self.node_name)

    # --- internals -------------------------------------------------------------

    def _read_own_node(self) -> JSON:
        timeout = self.timings.request_timeout
        return _json_response("GET node", self._api.read_node,
                              self.node_name, _request_timeout=(timeout, timeout))

    def _patch_status(self, body: JSON) -> None:
        timeout = self.timings.request_timeout
        _json_response("PATCH node status", self._api.patch_node_status,
                       self.node_name, body, _content_type=STRATEGIC_MERGE_PATCH,
                       _request_timeout=(timeout, timeout))

    def _retrying(
        self, what: str, fn: Callable[..., T], *args: Any,
        fail: type[FlannelError] = StoreError,
    ) -> T:
        """Call ``fn`` every retry_interval until it works or retry_deadline passes.

        Retries transport failures, 409, 429 and 5xx; raises ``fail`` otherwise
        or when the deadline passes.
        """
        deadline = time.monotonic() + self.timings.retry_deadline
        while True:
            try:
                return fn(*args)
            except StoreError as err:
                if not _retryable(err):
                    raise fail(f'failed to {what} "{self.node_name}": {err}') from err
                if time.monotonic() + self.timings.retry_interval > deadline:
                    raise fail(
                        f'timeout contacting kube-api, failed to {what} "{self.node_name}". '
                        f"Error: {err}"
                    ) from err
                log.debug("%s failed (%s); retrying", what, err)
                time.sleep(self.timings.retry_interval)

    def _list_nodes(self) -> tuple[str, list[JSON]]:
        timeout = self.timings.request_timeout
        doc = _json_response("failed to list nodes", self._api.list_node,
                             _request_timeout=(timeout, timeout))
        rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        items = doc.get("items") or []
        return rv, [item for item in items if isinstance(item, dict)]

    def _lease_of(self, cfg: NetConfig, node: JSON, state: _WatchState) -> tuple[bool, Lease | None]:
        """(usable, lease): usable is False for garbage, logged once per content."""
        name = node_name_of(node)
        try:
            lease = node_to_lease(node, self.keys, enable_ipv4=cfg.enable_ipv4,
                                  enable_ipv6=cfg.enable_ipv6)
        except PeerDataError as err:
            if state.bad.get(name) != str(err):
                log.warning("Skipping node %r: cannot turn it into a lease: %s", name, err)
                state.bad[name] = str(err)
            return False, None
        state.bad.pop(name, None)
        return True, lease

    def _list_and_watch(
        self, cfg: NetConfig, sink: Sink, stop: threading.Event, state: _WatchState
    ) -> None:
        rv, nodes = self._list_nodes()
        table = PeerTable()
        for node in nodes:
            usable, lease = self._lease_of(cfg, node, state)
            if usable:
                table.set(node_name_of(node), lease)
        sink(Snapshot(table.leases()))
        log.info("Listed %d nodes (%d flannel leases) at resourceVersion %s",
                 len(nodes), len(table.leases()), rv)
        while not stop.is_set():
            rv = self._follow(cfg, rv, table, sink, stop, state)

    def _follow(
        self, cfg: NetConfig, rv: str, table: PeerTable, sink: Sink,
        stop: threading.Event, state: _WatchState,
    ) -> str:
        """One watch request from ``rv``; returns the last resourceVersion seen."""
        t = self.timings
        resp = _call("failed to watch nodes", self._api.list_node,
                     watch=True, resource_version=rv, allow_watch_bookmarks=True,
                     timeout_seconds=int(t.watch_timeout), _preload_content=False,
                     _request_timeout=(t.request_timeout, t.watch_timeout + t.request_timeout))
        with state.lock:
            state.response = resp
        try:
            if stop.is_set():
                return rv
            for event in _events(resp):
                rv = self._handle_event(cfg, event, rv, table, sink, state)
                if stop.is_set():
                    break
            return rv
        except StoreError:
            if stop.is_set():
                return rv
            raise
        finally:
            with state.lock:
                state.response = None
            resp.close()
            resp.release_conn()

    def _handle_event(
        self, cfg: NetConfig, event: JSON, rv: str, table: PeerTable, sink: Sink,
        state: _WatchState,
    ) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            message = f"node watch error: {code} {obj.get('message', '')}"
            if code == 410:
                raise WatchExpiredError(message)
            raise KubeAPIError(message, code)
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if kind in ("ADDED", "MODIFIED"):
            usable, lease = self._lease_of(cfg, obj, state)
            if usable:
                for msg in table.set(node_name_of(obj), lease):
                    sink(msg)
        elif kind == "DELETED":
            state.bad.pop(node_name_of(obj), None)
            for msg in table.set(node_name_of(obj), None):
                sink(msg)
        return new_rv

    def _interrupt_on_stop(self, state: _WatchState, stop: threading.Event) -> None:
        """Cut the open watch stream as soon as ``stop`` is set."""
        while not stop.wait(self.timings.stop_poll):
            if state.done:
                return
        with state.lock:
            resp = state.response
            if resp is not None:
                try:
                    resp.shutdown()
                except (ValueError, RuntimeError, OSError):
                    pass


def manager_from_flags(
    flags: Flags, environ: Mapping[str, str] | None = None
) -> KubeSubnetManager:
    """The daemon's entry: connect, resolve our node, wait until Nodes can be listed."""
    env = os.environ if environ is None else environ
    manager = KubeSubnetManager.connect(settings_from_flags(flags, env), env)
    try:
        manager.wait_for_sync()
    except FlannelError:
        manager.close()
        raise
    return manager


def _events(resp: Any) -> Iterator[JSON]:
    """The JSON-lines events of a watch response."""
    buffer = b""
    try:
        for chunk in resp.stream(65536, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield _event(line)
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StoreError(f"node watch interrupted: {err}") from err
    if buffer.strip():
        yield _event(buffer)


def _event(line: bytes) -> JSON:
    try:
        doc = json.loads(line)
    except ValueError as err:
        raise StoreError(f"node watch sent a line that is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise StoreError("node watch sent an event that is not an object")
    return doc
