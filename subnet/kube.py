"""The Kubernetes subnet manager (``--kube-subnet-mgr``): the API side.

Each node's subnet is its ``spec.podCIDR``/``spec.podCIDRs``, assigned by
kube-controller-manager.  flanneld does not allocate anything here: it
advertises its attributes as Node annotations (written through the
``nodes/status`` subresource, as upstream does, so RBAC needs no ``nodes``
patch) and learns its peers from the annotations of the other Nodes.  What
to write and what a Node means are decided by the pure functions of
:mod:`subnet.kube_state`; this module reads, patches, lists and watches.

Design, and where it departs from upstream on purpose:

* Peers come from a list + watch of all Nodes.  Every (re)list produces a
  :class:`~subnet.manager.Snapshot`, so after a 410 Gone or a reconnect no
  peer is missed or left stale.  An update produces an event exactly when the
  node's lease changes, podCIDR included; a lease whose key changes is
  reported as removed and added.
* Lists are paginated (``limit``/``continue``, 500 Nodes a page, as
  client-go's pager) and each page is turned into leases before the next is
  fetched: only the leases stay in memory, never the whole NodeList.  The
  daemon's first list starts right after :meth:`KubeSubnetManager.wait_for_sync`
  (which lists one Node) and runs while the daemon sets up its devices.
* Requests go through the official client's ``Configuration`` (server, TLS,
  authentication, token refresh) and its ``RESTClientObject`` (urllib3 pool)
  as raw JSON; see :class:`Rest`.  Only those modules of the client are
  loaded (its package ``__init__`` files import every part of it), and the
  kubeconfig loader only when a kubeconfig is read: in a pod (in-cluster
  config) the client adds about 3 MiB to urllib3, not 20 MiB, and no
  pydantic, YAML or OAuth imports (``tests/unit/test_kube_imports.py``).
* A node with garbage annotations is logged once (until it changes) and
  skipped; its previous lease, if any, is kept, as upstream does.
* Annotations are compared with what we would write and only the differing
  keys are sent, as a strategic merge patch of ``nodes/status``.
* The previous VTEP MAC is read by decoding the backend-data JSON.

Why not ``kubernetes.watch.Watch`` (checked with kubernetes 37.0.3, the
range pyproject.toml allows; ``tests/integration/test_kube_manager.py``
shows both points against the API server double, ``bench/kube_watch_parse.py``
measures the cost).  The node watch parses the chunked JSON lines itself
(``_events``, about twenty-five lines) because the client's two paths each break a
promise this module keeps:

* ``deserialize=False`` (plain ``json.loads``, the only path as cheap as
  ours) fails on every ERROR event with ``KeyError('raw_object')``: a 410
  Gone cannot be told from any other failure, so the re-list that bridges
  an expired watch is lost.
* The default path turns every event into ``V1Node`` models that this
  module would throw away (:mod:`subnet.kube_state` reads the JSON): about
  ten times the CPU per event (380-410 us against 40-47 us for a 7 kB Node,
  measured on a loaded 2-core machine), and its pydantic validation ends the
  whole stream when one Node lacks a field the model requires (a
  ``status.nodeInfo`` without ``machineID``), where one bad Node must only be
  skipped.

``_events`` turns a line that is not a JSON object, or one nested too deeply
to parse, into a StoreError: the watch is re-listed, no thread dies and no
event is lost unnoticed.  A deeply nested *annotation* is a string inside the
event and is skipped with its node by :mod:`subnet.kube_state`.

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import urllib3

from subnet.lazyimport import defer_package_init

defer_package_init("kubernetes", "kubernetes.config", "kubernetes.utils")  # see the docstring
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject
from kubernetes.config.config_exception import ConfigException

from subnet.errors import (
    ConfigError,
    FlannelError,
    LeaseError,
    PeerDataError,
    StopRequested,
    StoreError,
    WatchExpiredError,
)
from subnet.kube_state import (
    JSON,
    WATCHED_KINDS,
    AnnotationKeys,
    KubeSettings,
    NodeLeaseTable,
    ObjectEvent,
    annotation_changes,
    annotations_of,
    attrs_from_annotations,
    desired_annotations,
    missing_families,
    network_available_patch,
    node_name_of,
    node_to_lease,
    normalize_annotation_prefix,
    own_lease,
    vtep_mac_from_backend_data,
)
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import Sink, Snapshot, StoreReport, ignore_store_report
from subnet.netconf import NetConfig, parse_net_config
from subnet.retry import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeAPIError(StoreError):
    """The API server answered with an HTTP error ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --- pacing ----------------------------------------------------------------------------


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
    list_page: int = 500  # objects per list request (client-go's pager uses the same)

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial, self.backoff_max)


