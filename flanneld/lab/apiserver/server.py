"""A small, honest Kubernetes API server double for Nodes, Namespaces, Pods, ConfigMaps
and NetworkPolicies.

It speaks the real REST protocol on ``http://127.0.0.1:<port>`` so the
official ``kubernetes`` client can be pointed at it unchanged.  Every kind is
handled by the same code (:data:`RESOURCES` names them): Nodes and Namespaces
(cluster-scoped), Pods, ConfigMaps and networking.k8s.io/v1 NetworkPolicies
(namespaced, also listed and watched across all namespaces):

* a collection ``GET`` lists (``metadata.resourceVersion`` of the list; with
  ``limit``, one page and a ``continue`` token for the rest, all pages from one
  snapshot, 410 Expired once that snapshot is older than the history) or,
  with ``watch=true`` (also ``True``/``1``), streams chunked JSON lines
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}``.
  A watch without ``resourceVersion`` (or ``"0"``) starts with synthetic
  ADDED events for every object; a watch from ``N`` replays every change after
  ``N`` if still retained, else answers 410 "too old resource version"
  (as an ERROR event by default, or as an HTTP 410 when
  ``gone_as_http_status`` is set).  ``timeoutSeconds`` ends the stream
  cleanly, after a BOOKMARK when ``allowWatchBookmarks`` is set.
  ``labelSelector`` and ``fieldSelector`` filter lists and watches; an object
  that stops matching reaches a watch as DELETED, one that starts as ADDED.
* a collection ``POST`` creates (201; 409 AlreadyExists; 404 when the
  namespace does not exist), a collection ``DELETE`` deletes what matches.
* an item ``GET|PUT|PATCH|DELETE`` (``.../{name}[/status]``): PATCH understands
  strategic-merge-patch+json, merge-patch+json and json-patch+json; for kinds
  with a status subresource (Node, Namespace, Pod) the status subresource
  keeps ``spec`` and the main resource keeps ``status``, as the real
  strategies do; a no-op write changes nothing; a stale
  ``metadata.resourceVersion`` is a 409 Conflict.
* Namespaces always carry ``kubernetes.io/metadata.name=<name>``; ``default``
  and ``kube-system`` exist from the start; deleting a namespace deletes its
  objects at once (no Terminating phase).  Like a real API server only in
  what it stores: it does no defaulting (a NetworkPolicy keeps an empty
  ``policyTypes``, a port keeps no ``protocol``) and no validation beyond
  names, so consumers must default as the reference notes say.

Errors are ``Status`` objects with the real reasons (NotFound, Conflict,
Expired, BadRequest, UnsupportedMediaType, MethodNotAllowed, Unauthorized).

With ``tls`` (an ``ssl.SSLContext``) it serves HTTPS, as a client's
in-cluster configuration requires; once :meth:`issue_token` has issued a
service-account token (what the kubelet asks the TokenRequest API for), every
request must carry one of the issued tokens (``Authorization: Bearer``) or gets
401.  Authorization (RBAC) is not checked.

Test control: put/get/update/delete any object (status included), nodes, :meth:`compact`, :meth:`pause_watches`,
:meth:`drop_watches`, :meth:`stop`/:meth:`start` on the same port (an API
server restart: every open connection is cut), :meth:`fail_next` (inject
error responses) and :attr:`requests` (what clients sent).
"""

from __future__ import annotations

import bisect
import copy
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .selectors import Matcher, SelectorError, field_matcher, label_matcher

JSON = dict[str, Any]

PATCH_TYPES = {
    "application/strategic-merge-patch+json": "strategic",
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
}
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
DEFAULT_WATCH_TIMEOUT = 1800
MAX_OPEN_LISTS = 100  # unfinished paginated lists kept for their continue tokens
HANDSHAKE_TIMEOUT = 10.0
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the double received it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


@dataclass(slots=True)
class _Fault:
    method: str | None
    path_suffix: str | None
    code: int
    remaining: int
    query_key: str | None = None


