"""The model pods' servers: one process per pod namespace, TCP and UDP on given ports.

    python -m flanneld.lab.podserver --name x/a --tcp 80,81 --udp 80,81 --lab STATE_DIR

A TCP connection gets the pod's name and is closed; a UDP datagram gets the
pod's name back (as upstream's ``agnhost serve-hostname`` answers).  The lab
starts it inside the pod's namespace and stops it by PID.  Standard library
only; one thread, one selector.
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import threading
from collections.abc import Sequence


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def serve(name: str, tcp: Sequence[int], udp: Sequence[int], done: threading.Event) -> None:
    reply = name.encode() + b"\n"
    sel = selectors.DefaultSelector()
    sockets = []
    for port in tcp:
        listener = socket.create_server(("0.0.0.0", port), backlog=128)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, "tcp")
        sockets.append(listener)
    for port in udp:
        dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dgram.bind(("0.0.0.0", port))
        dgram.setblocking(False)
        sel.register(dgram, selectors.EVENT_READ, "udp")
        sockets.append(dgram)
    print(f"{name} serving tcp {list(tcp)} udp {list(udp)}", flush=True)
    while not done.is_set():
        for key, _ in sel.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    with conn:
                        conn.sendall(reply)
                else:
                    _, peer = sock.recvfrom(2048)
                    sock.sendto(reply, peer)
            except OSError:
                continue
    for sock in sockets:
        sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flanneld.lab.podserver")
    parser.add_argument("--name", required=True, help="what to answer (the pod's ns/name)")
    parser.add_argument("--tcp", default="", help="comma-separated TCP ports")
    parser.add_argument("--udp", default="", help="comma-separated UDP ports")
    parser.add_argument("--lab", default="", help="the lab's state dir (marks the process)")
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    serve(args.name, _ports(args.tcp), _ports(args.udp), done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