# --- API access ------------------------------------------------------------------------


def build_api_client(settings: KubeSettings) -> Rest:
    """An API client like client-go's BuildConfigFromFlags(api_url, kubeconfig).

    kubeconfig file if given (``api_url`` overrides its server), else
    ``api_url`` alone, else in-cluster, else ``~/.kube/config``.  The
    kubeconfig loader (YAML, OAuth and OIDC helpers, and the client's
    ``ApiClient`` with pydantic) is imported only when a kubeconfig is read.
    """
    cfg = Configuration()
    try:
        if settings.kubeconfig_file:
            _load_kubeconfig(cfg, settings.kubeconfig_file)
        elif not settings.api_url:
            from kubernetes.config import incluster_config

            try:
                incluster_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=cfg
                )
            except ConfigException:
                _load_kubeconfig(cfg, None)
    except (ConfigException, OSError, ValueError, TypeError) as err:
        raise ConfigError(f"fail to create kubernetes config: {err}") from err
    if settings.api_url:
        _override_host(cfg, settings.api_url.rstrip("/"))
    cfg.retries = False  # retries live in this module's loops
    return Rest(cfg)


def _load_kubeconfig(cfg: Any, path: str | None) -> None:
    """Fill ``cfg`` from the kubeconfig at ``path`` (None: ``~/.kube/config``)."""
    from kubernetes.config import kube_config

    kube_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path, client_configuration=cfg, persist_config=False,
    )


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


NODES = "/api/v1/nodes"
NODE = "/api/v1/nodes/{name}"
NODE_STATUS = "/api/v1/nodes/{name}/status"
POD = "/api/v1/namespaces/{namespace}/pods/{name}"
LIST_PATHS = {  # WATCHED_KINDS, across all namespaces
    "pods": "/api/v1/pods",
    "namespaces": "/api/v1/namespaces",
    "networkpolicies": "/apis/networking.k8s.io/v1/networkpolicies",
}


