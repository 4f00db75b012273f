"""A bounded load client for the health server (run inside the test's namespace).

``python -m tests.healthload --port P --server-pid PID`` holds idle and
half-sent connections, resets some, fires concurrent probes, and prints one
JSON line: answers by status, probes unanswered, the server's thread count
while the idle connections were held, and the elapsed time.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import struct
import sys
import time

PATHS = ("/healthz", "/readyz", "/metrics")


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError("no Threads line")


def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    err = sock.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, "connect failed")
    return sock


def hold_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections: half send nothing, half a request line without its end."""
    held = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if index % 2:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    return held


def resets(port: int, count: int) -> None:
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /heal")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST


def probes(port: int, count: int, deadline: float) -> dict[str, int]:
    """Fire ``count`` probes at once; the status line of each answer, or 'none'."""
    selector = selectors.DefaultSelector()
    pending: dict[int, tuple[socket.socket, bytes, bytearray]] = {}
    for index in range(count):
        sock = connect(port)
        request = f"GET {PATHS[index % len(PATHS)]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        pending[sock.fileno()] = (sock, request, bytearray())
        selector.register(sock, selectors.EVENT_WRITE)
    results: dict[str, int] = {}
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock, request, answer = pending[key.fd]
            try:
                if request:
                    sock.send(request)
                    pending[key.fd] = (sock, b"", answer)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                chunk = sock.recv(65536)
            except OSError as err:
                chunk = b""
                answer[:] = f"error {errno.errorcode.get(err.errno or 0, err)}".encode()
            if chunk:
                answer += chunk
                continue
            status = bytes(answer.split(b"\r\n", 1)[0]).decode(errors="replace") or "closed"
            results[status] = results.get(status, 0) + 1
            selector.unregister(sock)
            sock.close()
            del pending[key.fd]
    for sock, _, _ in pending.values():
        sock.close()
    results["none"] = len(pending)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--resets", type=int, default=50)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    began = time.monotonic()
    held = hold_idle(args.port, args.idle)
    time.sleep(0.5)  # let the server accept them all before counting threads
    threads_idle = threads_of(args.server_pid)
    resets(args.port, args.resets)
    answers = probes(args.port, args.probes, began + args.seconds)
    threads_after = threads_of(args.server_pid)
    for sock in held:
        sock.close()
    print(json.dumps({
        "answers": answers,
        "threads_with_idle": threads_idle,
        "threads_after": threads_after,
        "seconds": round(time.monotonic() - began, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
