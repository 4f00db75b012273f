"""Move the calling thread into a named network namespace (``setns(2)``).

A network namespace is per thread: a process that enters one before it
starts threads moves entirely; a worker thread that enters one moves alone,
and the sockets it opens afterwards live there.  Python 3.11 has no
``os.setns``, hence ctypes.  Standard library only (the API door uses it).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"  # where ip-netns(8) and the lab bind-mount named namespaces


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (OSError on failure)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