class Rest:
    """The REST calls of this module, made with the official client's transport.

    The client's ``Configuration`` (server, TLS, proxy, the bearer token and
    its refresh hook, as the kubeconfig or in-cluster loader set them) and its
    ``RESTClientObject`` (the urllib3 pool) send each request; the answer is
    read as raw JSON.  Neither ``ApiClient`` nor the generated ``CoreV1Api``
    is used: they import pydantic and the model class of every kind (about
    0.2 s and 10 MiB of RSS at each start), for typed results this module
    would throw away.
    """

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration
        self._transport = RESTClientObject(configuration)

    def close(self) -> None:
        self._transport.close()

    def open(
        self, what: str, method: str, path: str, timeout: tuple[float, float], *,
        path_params: Mapping[str, str] | None = None, query: Sequence[tuple[str, Any]] = (),
        body: JSON | None = None, content_type: str = "",
    ) -> Any:
        """Send one request; the urllib3 response (2xx), unread.

        Raises WatchExpiredError for 410, KubeAPIError for other HTTP errors
        and StoreError for transport failures.
        """
        cfg = self.configuration
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = cfg.host + path.format_map(
            {key: quote(value, safe=cfg.safe_chars_for_path_param)
             for key, value in (path_params or {}).items()})
        if query:
            url += "?" + urlencode([(key, str(value).lower() if isinstance(value, bool) else value)
                                    for key, value in query])
        try:
            for auth in cfg.auth_settings().values():  # the bearer token, refreshed by its hook
                headers[auth["key"]] = auth["value"]
            resp = self._transport.request(  # type: ignore[no-untyped-call]
                method, url, headers=headers, body=body, _request_timeout=timeout).response
        except ApiException as err:  # TLS failures reach us this way (status 0)
            raise StoreError(f"{what}: {err.reason}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StoreError(f"{what}: {err}") from err
        if 200 <= resp.status < 300:
            return resp
        try:
            data = resp.data
        except (urllib3.exceptions.HTTPError, OSError):
            data = b""
        finally:
            resp.release_conn()
        message = f"{what}: {resp.status} {_status_message(data, resp.reason)}".rstrip()
        if resp.status == 410:
            raise WatchExpiredError(message)
        raise KubeAPIError(message, resp.status)

    def json(self, what: str, method: str, path: str, timeout: tuple[float, float],
             **options: Any) -> JSON:
        """One request whose answer is a JSON object."""
        resp = self.open(what, method, path, timeout, **options)
        try:
            doc = json.loads(resp.data)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StoreError(f"{what}: {err}") from err
        except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
            raise StoreError(f"{what}: the response is not JSON: {err}") from err
        finally:
            resp.release_conn()
        if not isinstance(doc, dict):
            raise StoreError(f"{what}: the response is not a JSON object")
        return doc

    def list_pages(
        self, what: str, path: str, timeout: tuple[float, float], page: int,
    ) -> Iterator[tuple[str, list[JSON]]]:
        """A paginated list (``limit``/``continue``): (resourceVersion, objects) per page.

        The server answers every page from one snapshot; a continue token
        that expired is a 410 (WatchExpiredError): list again from the start.
        Only one page is held at a time.
        """
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", page)]
            if token:
                query.append(("continue", token))
            doc = self.json(what, "GET", path, timeout, query=query)
            meta = doc.get("metadata") or {}
            items = doc.get("items") or []
            yield str(meta.get("resourceVersion") or ""), [i for i in items if isinstance(i, dict)]
            token = str(meta.get("continue") or "")
            if not token:
                return

    def watch(self, what: str, path: str, rv: str, timings: KubeTimings) -> Any:
        """Open a watch from ``rv`` (bookmarks on): the streaming urllib3 response."""
        query = [("watch", True), ("resourceVersion", rv), ("allowWatchBookmarks", True),
                 ("timeoutSeconds", int(timings.watch_timeout))]
        timeout = (timings.request_timeout, timings.watch_timeout + timings.request_timeout)
        return self.open(what, "GET", path, timeout, query=query)


def _status_message(body: bytes | None, reason: str | None) -> str:
    """The ``message`` of an error answer's Status object, else the HTTP reason."""
    try:
        doc = json.loads(body or b"")
    except (TypeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])
    return str(reason or "")


def _retryable(err: StoreError) -> bool:
    """Transport failures, 409, 429 and 5xx are worth retrying; other 4xx are not."""
    if isinstance(err, KubeAPIError):
        return err.status in (409, 429) or err.status >= 500
    return True


def resolve_node_name(environ: Mapping[str, str], rest: Rest, request_timeout: float = 30.0
                      ) -> str:
    """NODE_NAME, else the ``spec.nodeName`` of pod POD_NAMESPACE/POD_NAME."""
    name = environ.get("NODE_NAME", "")
    if name:
        return name
    pod = environ.get("POD_NAME", "")
    namespace = environ.get("POD_NAMESPACE", "")
    if not pod or not namespace:
        raise ConfigError("env variables POD_NAME and POD_NAMESPACE must be set")
    what = f"error retrieving pod spec for '{namespace}/{pod}'"
    doc = rest.json(what, "GET", POD, (request_timeout, request_timeout),
                    path_params={"namespace": namespace, "name": pod})
    node_name = (doc.get("spec") or {}).get("nodeName") or ""
    if not node_name:
        raise ConfigError(f"node name not present in pod spec '{namespace}/{pod}'")
    return str(node_name)


# --- the manager ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Listed:
    """One full Node list as leases: where the watch goes on from."""

    rv: str
    table: NodeLeaseTable
    nodes: int
    pages: int
    seconds: float  # listing and parsing


