"""Reading a small file the plugin trusts only as far as its type and size."""

from __future__ import annotations

import os
import stat


class UnreadableFile(ValueError):
    """The path is not a regular file, or it is larger than allowed."""


def read_regular(path: str, limit: int, flags: int = 0) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened non-blocking (opening a FIFO would otherwise wait for a writer)
    and checked with fstat on the open descriptor, so a file swapped in
    after a check cannot slip past. Raises OSError from open/read and
    UnreadableFile for a device, FIFO, directory or a file over ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFile(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise UnreadableFile(f"{path} is larger than {limit} bytes")
    return b"".join(chunks)
