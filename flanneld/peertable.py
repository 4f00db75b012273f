"""The daemon's view of every lease: a pure fold over watch messages."""

from __future__ import annotations

from subnet.lease import Lease
from subnet.manager import LeaseAdded, LeaseMessage, LeaseRemoved, Snapshot


class PeerTable:
    """Known leases by key, and whether ours is still among them.

    Our own lease is tracked but never returned as a peer.  ``apply``
    returns True when a message shows our lease gone (deleted, expired, or
    missing from a snapshot), so the daemon can re-acquire it.
    """

    def __init__(self, own_key: str) -> None:
        self._own_key = own_key
        self._leases: dict[str, Lease] = {}

    @property
    def own_key(self) -> str:
        return self._own_key

    def set_own_key(self, key: str) -> None:
        self._own_key = key
        self._leases.pop(key, None)

    def apply(self, message: LeaseMessage) -> bool:
        if isinstance(message, Snapshot):
            self._leases = {lease.key: lease for lease in message.leases}
            return self._leases.pop(self._own_key, None) is None
        if isinstance(message, LeaseAdded):
            if message.lease.key != self._own_key:
                self._leases[message.lease.key] = message.lease
            return False
        if isinstance(message, LeaseRemoved):
            self._leases.pop(message.key, None)
            return message.key == self._own_key
        raise TypeError(f"unknown lease message {message!r}")

    def peers(self) -> list[Lease]:
        return list(self._leases.values())

    def __len__(self) -> int:
        return len(self._leases)