class _Prefetch:
    """The first Node list, made by a thread of its own (see prefetch_leases)."""

    def __init__(self, list_leases: Callable[[_WatchState], _Listed]) -> None:
        self._state = _WatchState()
        self._listed: _Listed | None = None
        self._thread = threading.Thread(target=self._run, args=(list_leases,),
                                        name="kube-node-list", daemon=True)
        self._thread.start()

    def _run(self, list_leases: Callable[[_WatchState], _Listed]) -> None:
        try:
            self._listed = list_leases(self._state)
        except FlannelError as err:  # the watch lists again and reports what fails
            log.debug("listing nodes ahead of the watch failed: %s", err)

    def take(self, stop: threading.Event, state: _WatchState, poll: float) -> _Listed | None:
        """The list once done (None if it failed or stop came first); its logged bad nodes
        move to ``state``."""
        while self._thread.is_alive():
            if stop.is_set():
                return None
            self._thread.join(poll)
        state.bad.update(self._state.bad)
        return self._listed


@dataclass(slots=True)
class _WatchState:
    """Per watch_leases call: the open stream (for interruption), bad nodes logged, and
    ``own_floor``: while set, the resourceVersion of the copy of our Node the snapshot
    holds, newer than the list the watch replays from (see _with_own_node)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    response: Any = None
    done: bool = False
    bad: dict[str, str] = field(default_factory=dict)
    own_floor: int | None = None


class KubeSubnetManager:
    """SubnetManager over the Kubernetes API: leases are Nodes' pod CIDRs."""

    def __init__(
        self,
        settings: KubeSettings,
        rest: Rest,
        *,
        node_name: str,
        timings: KubeTimings | None = None,
    ) -> None:
        self.settings = settings
        self.keys = AnnotationKeys.for_prefix(settings.annotation_prefix)
        self.node_name = node_name
        self.timings = timings or KubeTimings()
        self._rest = rest
        self._config: NetConfig | None = None
        self._config_lock = threading.Lock()
        self._prefetch: _Prefetch | None = None
        # our Node as the start-up steps share it: read once for the public IP overrides, the
        # previous attributes and the first acquire_lease (see _own_node)
        self._starting = True  # until the first acquire_lease
        self._start_node: JSON | None = None
        # our Node and lease as acquire_lease left them, kept only while the early list
        # waits to be taken: the first snapshot needs them (see _with_own_node)
        self._early_lock = threading.Lock()
        self._acquired: tuple[JSON, Lease] | None = None

    @classmethod
    def connect(
        cls,
        settings: KubeSettings,
        environ: Mapping[str, str],
        timings: KubeTimings | None = None,
    ) -> KubeSubnetManager:
        """Build the client from the settings and resolve our node's name."""
        normalize_annotation_prefix(settings.annotation_prefix)  # a bad prefix fails first
        rest = build_api_client(settings)
        timings = timings or KubeTimings()
        try:
            name = settings.node_name or resolve_node_name(
                environ, rest, timings.request_timeout
            )
        except FlannelError:
            rest.close()
            raise
        return cls(settings, rest, node_name=name, timings=timings)

    def close(self) -> None:
        self._rest.close()

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
        node, lease = self._node_to_acquire(cfg, attrs)
        current = annotations_of(node)
        overwrite = current.get(self.keys.public_ip_overwrite)
        if overwrite and overwrite != str(attrs.public_ip):
            log.info("Overriding public ip with %r from node annotation %r",
                     overwrite, self.keys.public_ip_overwrite)
        changes = annotation_changes(current, desired_annotations(current, attrs, self.keys))
        if changes:
            node = self._retrying("patch node", self._patch_status,
                                  {"metadata": {"annotations": changes}}, fail=LeaseError)
            log.info("Annotated node %s: %s", self.node_name, ", ".join(sorted(changes)))
        with self._early_lock:
            if self._prefetch is not None:  # the PATCH answers with the Node as it is now
                self._acquired = (node, lease)
        return lease

    def renew_lease(self, lease: Lease) -> Lease:
        """Kube leases (pod CIDRs) do not expire: nothing to do."""
        return lease

    def watch_leases(
        self, sink: Sink, stop: threading.Event, report: StoreReport = ignore_store_report
    ) -> None:
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
                    self._list_and_watch(cfg, sink, stop, state, report)
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
                    report(err)
                    log.warning("Kubernetes API failure (%s); listing nodes again in %.1f s",
                                err, delay)
                    stop.wait(delay)
        finally:
            state.done = True
            interrupter.join(timeout=2 * self.timings.stop_poll + 1)

    # --- helpers the daemon needs ------------------------------------------------

    def wait_for_sync(self, stop: threading.Event) -> None:
        """Wait until the Nodes can be listed (upstream: node controller sync).

        Each failure is logged.  After ``timings.sync_timeout`` raise
        StoreError, or only log when ``cont_when_cache_not_ready`` is set;
        StopRequested as soon as ``stop`` is set.
        """
        deadline = time.monotonic() + self.timings.sync_timeout
        backoff = self.timings.backoff()
        while True:
            try:
                self._rest.json("failed to list nodes", "GET", NODES, self._timeout(),
                                query=[("limit", 1)])
                return
            except StoreError as err:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self.settings.cont_when_cache_not_ready:
                        log.warning("Node list not ready (%s); continuing anyway", err)
                        return
                    raise StoreError(f"error waiting for nodes to sync state: {err}") from err
                delay = min(backoff.next_delay(), left)
                log.warning(
                    "cannot list Nodes yet: %s (retrying in %.1fs; giving up in %.0fs)",
                    err, delay, left,
                )
                if stop.wait(delay):
                    raise StopRequested("stopped while waiting for the Kubernetes API") from err

    def nodes(self) -> list[JSON]:
        """Every Node object, listed once (diagnostics; the daemon watches instead)."""
        return [node for _, page in self._node_pages() for node in page]

    def public_ip_override(self) -> ipaddress.IPv4Address | None:
        """Our Node's ``node-public-ip`` annotation (acts as --public-ip)."""
        return self.node_public_ip_override()[0]

    def public_ipv6_override(self) -> ipaddress.IPv6Address | None:
        """Our Node's ``node-public-ipv6`` annotation (acts as --public-ipv6)."""
        return self.node_public_ip_override()[1]

    def previous_attrs(self, public_ip: ipaddress.IPv4Address | None) -> LeaseAttrs | None:
        """What our Node's annotations advertised (``public_ip`` is not needed here:
        the Node is ours by name)."""
        del public_ip
        return attrs_from_annotations(annotations_of(self._own_node()), self.keys)

    def node_public_ip_override(
        self,
    ) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
        """Our Node's ``node-public-ip`` / ``node-public-ipv6`` annotations (acts as --public-ip)."""
        ann = annotations_of(self._own_node())
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
        ann = annotations_of(self._retrying("get node", self._read_own_node))
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

    def _timeout(self) -> tuple[float, float]:
        return (self.timings.request_timeout, self.timings.request_timeout)

    def _read_own_node(self) -> JSON:
        return self._rest.json("GET node", "GET", NODE, self._timeout(),
                               path_params={"name": self.node_name})

    def _own_node(self) -> JSON:
        """Our Node; the start-up steps before the first acquire_lease share one read.

        They run within a fraction of a second of each other and upstream reads its Node
        from its informer's cache, no fresher; the first acquire_lease takes the read over
        (and reads again if it lacks what acquiring needs).  Later calls read afresh.
        """
        node = self._start_node or self._retrying("get node", self._read_own_node)
        if self._starting:
            self._start_node = node
        return node

    def _node_to_acquire(self, cfg: NetConfig, attrs: LeaseAttrs) -> tuple[JSON, Lease]:
        """Our Node and our lease from it: the start-up steps' read if it will do, else a
        fresh read."""
        shared, self._start_node, self._starting = self._start_node, None, False
        if shared is not None:
            try:
                return shared, own_lease(shared, self.node_name, cfg, attrs)
            except LeaseError:  # e.g. read before our pod CIDR was assigned
                log.debug("our node as read at start-up cannot be acquired: reading it again")
        node = self._retrying("get node", self._read_own_node, fail=LeaseError)
        return node, own_lease(node, self.node_name, cfg, attrs)

    def _patch_status(self, body: JSON) -> JSON:
        """Patch our Node (status subresource); the Node as the API server stored it."""
        return self._rest.json("PATCH node status", "PATCH", NODE_STATUS, self._timeout(),
                               path_params={"name": self.node_name}, body=body,
                               content_type=STRATEGIC_MERGE_PATCH)

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

    def _node_pages(self) -> Iterator[tuple[str, list[JSON]]]:
        return self._rest.list_pages("failed to list nodes", NODES, self._timeout(),
                                     self.timings.list_page)

    def _list_leases(self, state: _WatchState) -> _Listed:
        """Every Node, page by page, turned into leases (the JSON is not kept)."""
        cfg = self.get_network_config()
        started = time.monotonic()
        table = NodeLeaseTable()
        rv, count, pages = "", 0, 0
        for rv, nodes in self._node_pages():
            for node in nodes:
                table.set(node_name_of(node), self._lease_of(cfg, node, state))
            count += len(nodes)
            pages += 1
        return _Listed(rv, table, count, pages, time.monotonic() - started)

    def _with_own_node(self, cfg: NetConfig, listed: _Listed,
                       acquired: tuple[JSON, Lease] | None, state: _WatchState
                       ) -> _Listed | None:
        """A list made ahead of acquire_lease, with our own lease as the store has it.

        Else the first snapshot may lack the lease we have just annotated, or hold it
        under another key (in dual stack the key follows the annotations, and a Node
        from IPv4 runs has no public-ipv6), and the daemon would acquire it again.
        ``acquired`` is our Node and lease as acquire_lease left them (the PATCH's
        answer, or the read acquire_lease worked from).  The list stays as it is if it
        holds that very lease, or if it was made after that version of our Node (it
        shows our acquire and whatever followed); that Node's lease goes in if the Node
        is the newer.  Without an acquire, or with resourceVersions that cannot be
        compared, our Node read now goes in.  None (list again) if it cannot be read.

        The watch replays what follows the list, older versions of our Node among them:
        a copy put in sets ``state.own_floor`` to its resourceVersion (when it is a
        number), below which _handle_event leaves our Node alone.
        """
        if acquired is not None:
            node, lease = acquired
            if listed.table.lease(self.node_name) == lease:
                return listed
            written = _rv_number(_object_rv(node))
            made = _rv_number(listed.rv)
            if written is not None and made is not None:
                if written > made:
                    listed.table.set(self.node_name, self._lease_of(cfg, node, state))
                    state.own_floor = written
                return listed
        try:
            own = self._read_own_node()
        except StoreError as err:
            log.debug("reading our node after the early list failed: %s", err)
            return None
        listed.table.set(self.node_name, self._lease_of(cfg, own, state))
        state.own_floor = _rv_number(_object_rv(own))
        return listed

    def prefetch_leases(self) -> None:
        """Start the first Node list in the background; the first watch_leases uses it.

        The daemon calls this right after wait_for_sync, so the list runs while
        it sets up its interface, devices and annotations.  Any changes made
        after that list are replayed by the watch from its resourceVersion.
        """
        self._prefetch = _Prefetch(self._list_leases)

    def _lease_of(self, cfg: NetConfig, node: JSON, state: _WatchState) -> Lease | None:
        """The Node's lease; None for an unmanaged Node or garbage (logged once per content).

        A Node whose annotations turn to garbage has no lease, as a re-list sees
        it; for our own Node the daemon then acquires again, writing them anew.
        """
        name = node_name_of(node)
        try:
            lease = node_to_lease(node, self.keys, enable_ipv4=cfg.enable_ipv4,
                                  enable_ipv6=cfg.enable_ipv6)
        except PeerDataError as err:
            if state.bad.get(name) != str(err):
                log.warning("Skipping node %r: cannot turn it into a lease: %s", name, err)
                state.bad[name] = str(err)
            return None
        note = "" if lease is None else missing_families(
            node, self.keys, lease, enable_ipv4=cfg.enable_ipv4, enable_ipv6=cfg.enable_ipv6)
        if not note:
            state.bad.pop(name, None)
        elif state.bad.get(name) != note:
            log.warning("Node %r is reached over one address family only: %s", name, note)
            state.bad[name] = note
        return lease

    def _list_and_watch(
        self, cfg: NetConfig, sink: Sink, stop: threading.Event, state: _WatchState,
        report: StoreReport,
    ) -> None:
        with self._early_lock:
            prefetch, self._prefetch = self._prefetch, None
            acquired, self._acquired = self._acquired, None
        listed = prefetch.take(stop, state, self.timings.stop_poll) if prefetch else None
        state.own_floor = None  # a list of its own holds our Node as of that list
        if listed is not None:
            listed = self._with_own_node(cfg, listed, acquired, state)
        early = listed is not None
        if listed is None:
            if stop.is_set():
                return
            listed = self._list_leases(state)
        table, rv = listed.table, listed.rv
        leases = table.leases()
        sink(Snapshot(leases))
        report(None)
        log.info("Listed %d nodes (%d flannel leases) at resourceVersion %s in %.2fs "
                 "(%d pages%s)", listed.nodes, len(leases), rv, listed.seconds, listed.pages,
                 ", made during start-up" if early else "")
        while not stop.is_set():
            rv = self._follow(cfg, rv, table, sink, stop, state)

    def _follow(
        self, cfg: NetConfig, rv: str, table: NodeLeaseTable, sink: Sink,
        stop: threading.Event, state: _WatchState,
    ) -> str:
        """One watch request from ``rv``; returns the last resourceVersion seen."""
        resp = self._rest.watch("failed to watch nodes", NODES, rv, self.timings)
        return _consume(resp, state, stop, rv,
                        lambda event, rv: self._handle_event(cfg, event, rv, table, sink, state))

    def _handle_event(
        self, cfg: NetConfig, event: JSON, rv: str, table: NodeLeaseTable, sink: Sink,
        state: _WatchState,
    ) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            raise _watch_error("node", obj)
        new_rv = str(_object_rv(obj) or rv)
        if state.own_floor is not None and node_name_of(obj) == self.node_name:
            number = _rv_number(new_rv)
            if number is not None and number < state.own_floor:
                return new_rv  # older than the copy of our Node the snapshot took
            state.own_floor = None
        if kind in ("ADDED", "MODIFIED"):
            for msg in table.set(node_name_of(obj), self._lease_of(cfg, obj, state)):
                sink(msg)
        elif kind == "DELETED":
            state.bad.pop(node_name_of(obj), None)
            for msg in table.set(node_name_of(obj), None):
                sink(msg)
        return new_rv

    def _interrupt_on_stop(self, state: _WatchState, stop: threading.Event) -> None:
        _interrupt_on_stop(state, stop, self.timings.stop_poll)

    def object_watch(self, kind: str) -> ObjectWatch:
        """A list+watch of ``kind`` (one of WATCHED_KINDS) over this manager's API client."""
        return ObjectWatch(self._rest, kind, self.timings)


