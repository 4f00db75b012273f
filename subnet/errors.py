"""The one exception tree of pyflannel.

Third-party exceptions are translated into these at the seam where they
occur (``raise ... from err``); callers decide on the type, never on text.
"""


class FlannelError(Exception):
    """Base of every error pyflannel raises on purpose."""


class ConfigError(FlannelError):
    """Invalid flags, environment or net-conf.json."""


class LeaseError(FlannelError):
    """A subnet lease could not be acquired, renewed or decoded."""


class SubnetsExhaustedError(LeaseError):
    """No free subnet is left in [SubnetMin, SubnetMax]."""


class LeaseConflictError(LeaseError):
    """Another node created the same lease key first (lost race)."""


class StoreError(FlannelError):
    """The subnet store (etcd, Kubernetes API) failed or is unreachable."""


class WatchExpiredError(StoreError):
    """The watch position is too old (etcd compaction, HTTP 410); re-list."""


class PeerDataError(FlannelError):
    """A peer's lease or annotation is malformed; the peer is skipped."""


class DataplaneError(FlannelError):
    """A kernel (netlink) operation failed; ``errno`` is the kernel's code when known."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class StopRequested(FlannelError):
    """Shutdown was requested while start-up was still waiting or retrying."""


class InterfaceError(FlannelError):
    """The external interface or public address could not be determined."""
