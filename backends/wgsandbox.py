"""Start wireguard-go with a control-socket directory of its own.

wireguard-go listens on ``/var/run/wireguard/<ifname>.sock``, a path fixed
at build time and shared by every network namespace that shares a mount
namespace: a second node's ``wireguard-go flannel-wg`` on one machine fails
with "unix socket in use".  This launcher (run as ``python -m
backends.wgsandbox [--netns PATH] -- wireguard-go -f IFNAME``) enters a new
mount namespace, makes it private, mounts a tmpfs on the socket directory,
optionally enters a network namespace, and execs wireguard-go in place (the
PID stays the same).  flanneld then reaches the socket as
``/proc/<pid>/root/run/wireguard/<ifname>.sock``.

It runs in a fresh process, so the unshare and mounts never touch flanneld's
own (threaded) process.  Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SOCKET_DIR = "/run/wireguard"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def isolate(netns: str | None) -> None:
    """A private mount namespace with a tmpfs on the socket directory; then ``netns``."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        # No CAP_SYS_ADMIN (an unprivileged container, which has a mount namespace of
        # its own anyway): share the socket directory, one wireguard-go per container.
        err = ctypes.get_errno()
        print(f"wgsandbox: no private mount namespace ({os.strerror(err)}); using the shared "
              f"{SOCKET_DIR}", file=sys.stderr)
    else:
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        os.makedirs(SOCKET_DIR, mode=0o755, exist_ok=True)
        _check(
            libc.mount(b"tmpfs", SOCKET_DIR.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"mode=0700"),
            f"mount tmpfs on {SOCKET_DIR}",
        )
    if netns is not None:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(libc.setns(fd, CLONE_NEWNET), f"setns({netns})")
        finally:
            os.close(fd)


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    netns = None
    if args[:1] == ["--netns"] and len(args) > 1:
        netns, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m backends.wgsandbox [--netns PATH] -- PROGRAM ARGS...",
              file=sys.stderr)
        return 2
    try:
        isolate(netns)
        os.execvp(args[0], args)
    except OSError as err:
        print(f"wgsandbox: cannot start {args[0]}: {err}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