def _interrupt_on_stop(state: _WatchState, stop: threading.Event, poll: float) -> None:
    """Cut the open watch stream as soon as ``stop`` is set."""
    while not stop.wait(poll):
        if state.done:
            return
    with state.lock:
        resp = state.response
        if resp is not None:
            try:
                resp.shutdown()
            except (ValueError, RuntimeError, OSError):
                pass


class ObjectWatch:
    """List+watch of one kind across all namespaces (the NetworkPolicy informers).

    Same promises as the Node watch: every (re)list is an ``ObjectEvent``
    SNAPSHOT, a 410 Gone re-lists at once, other failures re-list after an
    exponential backoff with jitter (``report`` hears each failure and None
    after a good list).  Between failures the caller keeps what it has, so
    the last rules stay in force while the API server is unreachable.
    """

    def __init__(self, rest: Rest, kind: str, timings: KubeTimings | None = None) -> None:
        if kind not in WATCHED_KINDS:
            raise ConfigError(f"cannot watch {kind!r}: one of {', '.join(WATCHED_KINDS)}")
        self.kind = kind
        self.timings = timings or KubeTimings()
        self._rest = rest
        self._path = LIST_PATHS[kind]

    def run(
        self, sink: Callable[[ObjectEvent], None], stop: threading.Event,
        report: StoreReport = ignore_store_report,
    ) -> None:
        state = _WatchState()
        t = self.timings
        interrupter = threading.Thread(target=_interrupt_on_stop, args=(state, stop, t.stop_poll),
                                       name=f"kube-watch-{self.kind}-stop", daemon=True)
        interrupter.start()
        backoff = t.backoff()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    rv = self._relist(sink)
                    report(None)
                    while not stop.is_set():
                        rv = self._follow(rv, sink, stop, state)
                except WatchExpiredError as err:
                    log.info("%s watch expired (%s); listing again", self.kind, err)
                except StoreError as err:
                    if stop.is_set():
                        break
                    if time.monotonic() - started > 10 * t.backoff_max:
                        backoff.reset()
                    delay = backoff.next_delay()
                    report(err)
                    log.warning("Kubernetes API failure watching %s (%s); listing again in "
                                "%.1f s (the current rules stay)", self.kind, err, delay)
                    stop.wait(delay)
        finally:
            state.done = True
            interrupter.join(timeout=2 * t.stop_poll + 1)

    def list_once(self) -> tuple[str, tuple[JSON, ...]]:
        """(resourceVersion, every object of the kind): one list request."""
        timeout = (self.timings.request_timeout, self.timings.request_timeout)
        rv, items = "", []
        for rv, page in self._rest.list_pages(f"failed to list {self.kind}", self._path, timeout,
                                              self.timings.list_page):
            items += page
        return rv, tuple(items)

    def _relist(self, sink: Callable[[ObjectEvent], None]) -> str:
        rv, items = self.list_once()
        sink(ObjectEvent(self.kind, "SNAPSHOT", items))
        log.info("Listed %d %s at resourceVersion %s", len(items), self.kind, rv)
        return rv

    def _follow(self, rv: str, sink: Callable[[ObjectEvent], None], stop: threading.Event,
                state: _WatchState) -> str:
        resp = self._rest.watch(f"failed to watch {self.kind}", self._path, rv, self.timings)
        return _consume(resp, state, stop, rv, lambda event, rv: self._handle(event, rv, sink))

    def _handle(self, event: JSON, rv: str, sink: Callable[[ObjectEvent], None]) -> str:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            return rv
        if kind == "ERROR":
            raise _watch_error(self.kind, obj)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            sink(ObjectEvent(self.kind, str(kind), (obj,)))
        return str(_object_rv(obj) or rv)


