"""Which peer leases a backend may program: pure checks shared by all backends."""

from __future__ import annotations

from collections.abc import Sequence

from backends.model import Skipped
from subnet.lease import IPNetwork, Lease


def usable_peers(
    own: Lease,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    backend_type: str | None,
) -> tuple[list[Lease], list[Skipped]]:
    """Split ``peers`` into the usable ones and the skipped ones, with reasons.

    A peer is skipped when it runs another backend (``backend_type`` None
    accepts any, as upstream's udp does), when a subnet lies outside the
    cluster networks, overlaps ours, or overlaps a peer seen earlier in key
    order (the first claimant keeps it).
    """
    usable: list[Lease] = []
    skipped: list[Skipped] = []
    claimed: list[IPNetwork] = list(own.subnets())
    for peer in sorted(peers, key=lambda p: p.key):
        reason = _reject_reason(peer, claimed, own, networks, backend_type)
        if reason:
            skipped.append(Skipped(peer.key, reason))
            continue
        usable.append(peer)
        claimed.extend(s for s in peer.subnets() if s.version in {n.version for n in networks})
    return usable, skipped


def _reject_reason(
    peer: Lease,
    claimed: list[IPNetwork],
    own: Lease,
    networks: Sequence[IPNetwork],
    backend_type: str | None,
) -> str:
    if backend_type is not None and peer.attrs.backend_type != backend_type:
        return f"backend type {peer.attrs.backend_type!r}, not {backend_type!r}"
    enabled = {n.version for n in networks}
    subnets = [s for s in peer.subnets() if s.version in enabled]
    if not subnets:
        return "no subnet in an enabled address family"
    own_subnets = own.subnets()
    for sub in subnets:
        if not any(sub.version == n.version and sub.subnet_of(n) for n in networks):  # type: ignore[arg-type]
            return f"subnet {sub} is outside the cluster network"
        for other in claimed:
            if sub.version == other.version and sub.overlaps(other):
                whose = "ours" if other in own_subnets else "another peer's"
                return f"subnet {sub} overlaps {whose} ({other})"
    return ""