class ApiError(Exception):
    """Raised inside the double to answer with a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        doc: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            doc["details"] = self.details
        return doc


def _not_found(kind: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind})


def _conflict(kind: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "kind": kind},
    )


def _expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Resource:
    """One kind the double serves: its URL name, kind, group/version and scope."""

    plural: str
    kind: str
    group_version: str  # "v1" (core, under /api) or "group/version" (under /apis)
    namespaced: bool
    status: bool  # a status subresource: the main endpoint keeps status, /status keeps spec


RESOURCES = (
    Resource("nodes", "Node", "v1", namespaced=False, status=True),
    Resource("namespaces", "Namespace", "v1", namespaced=False, status=True),
    Resource("pods", "Pod", "v1", namespaced=True, status=True),
    Resource("configmaps", "ConfigMap", "v1", namespaced=True, status=False),
    Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", namespaced=True,
             status=False),
)
BY_PLURAL = {r.plural: r for r in RESOURCES}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
INITIAL_NAMESPACES = ("default", "kube-system")
Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True, slots=True)
class _Event:
    rv: int
    plural: str
    type: str
    obj: JSON
    before: JSON | None  # the previous state of a MODIFIED object


@dataclass(frozen=True, slots=True)
class _Paged:
    """What a list's continue token stands for: the rest of its snapshot."""

    scope: tuple[str, str | None, str, str]  # kind, namespace, label and field selectors
    rv: int
    rest: list[JSON]


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL names: a collection (name None) or one object, maybe its status."""

    resource: Resource
    namespace: str | None  # None: all namespaces (or a cluster-scoped kind)
    name: str | None
    status: bool


@dataclass(frozen=True, slots=True)
class _Filter:
    """Which events and objects a list or watch returns."""

    resource: Resource
    namespace: str | None
    matchers: tuple[Matcher, ...]

    def accepts(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return all(match(obj) for match in self.matchers)


class KubeAPIDouble:
    """The API server double; use as a context manager or call start/close."""

    def __init__(
        self, *, history: int = 1000, first_resource_version: int = 1000, host: str = "127.0.0.1",
        port: int = 0, tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.history_limit = history
        self.gone_as_http_status = False
        self.requests: list[Request] = []
        self._cond = threading.Condition()
        self._rv = first_resource_version
        self._compacted = first_resource_version  # events at or below are gone
        self._history: list[_Event] = []
        self._pages: dict[str, _Paged] = {}  # continue token -> the rest of its list
        self._objects: dict[str, dict[Key, JSON]] = {r.plural: {} for r in RESOURCES}
        self._tokens: dict[str, str] = {}  # bearer token -> the user it authenticates
        self._faults: list[_Fault] = []
        self._epoch = 0  # bumped to cut every open watch
        self._paused = False
        self._clean_drop = False
        self._open_watches = 0
        self._lists = 0  # lists made (their first pages)
        self._uid = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = port  # 0: any free port, kept across stop/start
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        for name in INITIAL_NAMESPACES:  # present from the start, as in a fresh cluster
            ns = _namespace_object(name)
            self._objects["namespaces"][("", name)] = self._stamp(ns)

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        """Listen (again) on ``host``, on the same port as before if any."""
        if self._server is not None:
            return self
        server = _Server((self.host, self._port), _Handler, self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"kubeapi-{self._port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; the state is kept."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            _cut(conn)
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    # --- test control: state ---------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def put_object(self, obj: JSON) -> JSON:
        """Create or replace any served object as given, status included (no API rules)."""
        resource = _resource_of(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ValueError("the object needs metadata.name")
        key = (str(meta.get("namespace", "")) if resource.namespaced else "", str(meta["name"]))
        with self._cond:
            old = self._objects[resource.plural].get(key)
            new = copy.deepcopy(obj)
            if old is not None:
                for field in ("uid", "creationTimestamp"):
                    new["metadata"][field] = old["metadata"][field]
            return self._write(resource, key, new, old)

    def get_object(self, plural: str, name: str, namespace: str = "") -> JSON:
        """A copy of a stored object (KeyError if absent)."""
        with self._cond:
            found = self._objects[plural].get((namespace, name))
            if found is None:
                raise KeyError(f"{plural} {namespace}/{name}")
            return copy.deepcopy(found)

    def list_objects(self, plural: str, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of one kind (in ``namespace`` if given)."""
        with self._cond:
            return [copy.deepcopy(obj) for (ns, _), obj in sorted(self._objects[plural].items())
                    if namespace is None or ns == namespace]

    def update_object(
        self, plural: str, name: str, mutate: Callable[[JSON], None], namespace: str = ""
    ) -> JSON:
        """Change an object in place through ``mutate`` (one MODIFIED event)."""
        with self._cond:
            key = (namespace, name)
            old = self._objects[plural].get(key)
            if old is None:
                raise _not_found(plural, name)
            new = copy.deepcopy(old)
            mutate(new)
            return self._write(BY_PLURAL[plural], key, new, old)

    def delete_object(self, plural: str, name: str, namespace: str = "") -> None:
        """Delete an object (a namespace takes its objects with it)."""
        with self._cond:
            self._delete(BY_PLURAL[plural], (namespace, name))

    def add_node(
        self,
        name: str,
        *,
        pod_cidr: str | None = None,
        pod_cidrs: list[str] | None = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        conditions: list[JSON] | None = None,
    ) -> JSON:
        """Create a Node (``pod_cidrs`` defaults to ``[pod_cidr]``)."""
        spec: JSON = {}
        if pod_cidr is not None:
            spec["podCIDR"] = pod_cidr
            spec["podCIDRs"] = list(pod_cidrs) if pod_cidrs is not None else [pod_cidr]
        elif pod_cidrs:
            spec["podCIDR"] = pod_cidrs[0]
            spec["podCIDRs"] = list(pod_cidrs)
        if conditions is None:
            conditions = [
                {
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": _now(), "lastTransitionTime": _now(),
                }
            ]
        node: JSON = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           **(labels or {})},
                "annotations": dict(annotations or {}),
            },
            "spec": spec,
            "status": {"conditions": conditions},
        }
        with self._cond:
            if ("", name) in self._objects["nodes"]:
                raise ValueError(f"node {name} exists")
            return self._write(BY_PLURAL["nodes"], ("", name), node, None)

    def update_node(self, name: str, mutate: Callable[[JSON], None]) -> JSON:
        """Change a Node in place through ``mutate`` (one MODIFIED event)."""
        return self.update_object("nodes", name, mutate)

    def annotate_node(self, name: str, annotations: Mapping[str, str | None]) -> JSON:
        """Set (or, with None, remove) annotations of a Node."""

        def change(node: JSON) -> None:
            current = node["metadata"].setdefault("annotations", {})
            for key, value in annotations.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value

        return self.update_node(name, change)

    def delete_node(self, name: str) -> None:
        self.delete_object("nodes", name)

    def node(self, name: str) -> JSON:
        """A copy of the stored Node."""
        with self._cond:
            return copy.deepcopy(self._get(BY_PLURAL["nodes"], ("", name)))

    def add_pod(self, namespace: str, name: str, node_name: str) -> JSON:
        return self.put_object({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "x"}]},
        })

    def issue_token(self, namespace: str, service_account: str) -> str:
        """A new token for ``namespace/service_account``; from now on every request needs one."""
        token = secrets.token_urlsafe(32)
        with self._cond:
            self._tokens[token] = f"system:serviceaccount:{namespace}:{service_account}"
        return token

    def _authenticate(self, header: str) -> None:
        if not self._tokens:
            return
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self._tokens:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def put_configmap(self, namespace: str, name: str, data: dict[str, str]) -> JSON:
        return self.put_object({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "data": dict(data),
        })

    def configmap(self, namespace: str, name: str) -> JSON:
        return self.get_object("configmaps", name, namespace)

    # --- test control: watches and faults ----------------------------------------

    def compact(self) -> int:
        """Forget the event history: watches from older versions get 410."""
        with self._cond:
            self._compacted = self._rv
            self._history.clear()
            self._cond.notify_all()
            return self._rv

    def drop_watches(self, *, clean: bool = False) -> None:
        """End every open watch: abruptly (cut the connection) or cleanly."""
        with self._cond:
            self._epoch += 1
            self._clean_drop = clean
            self._cond.notify_all()

    @contextmanager
    def watches_paused(self) -> Iterator[None]:
        """Open watches deliver nothing until the block ends (a slow watcher)."""
        with self._cond:
            self._paused = True
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    def wait_for_watches(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least ``count`` watch streams are open."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._open_watches >= count, timeout):
                raise TimeoutError(f"{self._open_watches} open watches, wanted {count}")

    def wait_for_lists(self, count: int = 1, timeout: float = 5.0) -> None:
        """Block until at least ``count`` lists have been made (their first pages taken)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._lists >= count, timeout):
                raise TimeoutError(f"{self._lists} lists made, wanted {count}")

    def fail_next(
        self, count: int = 1, code: int = 500, *, method: str | None = None,
        path_suffix: str | None = None, query_key: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with error ``code``
        (``query_key``: only requests with that query parameter, e.g. ``continue``)."""
        with self._cond:
            self._faults.append(_Fault(method, path_suffix, code, count, query_key))

    def requests_matching(self, method: str, path_suffix: str = "") -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    # --- state internals (hold self._cond) ----------------------------------------

    def _get(self, resource: Resource, key: Key) -> JSON:
        found = self._objects[resource.plural].get(key)
        if found is None:
            raise _not_found(resource.plural, key[1])
        return found

    def _stamp(self, obj: JSON) -> JSON:
        meta = obj["metadata"]
        if "uid" not in meta:
            self._uid += 1
            meta["uid"] = f"00000000-0000-4000-8000-{self._uid:012d}"
            meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = str(self._rv)
        return obj

    def _write(self, resource: Resource, key: Key, obj: JSON, before: JSON | None) -> JSON:
        """Store ``obj`` at ``key`` with a new resourceVersion and record the event."""
        self._rv += 1
        obj["kind"], obj["apiVersion"] = resource.kind, resource.group_version
        obj["metadata"]["name"] = key[1]
        if resource.namespaced:
            obj["metadata"]["namespace"] = key[0]
        if resource.plural == "namespaces":
            obj["metadata"].setdefault("labels", {})[NAMESPACE_NAME_LABEL] = key[1]
        self._objects[resource.plural][key] = self._stamp(obj)
        self._record(resource.plural, "MODIFIED" if before is not None else "ADDED", obj, before)
        return copy.deepcopy(obj)

    def _delete(self, resource: Resource, key: Key) -> JSON:
        obj = self._get(resource, key)
        if resource.plural == "namespaces":  # no Terminating phase: contents go at once
            for other in RESOURCES:
                if other.namespaced:
                    for inner in [k for k in self._objects[other.plural] if k[0] == key[1]]:
                        self._delete(other, inner)
        del self._objects[resource.plural][key]
        self._rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(resource.plural, "DELETED", gone, None)
        return gone

    def _record(self, plural: str, kind: str, obj: JSON, before: JSON | None) -> None:
        self._history.append(_Event(self._rv, plural, kind, copy.deepcopy(obj), before))
        while len(self._history) > self.history_limit:
            self._compacted = self._history.pop(0).rv
        self._cond.notify_all()

    def _take_fault(self, method: str, path: str, query: Mapping[str, str]) -> int | None:
        for fault in self._faults:
            if fault.remaining <= 0:
                continue
            if fault.method is not None and fault.method != method:
                continue
            if fault.path_suffix is not None and not path.endswith(fault.path_suffix):
                continue
            if fault.query_key is not None and fault.query_key not in query:
                continue
            fault.remaining -= 1
            return fault.code
        return None

    # --- request handling -------------------------------------------------------

    def handle(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        path = split.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        content_type = handler.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            body = self._read_body(handler)
            with self._cond:
                self._authenticate(handler.headers.get("Authorization", ""))
                self.requests.append(Request(method, path, query, content_type, body))
                fault = self._take_fault(method, path, query)
            if fault is not None:
                reason = {410: "Expired"}.get(fault, "InternalError" if fault >= 500 else
                                              "BadRequest")
                raise ApiError(fault, reason, f"injected failure {fault}")
            target = _route(path)
            if target.name is None:
                self._collection(handler, method, target, query, body)
            else:
                code, doc = self._item(method, target, content_type, body)
                send_json(handler, code, doc)
        except ApiError as err:
            send_json(handler, err.code, err.status())

    def _read_body(self, handler: _Handler) -> Any:
        length = int(handler.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = handler.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError as err:
            raise ApiError(400, "BadRequest", f"invalid JSON body: {err}") from err

    def _collection(self, handler: _Handler, method: str, target: _Target,
                    query: dict[str, str], body: Any) -> None:
        resource = target.resource
        if method == "POST" and (target.namespace is not None or not resource.namespaced):
            send_json(handler, 201, self._create(target, body))
            return
        if method not in ("GET", "DELETE"):
            raise _not_allowed(method)
        selected = _filter(target, query)
        if method == "DELETE":  # deletecollection
            with self._cond:
                keys = [k for k, obj in sorted(self._objects[resource.plural].items())
                        if selected.accepts(obj)]
                gone = [self._delete(resource, key) for key in keys]
            send_json(handler, 200, _list_doc(resource, self.resource_version, gone))
        elif query.get("watch", "") in _TRUE:
            self._watch(handler, selected, query)
        else:
            send_body(handler, 200, self._list(target, selected, query))

    def _list(self, target: _Target, selected: _Filter, query: dict[str, str]) -> bytes:
        """A list, or one page of it with ``limit``; ``continue`` fetches the next page.

        The pages of one list come from the snapshot its first page was taken
        from (later writes do not show); a continue token older than the
        retained history is 410 Expired, as when etcd has compacted it.
        """
        resource = target.resource
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as err:
            raise ApiError(400, "BadRequest", f"invalid limit: {err}") from err
        token = query.get("continue", "")
        scope = (resource.plural, target.namespace, query.get("labelSelector", ""),
                 query.get("fieldSelector", ""))
        with self._cond:
            if token:
                paged = self._pages.get(token)
                if paged is None or paged.scope != scope:
                    raise ApiError(400, "BadRequest", "continue key is not valid")
                if paged.rv < self._compacted:
                    raise ApiError(410, "Expired", "The provided continue parameter is too old "
                                   "to display a consistent list result. You can start a new "
                                   "list without the continue parameter.")
                rv, items = paged.rv, paged.rest
            else:
                rv = self._rv
                self._lists += 1
                self._cond.notify_all()
                # no copies: a stored object is never changed in place (every write stores
                # a new one), so the snapshot stays as it was
                items = [obj for _, obj in
                         sorted(self._objects[resource.plural].items()) if selected.accepts(obj)]
            rest: list[JSON] = []
            if 0 < limit < len(items):
                items, rest = items[:limit], items[limit:]
                following = secrets.token_urlsafe(12)
                self._pages[following] = _Paged(scope, rv, rest)
                while len(self._pages) > MAX_OPEN_LISTS:  # the oldest unfinished list goes
                    del self._pages[next(iter(self._pages))]
        meta: JSON = {"resourceVersion": str(rv)}
        if rest:
            meta["continue"] = following
            meta["remainingItemCount"] = len(rest)
        # encoded now, on every request, as kube-apiserver encodes a list (its watch cache
        # keeps each version encoded for watchers, not for lists); compact, as Go writes it
        return _COMPACT.encode({
            "kind": f"{resource.kind}List", "apiVersion": resource.group_version,
            "metadata": meta,
            "items": [{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                      for obj in items],
        }).encode()

    def _create(self, target: _Target, body: Any) -> JSON:
        resource = target.resource
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", f"POST needs a {resource.kind} object")
        meta = body["metadata"]
        name = meta.get("name")
        with self._cond:
            if not name and meta.get("generateName"):
                self._uid += 1
                name = f"{meta['generateName']}{self._uid:05x}"
            if not isinstance(name, str) or not name:
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or "
                               "generateName is required")
            namespace = target.namespace or ""
            if resource.namespaced:
                if meta.get("namespace", namespace) != namespace:
                    raise ApiError(400, "BadRequest", "the namespace of the provided object "
                                   "does not match the namespace sent on the request")
                if ("", namespace) not in self._objects["namespaces"]:
                    raise _not_found("namespaces", namespace)
            key = (namespace, name)
            if key in self._objects[resource.plural]:
                raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists',
                               {"name": name, "kind": resource.plural})
            new = copy.deepcopy(body)
            for field in ("uid", "resourceVersion", "creationTimestamp"):
                new["metadata"].pop(field, None)
            if resource.status:  # status is written through /status only
                new["status"] = _initial_status(resource)
            return self._write(resource, key, new, None)

    def _item(self, method: str, target: _Target, content_type: str, body: Any
              ) -> tuple[int, JSON]:
        resource = target.resource
        key = (target.namespace or "", target.name or "")
        with self._cond:
            old = self._get(resource, key)
            if method == "GET":
                return 200, copy.deepcopy(old)
            if method == "DELETE" and not target.status:
                gone = self._delete(resource, key)
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success", "details": {
                                 "name": key[1], "kind": resource.plural,
                                 "uid": gone["metadata"]["uid"]}}
            if method == "PATCH":
                new = _apply_patch(old, content_type, body)
            elif method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", f"PUT needs a {resource.kind} object")
                new = copy.deepcopy(body)
            else:
                raise _not_allowed(method)
            return 200, self._update(resource, key, old, new, target.status)

    def _update(self, resource: Resource, key: Key, old: JSON, new: JSON, status: bool) -> JSON:
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        wanted = meta.get("resourceVersion")
        if wanted not in (None, "") and wanted != old["metadata"]["resourceVersion"]:
            raise _conflict(resource.plural, key[1])
        if meta.get("name", key[1]) != key[1]:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        for field in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        new["kind"], new["apiVersion"] = resource.kind, resource.group_version
        if resource.plural == "namespaces":
            meta.setdefault("labels", {})[NAMESPACE_NAME_LABEL] = key[1]
        if resource.status:
            keep = "spec" if status else "status"  # what this endpoint cannot change
            if keep in old:
                new[keep] = copy.deepcopy(old[keep])
            else:
                new.pop(keep, None)
        if new == old:
            return copy.deepcopy(old)
        return self._write(resource, key, new, old)

    # --- watch -------------------------------------------------------------------

    def _watch(self, handler: _Handler, selected: _Filter, query: dict[str, str]) -> None:
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError as err:
            raise ApiError(400, "BadRequest", f"bad timeoutSeconds: {err}") from err
        bookmarks = query.get("allowWatchBookmarks", "") in _TRUE
        requested = query.get("resourceVersion", "")
        with self._cond:
            epoch = self._epoch
            initial: list[JSON] = []
            if requested in ("", "0"):
                cursor = self._rv
                initial = [{"type": "ADDED", "object": copy.deepcopy(obj)} for _, obj in
                           sorted(self._objects[selected.resource.plural].items())
                           if selected.accepts(obj)]
            else:
                try:
                    cursor = int(requested)
                except ValueError as err:
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {requested!r}") from err
                if cursor < self._compacted:
                    if self.gone_as_http_status:
                        raise _expired(cursor, self._compacted)
                    initial = [{"type": "ERROR", "object": _expired(cursor, self._compacted).status()}]
                    cursor = -1
            self._open_watches += 1
            self._cond.notify_all()
        try:
            self._stream(handler, selected, initial, cursor, epoch, timeout, bookmarks)
        finally:
            with self._cond:
                self._open_watches -= 1

    def _stream(self, handler: _Handler, selected: _Filter, initial: list[JSON], cursor: int,
                epoch: int, timeout: float, bookmarks: bool) -> None:
        handler.start_stream()
        if not handler.write_event_lines(initial) or cursor < 0:
            handler.end_stream()
            return
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                events, cursor, ending = self._next_events(selected, cursor, epoch, deadline)
            if ending == "cut":
                handler.cut()
                return
            if not handler.write_event_lines(events):
                return
            if ending == "expired":
                handler.end_stream()
                return
            if ending == "timeout":
                if bookmarks:
                    handler.write_event_lines([{"type": "BOOKMARK", "object": {
                        "kind": selected.resource.kind,
                        "apiVersion": selected.resource.group_version,
                        "metadata": {"resourceVersion": str(cursor)}}}])
                handler.end_stream()
                return

    def _next_events(self, selected: _Filter, cursor: int, epoch: int, deadline: float
                     ) -> tuple[list[JSON], int, str]:
        """Wait for news after ``cursor``; returns (events, new cursor, ending)."""
        while True:
            if self._epoch != epoch:
                if self._clean_drop and self._server is not None:
                    return [], cursor, "timeout"
                return [], cursor, "cut"
            if not self._paused:
                if cursor < self._compacted:
                    if self.gone_as_http_status:
                        return [], cursor, "expired"
                    error = {"type": "ERROR", "object": _expired(cursor, self._compacted).status()}
                    return [error], cursor, "expired"
                # the history is in resourceVersion order: skip what this watch has seen
                start = bisect.bisect_right(self._history, cursor, key=_event_rv)
                news = self._history[start:]
                if news:
                    cursor = news[-1].rv
                    events = [e for e in (_as_seen(selected, event) for event in news) if e]
                    if events:
                        return events, cursor, ""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], max(cursor, self._rv) if not self._paused else cursor, "timeout"
            self._cond.wait(min(remaining, 0.5))