def _object_rv(obj: JSON) -> object:
    """An object's ``metadata.resourceVersion`` as the API sent it (None if absent)."""
    return (obj.get("metadata") or {}).get("resourceVersion")


def _rv_number(rv: object) -> int | None:
    """A resourceVersion as a number to order by; None if it is not one.

    The API long called them opaque; KEP-5504 (stable in Kubernetes 1.35, client-go's
    ``CompareResourceVersion``) makes those of one resource comparable: positive decimal
    integers without leading zeros, as kube-apiserver has always written etcd's revisions.
    """
    if isinstance(rv, str) and rv.isascii() and rv.isdigit() and not rv.startswith("0"):
        return int(rv)
    return None


def _watch_error(what: str, status: JSON) -> StoreError:
    """The exception for a watch's ERROR event: WatchExpiredError for 410 Gone."""
    code = int(status.get("code") or 0)
    message = f"{what} watch error: {code} {status.get('message', '')}"
    if code == 410:
        return WatchExpiredError(message)
    return KubeAPIError(message, code)


def _consume(
    resp: Any, state: _WatchState, stop: threading.Event, rv: str,
    handle: Callable[[JSON, str], str],
) -> str:
    """Feed one open watch response to ``handle``; returns the last resourceVersion seen.

    The response is registered in ``state`` so that stop can cut it; a stream
    broken by stop is not an error.
    """
    with state.lock:
        state.response = resp
    try:
        if stop.is_set():
            return rv
        for event in _events(resp):
            rv = handle(event, rv)
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


def connect_and_sync(
    settings: KubeSettings, stop: threading.Event, environ: Mapping[str, str] | None = None
) -> KubeSubnetManager:
    """The daemon's entry: connect, resolve our node, wait until Nodes can be listed."""
    env = os.environ if environ is None else environ
    manager = KubeSubnetManager.connect(settings, env)
    try:
        manager.wait_for_sync(stop)
    except FlannelError:
        manager.close()
        raise
    manager.prefetch_leases()
    return manager


def _events(resp: Any) -> Iterator[JSON]:
    """The JSON-lines events of a watch response (see "Why not kubernetes.watch" above)."""
    buffer = b""
    try:
        for chunk in resp.stream(65536, decode_content=True):
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    yield _event(line)
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise StoreError(f"node watch interrupted: {err}") from err
    if buffer.strip():
        yield _event(buffer)


def _event(line: bytes) -> JSON:
    """One event; StoreError (the watch is re-listed) for a line that is not a JSON object."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply
        raise StoreError(f"node watch sent a line that is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise StoreError("node watch sent an event that is not an object")
    return doc
