"""What every fake netlink socket of the unit tests shares with a real one.

``Rtnl`` switches its socket to non-blocking and back (``settimeout``) to read
it dry after a lost answer, and closes it; the fakes only differ in how they
answer.
"""

from __future__ import annotations


class FakeSocketBase:
    """The timeout a fake socket was given (``None``: blocking, ``0``: non-blocking)."""

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def settimeout(self, value: float | None, /) -> None:
        self._timeout = value

    def close(self) -> None:
        pass
