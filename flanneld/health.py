"""The health server: ``/healthz`` (liveness) and ``/readyz`` (readiness), upstream's texts.

``GET /healthz`` always answers 200 ``flanneld is running``.  ``GET /readyz``
answers 503 ``flanneld is not ready yet`` until the daemon calls
:meth:`HealthState.mark_ready` (after subnet.env is written), then 200
``flanneld is ready``.  It answers 503 again only while a *blocking*
detail is set (a subnet store that keeps failing).  pyflannel adds
human-readable detail lines after that first line (e.g. ``subnet.env
written``).

Routes are a plain mapping of path to handler, so another endpoint
(``/metrics``) is added by passing ``extra_routes`` to :func:`start`.

The server is reachable by anyone who can reach ``--healthz-ip`` (default
0.0.0.0, as upstream), so it is bounded: one thread multiplexes every
connection; the listen backlog is deep; at most MAX_CONNECTIONS are open
(when full, the oldest connection that has not sent its request within
SHED_AGE is dropped, or new ones wait in the backlog);
a request's line and headers must fit in MAX_REQUEST bytes and arrive
within REQUEST_TIMEOUT; the answer must be taken within REQUEST_TIMEOUT
too.  Every answer closes the connection (no keep-alive, no request body).
A client that resets its connection is one DEBUG line.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from subnet.errors import ConfigError

log = logging.getLogger(__name__)

RUNNING = "flanneld is running"
READY = "flanneld is ready"
NOT_READY = "flanneld is not ready yet"
STOP_TIMEOUT = 3.0
TEXT_PLAIN = "text/plain; charset=utf-8"
BACKLOG = 1024  # pending connections the kernel queues (capped by net.core.somaxconn)
MAX_CONNECTIONS = 512
MAX_REQUEST = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds to send the request, and again to take the answer
# When full, a connection that has not sent its whole request after this long
# makes room for a new one; younger ones are waited for (new ones stay queued).
SHED_AGE = 1.0
POLL = 0.2  # seconds between checks of timeouts while a connection is open or accepting pauses
# With nothing open, only a new connection or stop() (which wakes the selector) can
# need the loop, so it sleeps long: an idle daemon's health thread wakes rarely.
IDLE_POLL = 5.0
_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    """What a health or metrics handler answers."""

    status: int
    body: str
    content_type: str = TEXT_PLAIN


Handler = Callable[[], Response]


class HealthState:
    """Readiness and detail lines, shared between the daemon and the server threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._details: dict[str, str] = {}
        self._blocking: set[str] = set()

    def mark_ready(self) -> None:
        with self._lock:
            self._ready = True

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    def set_detail(self, topic: str, text: str | None, *, blocking: bool = False) -> None:
        """Show ``text`` under ``topic`` on /readyz (replacing the last one); None removes it.

        While a ``blocking`` detail is shown, /readyz answers 503.
        """
        with self._lock:
            if text is None:
                self._details.pop(topic, None)
            else:
                self._details[topic] = text.replace("\n", " ")
            if blocking and text is not None:
                self._blocking.add(topic)
            else:
                self._blocking.discard(topic)

    def serving(self) -> bool:
        """Ready, and nothing blocking is shown: what /readyz answers."""
        with self._lock:
            return self._ready and not self._blocking

    def details(self) -> tuple[str, ...]:
        """The detail lines in the order their topics first appeared."""
        with self._lock:
            return tuple(self._details.values())


def default_routes(state: HealthState) -> dict[str, Handler]:
    """``/healthz`` and ``/readyz`` over ``state``."""

    def healthz() -> Response:
        return Response(200, RUNNING)

    def readyz() -> Response:
        ready = state.serving()
        body = "\n".join((READY if ready else NOT_READY, *state.details()))
        return Response(200 if ready else 503, body)

    return {"/healthz": healthz, "/readyz": readyz}


class _Conn:
    """One client connection: what it sent so far, what is left to send, its deadline."""

    __slots__ = ("deadline", "opened", "outgoing", "peer", "received", "sock")

    def __init__(self, sock: socket.socket, peer: str, opened: float) -> None:
        self.sock = sock
        self.peer = peer
        self.received = bytearray()
        self.outgoing: memoryview | None = None  # set once the request is answered
        self.opened = opened
        self.deadline = opened + REQUEST_TIMEOUT


def _answer(routes: Mapping[str, Handler], head: bytes) -> tuple[Response, bool]:
    """The response to a request head, and whether its body is sent (not for HEAD)."""
    line = head.split(b"\n", 1)[0].strip()
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return Response(400, "bad request\n"), True
    method, target = parts[0], parts[1].decode("latin-1")
    if method not in (b"GET", b"HEAD"):
        return Response(405, "method not allowed\n"), True
    handler = routes.get(target.partition("?")[0])
    if handler is None:
        return Response(404, "404 page not found\n"), method == b"GET"
    try:
        response = handler()
    except Exception as err:  # noqa: BLE001 - a failing handler must not end the server
        log.error("health handler for %s failed: %r", target.partition("?")[0], err)
        response = Response(500, "internal error\n")
    return response, method == b"GET"