def _event_rv(event: _Event) -> int:
    return event.rv


def _as_seen(selected: _Filter, event: _Event) -> JSON | None:
    """The event as a filtered watch sees it (an object leaving the filter is DELETED)."""
    if event.plural != selected.resource.plural:
        return None
    now = selected.accepts(event.obj)
    if event.type != "MODIFIED":
        return {"type": event.type, "object": copy.deepcopy(event.obj)} if now else None
    before = selected.accepts(event.before)
    if not now and not before:
        return None
    kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED"
    return {"type": kind, "object": copy.deepcopy(event.obj)}


def _route(path: str) -> _Target:
    """Map a URL path onto a resource, namespace, name and subresource."""
    parts = path.split("/")[1:]
    if parts[:2] == ["api", "v1"]:
        group_version, rest = "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise _no_such_resource()
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in BY_PLURAL \
            and BY_PLURAL[rest[2]].namespaced:
        namespace, rest = rest[1], rest[2:]
    resource = BY_PLURAL.get(rest[0]) if rest else None
    if resource is None or resource.group_version != group_version \
            or (namespace is None and len(rest) > 1 and resource.namespaced):
        raise _no_such_resource()
    if len(rest) == 1:
        return _Target(resource, namespace, None, False)
    if len(rest) == 2 or (len(rest) == 3 and rest[2] == "status" and resource.status):
        return _Target(resource, namespace, rest[1], len(rest) == 3)
    raise _no_such_resource()


