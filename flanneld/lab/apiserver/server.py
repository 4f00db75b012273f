"""A small, honest Kubernetes API server double for Nodes, Pods and ConfigMaps.

It speaks the real REST protocol on ``http://127.0.0.1:<port>`` so the
official ``kubernetes`` client can be pointed at it unchanged:

* ``GET /api/v1/nodes`` lists (``metadata.resourceVersion`` of the list) or,
  with ``watch=true`` (also ``True``/``1``), streams chunked JSON lines
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}``.
  A watch without ``resourceVersion`` (or ``"0"``) starts with synthetic
  ADDED events for every node; a watch from ``N`` replays every change after
  ``N`` if still retained, else answers 410 "too old resource version"
  (as an ERROR event by default, or as an HTTP 410 when
  ``gone_as_http_status`` is set).  ``timeoutSeconds`` ends the stream
  cleanly, after a BOOKMARK when ``allowWatchBookmarks`` is set.
* ``GET|PUT|PATCH /api/v1/nodes/{name}[/status]``: PATCH understands
  strategic-merge-patch+json, merge-patch+json and json-patch+json; the
  status subresource keeps ``spec``, the main resource keeps ``status`` (as
  the real Node strategy does); a no-op write changes nothing; a stale
  ``metadata.resourceVersion`` is a 409 Conflict.
* ``GET /api/v1/namespaces/{ns}/pods/{name}``,
  ``GET|PUT /api/v1/namespaces/{ns}/configmaps/{name}``.

Errors are ``Status`` objects with the real reasons (NotFound, Conflict,
Expired, BadRequest, UnsupportedMediaType, MethodNotAllowed, Unauthorized).

With ``tls`` (an ``ssl.SSLContext``) it serves HTTPS, as a client's
in-cluster configuration requires; once :meth:`issue_token` has issued a
service-account token (what the kubelet asks the TokenRequest API for), every
request must carry one of the issued tokens (``Authorization: Bearer``) or gets
401.  Authorization (RBAC) is not checked.

Test control: add/update/delete nodes, :meth:`compact`, :meth:`pause_watches`,
:meth:`drop_watches`, :meth:`stop`/:meth:`start` on the same port (an API
server restart: every open connection is cut), :meth:`fail_next` (inject
error responses) and :attr:`requests` (what clients sent).
"""

from __future__ import annotations

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

JSON = dict[str, Any]

