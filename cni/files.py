"""Reading a small file the plugin trusts only as far as its type and size, and path helpers.

The plugin's modules call the built-in ``posix`` module rather than :mod:`os`
(whose functions are the same ones): importing :mod:`os` (with
``collections.abc``) costs a millisecond of every ADD and DEL. The two path
helpers below are what they use of ``os.path``.
"""

from __future__ import annotations

import posix
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
    fd = posix.open(
        path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC | posix.O_NOCTTY | flags
    )
    try:
        if not stat.S_ISREG(posix.fstat(fd).st_mode):
            raise UnreadableFile(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = posix.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        posix.close(fd)
    if size > limit:
        raise UnreadableFile(f"{path} is larger than {limit} bytes")
    return b"".join(chunks)


def join(directory: str, name: str) -> str:
    """``os.path.join(directory, name)`` for a non-empty ``directory`` and a ``name``
    without ``/``."""
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def is_file(path: str) -> bool:
    """``os.path.isfile``: whether ``path`` is (or links to) a regular file."""
    try:
        return stat.S_ISREG(posix.stat(path).st_mode)
    except (OSError, ValueError):
        return False
