"""A loopback door to the API double, for clients in the root network namespace.

    python -m flanneld.lab.apidoor --netns lab-underlay --to 198.18.0.1:16443 \\
        --port-file /run/x/kubeapi.port

The double listens inside the lab's underlay namespace, which the root
namespace cannot reach (the lab adds no address there).  This process binds
``127.0.0.1:<free port>`` in the namespace it starts in, writes the port to
``--port-file``, then moves itself into ``--netns`` (``setns(2)``, before any
thread starts) so every upstream connection it opens is made from there.
Each accepted connection is copied byte for byte both ways (TLS and watches
pass untouched).  SIGTERM/SIGINT end it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Sequence

from flanneld.lab.nsenter import enter_netns

CONNECT_TIMEOUT = 10.0
CHUNK = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(conn: socket.socket, upstream: tuple[str, int]) -> None:
    with conn:
        try:
            far = socket.create_connection(upstream, timeout=CONNECT_TIMEOUT)
        except OSError:
            return
        with far:
            far.settimeout(None)
            # Bytes go on as they come: with Nagle's algorithm a response's body, read
            # apart from its headers, would wait for the far end's delayed ACK (40 ms).
            for end in (conn, far):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=_pump, args=(far, conn), daemon=True)
            back.start()
            _pump(conn, far)
            back.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flanneld.lab.apidoor")
    parser.add_argument("--netns", required=True, help="where the upstream lives")
    parser.add_argument("--to", required=True, help="upstream HOST:PORT inside --netns")
    parser.add_argument("--port-file", required=True, help="where to write the loopback port")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    listener = socket.create_server(("127.0.0.1", 0))
    enter_netns(args.netns)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    temporary = args.port_file + ".tmp"
    with open(temporary, "w", encoding="utf-8") as fh:
        fh.write(f"{listener.getsockname()[1]}\n")
    os.replace(temporary, args.port_file)
    listener.settimeout(0.2)
    with listener:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=_serve, args=(conn, (host, int(port))), daemon=True).start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
