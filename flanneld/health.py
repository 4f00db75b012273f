"""The health server: ``/healthz`` (liveness) and ``/readyz`` (readiness), upstream's texts.

``GET /healthz`` always answers 200 ``flanneld is running``.  ``GET /readyz``
answers 503 ``flanneld is not ready yet`` until the daemon calls
:meth:`HealthState.mark_ready` (after subnet.env is written), then 200
``flanneld is ready``; it never flips back.  pyflannel adds human-readable
detail lines after that first line (e.g. ``subnet.env written``).

Routes are a plain mapping of path to handler, so another endpoint (a
future ``/metrics``) is added by passing ``extra_routes`` to :func:`start`.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from subnet.errors import ConfigError

log = logging.getLogger(__name__)

RUNNING = "flanneld is running"
READY = "flanneld is ready"
NOT_READY = "flanneld is not ready yet"
STOP_TIMEOUT = 3.0
TEXT_PLAIN = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Response:
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

    def mark_ready(self) -> None:
        with self._lock:
            self._ready = True

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    def set_detail(self, topic: str, text: str | None) -> None:
        """Show ``text`` under ``topic`` on /readyz (replacing the last one); None removes it."""
        with self._lock:
            if text is None:
                self._details.pop(topic, None)
            else:
                self._details[topic] = text.replace("\n", " ")

    def details(self) -> tuple[str, ...]:
        """The detail lines in the order their topics first appeared."""
        with self._lock:
            return tuple(self._details.values())


def default_routes(state: HealthState) -> dict[str, Handler]:
    """``/healthz`` and ``/readyz`` over ``state``."""

    def healthz() -> Response:
        return Response(200, RUNNING)

    def readyz() -> Response:
        ready = state.ready
        body = "\n".join((READY if ready else NOT_READY, *state.details()))
        return Response(200 if ready else 503, body)

    return {"/healthz": healthz, "/readyz": readyz}


def _handler_class(routes: Mapping[str, Handler]) -> type[http.server.BaseHTTPRequestHandler]:
    class RequestHandler(http.server.BaseHTTPRequestHandler):
        server_version = "flanneld"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            handler = routes.get(self.path.partition("?")[0])
            response = handler() if handler else Response(404, "404 page not found\n")
            body = response.body.encode()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health %s: " + format, self.client_address[0], *args)

    return RequestHandler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """A running health server; :meth:`stop` shuts it down."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="flanneld-health", daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when started with port 0)."""
        return int(self._server.server_address[1])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop accepting, let the serving thread finish (at most ``timeout`` s), close."""
        deadline = time.monotonic() + timeout
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._server.server_close()
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
    server_class = _Server6 if ":" in host else _Server
    try:
        server = server_class((host, port), _handler_class(routes))
    except OSError as err:
        raise ConfigError(f"cannot start the health server on {host}:{port}: {err}") from err
    handle = HealthServer(server)
    log.info("Start healthz server on %s:%d", host, handle.port)
    return handle
