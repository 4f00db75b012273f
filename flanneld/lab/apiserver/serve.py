"""Run the API server double as a process, steered through a Unix control socket.

    python -m flanneld.lab.apiserver.serve --host 198.18.0.1 --port 16443 --control /run/x/kubeapi.sock

The multi-node lab starts it inside its underlay namespace (kube mode); with
``--tls-cert``/``--tls-key`` it serves HTTPS (the lab's image mode, where
flanneld uses its in-cluster configuration).
Each control connection carries one JSON line ``{"op": NAME, "args": {...}}``
and gets one JSON line back: ``{"result": ...}`` or ``{"error": TEXT}``.
The API listener can be stopped and started again (same port) while the
control socket stays up.  SIGTERM/SIGINT end the process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socketserver
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .server import JSON, KubeAPIDouble


class Controller:
    """The operations a control client may ask for, by name."""

    def __init__(self, double: KubeAPIDouble) -> None:
        self.double = double
        self._paused = contextlib.ExitStack()
        self._lock = threading.Lock()

    def dispatch(self, op: str, args: dict[str, Any]) -> Any:
        ops: dict[str, Callable[..., Any]] = {
            "ping": lambda: "pong",
            "add_node": self.double.add_node,
            "node": self.double.node,
            "annotate_node": self.double.annotate_node,
            "delete_node": self.double.delete_node,
            "add_pod": self.double.add_pod,
            "issue_token": self.double.issue_token,
            "set_pod_cidr": self.set_pod_cidr,
            "put_object": self.double.put_object,
            "compact": self.double.compact,
            "drop_watches": self.double.drop_watches,
            "wait_for_watches": self.wait_for_watches,
            "pause_watches": self.pause_watches,
            "resume_watches": self.resume_watches,
            "stop": self.double.stop,
            "start": lambda: self.double.start().url,
            "running": lambda: self.double.running,
            "resource_version": lambda: self.double.resource_version,
        }
        if op not in ops:
            raise ValueError(f"unknown op {op!r}")
        return ops[op](**args)

    def set_pod_cidr(self, name: str, pod_cidr: str | None) -> JSON:
        def change(node: JSON) -> None:
            spec = node.setdefault("spec", {})
            if pod_cidr is None:
                spec.pop("podCIDR", None)
                spec.pop("podCIDRs", None)
            else:
                spec["podCIDR"], spec["podCIDRs"] = pod_cidr, [pod_cidr]

        return self.double.update_node(name, change)

    def wait_for_watches(self, count: int, timeout: float) -> bool:
        try:
            self.double.wait_for_watches(count, timeout)
        except TimeoutError:
            return False
        return True

    def pause_watches(self) -> None:
        with self._lock:
            self._paused.close()
            self._paused.enter_context(self.double.watches_paused())

    def resume_watches(self) -> None:
        with self._lock:
            self._paused.close()


class _ControlHandler(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            request = json.loads(line)
            result = self.server.controller.dispatch(str(request["op"]), request.get("args") or {})
            reply: JSON = {"result": result}
        except Exception as err:  # noqa: BLE001 - every failure goes back to the client
            reply = {"error": f"{type(err).__name__}: {err}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, controller: Controller) -> None:
        self.controller = controller
        super().__init__(path, _ControlHandler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flanneld.lab.apiserver.serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", required=True, help="Unix socket path for test control")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="... and this key (PEM)")
    args = parser.parse_args(argv)
    tls: ssl.SSLContext | None = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    double = KubeAPIDouble(host=args.host, port=args.port, tls=tls)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    control = _ControlServer(args.control, Controller(double))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    double.start()
    thread = threading.Thread(target=control.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    print(f"serving {double.url}, control {args.control}", flush=True)
    while not done.wait(0.2):
        pass
    control.shutdown()
    control.server_close()
    double.stop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
