"""The daemon's view of every lease: a pure fold over watch messages."""

from __future__ import annotations

from subnet.lease import Lease
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot


def loses_own_lease(own_key: str, message: LeaseMessage) -> bool:
    """Whether ``message`` shows our lease gone (deleted, expired, or missing from a snapshot)."""
    if isinstance(message, Snapshot):
        return all(lease.key != own_key for lease in message.leases)
    return isinstance(message, LeaseRemoved) and message.key == own_key


class PeerTable:
    """Known leases by key, ours left out (``loses_own_lease`` tells when it is gone)."""

    def __init__(self, own_key: str) -> None:
        self._own_key = own_key
        self._leases: dict[str, Lease] = {}
        # leases changed since take_changes(): key -> lease, None if removed;
        # None when unknown (a snapshot replaced everything)
        self._changes: dict[str, Lease | None] | None = None

    @property
    def own_key(self) -> str:
        return self._own_key

    def set_own_key(self, key: str) -> None:
        self._own_key = key
        self._leases.pop(key, None)
        self._changes = None

    def apply(self, message: LeaseMessage) -> None:
        if isinstance(message, Snapshot):
            self._leases = {lease.key: lease for lease in message.leases}
            self._leases.pop(self._own_key, None)
            self._changes = None
        elif isinstance(message, LeaseAdded):
            key = message.lease.key
            if key != self._own_key:
                self._leases[key] = message.lease
                self._note(key, message.lease)
        elif isinstance(message, LeaseRemoved):
            if self._leases.pop(message.key, None) is not None:
                self._note(message.key, None)
        else:
            raise TypeError(f"unknown lease message {message!r}")

    def take_changes(self) -> dict[str, Lease | None] | None:
        """The leases changed since the last call (None: unknown, look at every peer)."""
        changes, self._changes = self._changes, {}
        return changes

    def forget_changes(self) -> None:
        """The changes taken were not programmed: the next pass looks at every peer."""
        self._changes = None

    def _note(self, key: str, lease: Lease | None) -> None:
        if self._changes is not None:
            self._changes[key] = lease

    def peers(self) -> list[Lease]:
        return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)
