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

    @property
    def own_key(self) -> str:
        return self._own_key

    def set_own_key(self, key: str) -> None:
        self._own_key = key
        self._leases.pop(key, None)

    def apply(self, message: LeaseMessage) -> None:
        if isinstance(message, Snapshot):
            self._leases = {lease.key: lease for lease in message.leases}
            self._leases.pop(self._own_key, None)
        elif isinstance(message, LeaseAdded):
            if message.lease.key != self._own_key:
                self._leases[message.lease.key] = message.lease
        elif isinstance(message, LeaseRemoved):
            self._leases.pop(message.key, None)
        else:
            raise TypeError(f"unknown lease message {message!r}")

    def peers(self) -> list[Lease]:
        return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)