PATCH_TYPES = {
    "application/strategic-merge-patch+json": "strategic",
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
}
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
DEFAULT_WATCH_TIMEOUT = 1800
HANDSHAKE_TIMEOUT = 10.0


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
        self._history: list[tuple[int, str, JSON]] = []
        self._nodes: dict[str, JSON] = {}
        self._pods: dict[tuple[str, str], JSON] = {}
        self._configmaps: dict[tuple[str, str], JSON] = {}
        self._tokens: dict[str, str] = {}  # bearer token -> the user it authenticates
        self._faults: list[_Fault] = []
        self._epoch = 0  # bumped to cut every open watch
        self._paused = False
        self._clean_drop = False
        self._open_watches = 0
        self._uid = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = port  # 0: any free port, kept across stop/start
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

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
            if name in self._nodes:
                raise ValueError(f"node {name} exists")
            return self._write_node(name, node, "ADDED")

    def update_node(self, name: str, mutate: Callable[[JSON], None]) -> JSON:
        """Change a Node in place through ``mutate`` (one MODIFIED event)."""
        with self._cond:
            node = copy.deepcopy(self._get_node(name))
            mutate(node)
            return self._write_node(name, node, "MODIFIED")

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
        with self._cond:
            node = self._get_node(name)
            del self._nodes[name]
            self._rv += 1
            gone = copy.deepcopy(node)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._record("DELETED", gone)

    def node(self, name: str) -> JSON:
        """A copy of the stored Node."""
        with self._cond:
            return copy.deepcopy(self._get_node(name))

    def add_pod(self, namespace: str, name: str, node_name: str) -> JSON:
        pod: JSON = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "x"}]},
        }
        with self._cond:
            self._rv += 1
            self._pods[(namespace, name)] = self._stamp(pod)
            return copy.deepcopy(pod)

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
        cm: JSON = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "data": dict(data),
        }
        with self._cond:
            self._rv += 1
            self._configmaps[(namespace, name)] = self._stamp(cm)
            return copy.deepcopy(cm)

    def configmap(self, namespace: str, name: str) -> JSON:
        with self._cond:
            found = self._configmaps.get((namespace, name))
            if found is None:
                raise KeyError(f"{namespace}/{name}")
            return copy.deepcopy(found)

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

    def fail_next(
        self, count: int = 1, code: int = 500, *, method: str | None = None,
        path_suffix: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with error ``code``."""
        with self._cond:
            self._faults.append(_Fault(method, path_suffix, code, count))

    def requests_matching(self, method: str, path_suffix: str = "") -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    # --- state internals (hold self._cond) ----------------------------------------

    def _get_node(self, name: str) -> JSON:
        node = self._nodes.get(name)
        if node is None:
            raise _not_found("nodes", name)
        return node

    def _stamp(self, obj: JSON) -> JSON:
        meta = obj["metadata"]
        if "uid" not in meta:
            self._uid += 1
            meta["uid"] = f"00000000-0000-4000-8000-{self._uid:012d}"
            meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = str(self._rv)
        return obj

    def _write_node(self, name: str, node: JSON, kind: str) -> JSON:
        self._rv += 1
        node["metadata"]["name"] = name
        self._nodes[name] = self._stamp(node)
        self._record(kind, node)
        return copy.deepcopy(node)

    def _record(self, kind: str, obj: JSON) -> None:
        self._history.append((self._rv, kind, copy.deepcopy(obj)))
        while len(self._history) > self.history_limit:
            dropped, _, _ = self._history.pop(0)
            self._compacted = dropped
        self._cond.notify_all()

    def _take_fault(self, method: str, path: str) -> int | None:
        for fault in self._faults:
            if fault.remaining <= 0:
                continue
            if fault.method is not None and fault.method != method:
                continue
            if fault.path_suffix is not None and not path.endswith(fault.path_suffix):
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
                fault = self._take_fault(method, path)
            if fault is not None:
                raise ApiError(fault, "InternalError" if fault >= 500 else "BadRequest",
                               f"injected failure {fault}")
            parts = path.split("/")[1:]
            if parts[:2] != ["api", "v1"]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            rest = parts[2:]
            if rest == ["nodes"] and method == "GET":
                if query.get("watch", "") in _TRUE:
                    self._watch(handler, query)
                else:
                    send_json(handler, 200, self._list_nodes())
                return
            if len(rest) in (2, 3) and rest[0] == "nodes" and rest[2:] in ([], ["status"]):
                send_json(handler, 200, self._node_request(
                    method, rest[1], bool(rest[2:]), content_type, body))
                return
            if len(rest) == 4 and rest[0] == "namespaces":
                send_json(handler, 200, self._namespaced(method, rest[1], rest[2], rest[3], body))
                return
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
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

    def _list_nodes(self) -> JSON:
        with self._cond:
            items = [copy.deepcopy(n) for _, n in sorted(self._nodes.items())]
            rv = self._rv
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": "NodeList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def _node_request(
        self, method: str, name: str, status: bool, content_type: str, body: Any
    ) -> JSON:
        with self._cond:
            old = self._get_node(name)
            if method == "GET":
                return copy.deepcopy(old)
            if method == "PATCH":
                new = _apply_patch(old, content_type, body)
            elif method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "PUT needs a Node object")
                new = copy.deepcopy(body)
            else:
                raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method "
                               f"on the requested resource ({method})")
            return self._update_node(name, old, new, status)

    def _update_node(self, name: str, old: JSON, new: JSON, status: bool) -> JSON:
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        wanted = meta.get("resourceVersion")
        if wanted not in (None, "") and wanted != old["metadata"]["resourceVersion"]:
            raise _conflict("nodes", name)
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        for key in ("name", "uid", "creationTimestamp", "resourceVersion"):
            meta[key] = old["metadata"][key]
        new["kind"], new["apiVersion"] = "Node", "v1"
        keep = "spec" if status else "status"  # what this endpoint cannot change
        if keep in old:
            new[keep] = copy.deepcopy(old[keep])
        else:
            new.pop(keep, None)
        if new == old:
            return copy.deepcopy(old)
        return self._write_node(name, new, "MODIFIED")

    def _namespaced(
        self, method: str, namespace: str, kind: str, name: str, body: Any
    ) -> JSON:
        with self._cond:
            if kind == "pods" and method == "GET":
                pod = self._pods.get((namespace, name))
                if pod is None:
                    raise _not_found("pods", name)
                return copy.deepcopy(pod)
            if kind == "configmaps" and method in ("GET", "PUT"):
                cm = self._configmaps.get((namespace, name))
                if cm is None:
                    raise _not_found("configmaps", name)
                if method == "GET":
                    return copy.deepcopy(cm)
                if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
                    raise ApiError(400, "BadRequest", "PUT needs a ConfigMap object")
                wanted = body["metadata"].get("resourceVersion")
                if wanted not in (None, "") and wanted != cm["metadata"]["resourceVersion"]:
                    raise _conflict("configmaps", name)
                new = copy.deepcopy(body)
                new["metadata"].update(
                    {k: cm["metadata"][k] for k in ("name", "namespace", "uid", "creationTimestamp")}
                )
                self._rv += 1
                self._configmaps[(namespace, name)] = self._stamp(new)
                return copy.deepcopy(new)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # --- watch -------------------------------------------------------------------

    def _watch(self, handler: _Handler, query: dict[str, str]) -> None:
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
                initial = [{"type": "ADDED", "object": copy.deepcopy(n)}
                           for _, n in sorted(self._nodes.items())]
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
            self._stream(handler, initial, cursor, epoch, timeout, bookmarks)
        finally:
            with self._cond:
                self._open_watches -= 1

    def _stream(self, handler: _Handler, initial: list[JSON], cursor: int, epoch: int,
                timeout: float, bookmarks: bool) -> None:
        handler.start_stream()
        if not handler.write_event_lines(initial) or cursor < 0:
            handler.end_stream()
            return
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                events, cursor, ending = self._next_events(cursor, epoch, deadline)
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
                        "kind": "Node", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(cursor)}}}])
                handler.end_stream()
                return

    def _next_events(self, cursor: int, epoch: int, deadline: float) -> tuple[list[JSON], int, str]:
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
                news = [(rv, kind, obj) for rv, kind, obj in self._history if rv > cursor]
                if news:
                    events = [{"type": kind, "object": copy.deepcopy(obj)} for _, kind, obj in news]
                    return events, news[-1][0], ""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], max(cursor, self._rv) if not self._paused else cursor, "timeout"
            self._cond.wait(min(remaining, 0.5))


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
    data = json.dumps(doc).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