def _filter(target: _Target, query: dict[str, str]) -> _Filter:
    matchers: list[Matcher] = []
    try:
        if query.get("labelSelector"):
            matchers.append(label_matcher(query["labelSelector"]))
        if query.get("fieldSelector"):
            matchers.append(field_matcher(query["fieldSelector"]))
    except SelectorError as err:
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {err}") from err
    return _Filter(target.resource, target.namespace, tuple(matchers))


def _list_doc(resource: Resource, rv: int, items: list[JSON]) -> JSON:
    for item in items:
        item.pop("kind", None)
        item.pop("apiVersion", None)
    return {"kind": f"{resource.kind}List", "apiVersion": resource.group_version,
            "metadata": {"resourceVersion": str(rv)}, "items": items}


def _resource_of(obj: JSON) -> Resource:
    for resource in RESOURCES:
        if obj.get("kind") == resource.kind:
            return resource
    raise ValueError(f"the double does not serve kind {obj.get('kind')!r}")


def _namespace_object(name: str) -> JSON:
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {NAMESPACE_NAME_LABEL: name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _initial_status(resource: Resource) -> JSON:
    return {"pods": {"phase": "Pending"}, "namespaces": {"phase": "Active"}}.get(
        resource.plural, {})


def _no_such_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the "
                    f"requested resource ({method})")