def _encode(response: Response, send_body: bool) -> bytes:
    body = response.body.encode()
    head = (
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body if send_body else head


class _Server:
    """The event loop: one thread, non-blocking sockets, bounded in every direction."""

    def __init__(self, listener: socket.socket, routes: Mapping[str, Handler]) -> None:
        self.listener = listener
        self._routes = routes
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}  # by fd, oldest first
        self._stopping = threading.Event()
        self._listening = False
        self._resume_at = 0.0  # after EMFILE and the like: accept again at this time
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:  # already woken (buffer full) or closed: the flag is set anyway
            pass

    def serve(self) -> None:
        self._listen(True)
        try:
            while not self._stopping.is_set():
                idle = not self._conns and self._listening
                for key, events in self._selector.select(IDLE_POLL if idle else POLL):
                    if key.fileobj is self._wake_r:
                        break  # stop(): the loop condition ends it
                    if key.fileobj is self.listener:
                        self._accept()
                        continue
                    conn = self._conns.get(key.fd)
                    if conn is None or conn is not key.data:  # closed earlier in this turn
                        continue
                    self._serve(conn)
                self._expire()
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _listen(self, on: bool) -> None:
        """Watch the listener for new connections, or leave them queued in the backlog."""
        if on != self._listening:
            if on:
                self._selector.register(self.listener, selectors.EVENT_READ)
            else:
                self._selector.unregister(self.listener)
            self._listening = on

    def _accept(self) -> None:
        for _ in range(64):  # a bounded batch per turn; the backlog keeps the rest
            if not self._room():
                self._listen(False)  # _expire listens again once there is room
                return
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("health server cannot accept: %s; pausing for 1 s", err)
                    self._resume_at = time.monotonic() + 1.0
                    self._listen(False)
                    return
                log.debug("health server accept failed: %s", err)
                continue
            sock.setblocking(False)
            conn = _Conn(sock, str(address[0]), time.monotonic())
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _room(self) -> bool:
        """Is there room for one more connection (making it by dropping a stale one)?"""
        if len(self._conns) < MAX_CONNECTIONS:
            return True
        oldest = next((c for c in self._conns.values() if c.outgoing is None), None)
        if oldest is None or time.monotonic() - oldest.opened < SHED_AGE:
            return False
        log.debug("health: %d connections open; dropping the oldest idle one, from %s",
                  len(self._conns), oldest.peer)
        self._close(oldest)
        return True

    def _serve(self, conn: _Conn) -> None:
        """Read the request or send the answer, whichever is due; a failure closes."""
        try:
            if conn.outgoing is None:
                self._read(conn)
            else:
                self._write(conn)
        except BlockingIOError:
            return
        except OSError as err:  # a reset, mostly: one DEBUG line
            log.debug("health: connection from %s failed: %s", conn.peer, err.strerror or err)
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        chunk = conn.sock.recv(4096)
        if not chunk:
            self._close(conn)
            return
        conn.received += chunk
        end = conn.received.find(b"\r\n\r\n")
        if end < 0:
            end = conn.received.find(b"\n\n")
        if end > MAX_REQUEST or (end < 0 and len(conn.received) > MAX_REQUEST):
            self._respond(conn, Response(431, "request headers too large\n"), True)
        elif end >= 0:
            response, send_body = _answer(self._routes, bytes(conn.received[:end]))
            self._respond(conn, response, send_body)

    def _respond(self, conn: _Conn, response: Response, send_body: bool) -> None:
        conn.received.clear()
        conn.outgoing = memoryview(_encode(response, send_body))
        conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.outgoing is not None
        sent = conn.sock.send(conn.outgoing)
        conn.outgoing = conn.outgoing[sent:]
        if not conn.outgoing:
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            log.debug("health: connection from %s timed out", conn.peer)
            self._close(conn)
        if not self._listening and now >= self._resume_at and self._room():
            self._listen(True)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is None:
            return
        self._selector.unregister(conn.sock)
        conn.sock.close()


class HealthServer:
    """A running health server; :meth:`stop` shuts it down."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve, name="flanneld-health", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when started with port 0)."""
        return int(self._server.listener.getsockname()[1])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop serving (within ``timeout`` s) and close the port and every connection."""
        self._server.stop()
        self._thread.join(timeout)
        self._server.listener.close()
        if self._thread.is_alive():
            log.warning("Health server did not stop within %.1f s", timeout)


def start(
    state: HealthState,
    host: str,
    port: int,
    extra_routes: Mapping[str, Handler] | None = None,
) -> HealthServer:
    """Serve health checks on ``host:port`` from a daemon thread (port 0: ephemeral).

    ``extra_routes`` adds or overrides paths.  Raises ConfigError if the
    address cannot be bound.
    """
    routes = {**default_routes(state), **(extra_routes or {})}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(BACKLOG)
        listener.setblocking(False)
    except OSError as err:
        listener.close()
        raise ConfigError(f"cannot start the health server on {host}:{port}: {err}") from err
    handle = HealthServer(_Server(listener, dict(routes)))
    log.info("Start healthz server on %s:%d", host, handle.port)
    return handle
