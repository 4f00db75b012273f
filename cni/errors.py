"""The CNI plugin's one exception, carrying a CNI error code.

The plugin is shipped as a single file and imports nothing outside ``cni``,
so it cannot use ``subnet.errors``; every failure it reports on purpose is
a :class:`CniError` whose code follows the CNI spec's table of well-known
codes. Only :mod:`cni.plugin` turns one into error JSON and an exit status.
"""

from __future__ import annotations

# Well-known codes of the CNI spec ("Error codes 1-99 must not be used other
# than as specified here").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
# libcni's ErrInternal: what upstream's plugin reports for its own failures
# (bad subnet.env, delegate not found, delegate that fails without error JSON).
INTERNAL = 999


class CniError(Exception):
    """A failure reported to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(code, msg, details)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}; {self.details}" if self.details else self.msg