def _apply_patch(old: JSON, content_type: str, body: Any) -> JSON:
    kind = PATCH_TYPES.get(content_type)
    if kind is None:
        raise ApiError(
            415, "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(PATCH_TYPES)}",
        )
    try:
        if kind == "strategic":
            new = strategic_merge_patch(old, body)
        elif kind == "merge":
            new = merge_patch(old, body)
        else:
            new = json_patch(old, body)
    except PatchError as err:
        raise ApiError(422 if kind == "json" else 400,
                       "Invalid" if kind == "json" else "BadRequest", str(err)) from err
    if not isinstance(new, dict):
        raise ApiError(400, "BadRequest", "the patched object is not an object")
    return new


def _cut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler],
                 double: KubeAPIDouble) -> None:
        self.double = double
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        if self.double.tls is None:
            return conn, address
        # The handshake runs in the handler's thread (setup), not in the accept loop.
        return self.double.tls.wrap_socket(
            conn, server_side=True, do_handshake_on_connect=False), address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A response is written as headers, then body: with Nagle's algorithm on, the body
    # waited for the client's delayed ACK of the headers (40 ms on Linux once a kept-alive
    # connection leaves quick-ACK mode).  Go's net/http, and so kube-apiserver, sets
    # TCP_NODELAY on every connection.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.server.double._track(self.connection, True)

    def finish(self) -> None:
        self.server.double._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _dispatch(self, method: str) -> None:
        try:
            self.server.double.handle(self, method)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # streaming helpers used by KubeAPIDouble._watch
    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_event_lines(self, events: list[JSON]) -> bool:
        if not events:
            return True
        data = "".join(json.dumps(e) + "\n" for e in events).encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def cut(self) -> None:
        self.close_connection = True
        _cut(self.connection)


def send_json(handler: _Handler, code: int, doc: JSON) -> None:
    send_body(handler, code, json.dumps(doc).encode())


def send_body(handler: _Handler, code: int, data: bytes) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
