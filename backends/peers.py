"""Which peer leases a backend may program: pure checks shared by all backends."""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from backends.model import Skipped
from subnet.lease import IPNetwork, Lease

# A subnet with its first and last address as integers: the checks of a pass over
# thousands of leases compare integers, not ipaddress objects.
_Span = tuple[IPNetwork, int, int]


def _span(subnet: IPNetwork) -> _Span:
    first = int(subnet.network_address)
    return subnet, first, first | ((1 << (subnet.max_prefixlen - subnet.prefixlen)) - 1)


class _Claims:
    """Subnets already taken, as sorted disjoint address intervals per family.

    Checking a new subnet looks only at its two neighbours, so a pass over
    N peers costs O(N log N), not O(N²).  Per family, three parallel lists
    (first address, last address, subnet) sorted by first address.
    """

    def __init__(self) -> None:
        self._lists: dict[int, tuple[list[int], list[int], list[IPNetwork]]] = {
            4: ([], [], []), 6: ([], [], [])}

    def overlapping(self, span: _Span) -> IPNetwork | None:
        subnet, first, last = span
        starts, ends, subnets = self._lists[subnet.version]
        at = bisect.bisect_right(starts, last)
        if at and ends[at - 1] >= first:  # the claim starting at or before our end
            return subnets[at - 1]
        return None

    def add(self, span: _Span) -> None:
        subnet, first, last = span
        starts, ends, subnets = self._lists[subnet.version]
        at = bisect.bisect_right(starts, first)
        starts.insert(at, first)
        ends.insert(at, last)
        subnets.insert(at, subnet)

    def remove(self, subnet: IPNetwork) -> None:
        starts, ends, subnets = self._lists[subnet.version]
        first = int(subnet.network_address)
        at = bisect.bisect_left(starts, first)
        while at < len(starts) and starts[at] == first:
            if subnets[at] == subnet:
                del starts[at], ends[at], subnets[at]
                return
            at += 1


def usable_peers(
    own: Lease,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    backend_type: str | None,
) -> tuple[list[Lease], list[Skipped]]:
    """Split ``peers`` into the usable ones and the skipped ones, with reasons.

    A peer is skipped when it runs another backend (``backend_type`` None
    accepts any, as upstream's udp does), when a subnet lies outside the
    cluster networks, overlaps ours, or overlaps an older peer's (the first
    claimant, by the store's creation order, keeps it).  Subnets of an address family the
    cluster does not run are ignored.
    """
    usable, skipped, _ = screen_peers(own, peers, networks, backend_type)
    return usable, skipped


def screen_peers(
    own: Lease,
    peers: Sequence[Lease],
    networks: Sequence[IPNetwork],
    backend_type: str | None,
    own_tokens: Iterable[Hashable] = (),
) -> tuple[list[Lease], list[Skipped], PeerIndex]:
    """:func:`usable_peers`, and the :class:`PeerIndex` holding every usable peer (with
    no tokens: :meth:`PeerIndex.add_tokens` gives them theirs)."""
    index = PeerIndex(own, networks, backend_type, own_tokens)
    usable: list[Lease] = []
    skipped: list[Skipped] = []
    for peer in sorted(peers, key=Lease.seniority):
        reason = index.take(peer)
        if reason:
            skipped.append(Skipped(peer.key, reason))
        else:
            usable.append(peer)
    return usable, skipped, index


def unusable_ipv6(addr: ipaddress.IPv6Address | None) -> str:
    """Why a peer's PublicIPv6 cannot be a tunnel endpoint or next hop ('' if it can)."""
    if addr is None:
        return ""  # no IPv6 endpoint at all: each backend says what it needs
    for bad, what in (
        (addr.ipv4_mapped is not None, "an IPv4-mapped address"),
        (addr.is_link_local, "link-local"),
        (addr.is_loopback, "the loopback address"),
        (addr.is_unspecified, "the unspecified address"),
        (addr.is_multicast, "a multicast address"),
    ):
        if bad:
            return f"PublicIPv6 {addr} is {what}, not a unicast address another node can reach"
    return ""


class PeerIndex:
    """The usable peers of a full pass that skipped none, with what each holds exclusively.

    With no peer skipped, a changed peer that passes the per-peer checks and
    whose subnets and tokens (a VTEP MAC, say) nobody else holds gets the same
    answer from a full pass as from looking at it alone: that is what lets an
    event cost in proportion to what it changes.  Anything else (a conflict, a
    rejected peer) is for the full pass; the caller then drops the index.
    """

    def __init__(
        self,
        own: Lease,
        networks: Sequence[IPNetwork],
        backend_type: str | None,
        own_tokens: Iterable[Hashable] = (),
    ) -> None:
        self._networks = [_span(n)[1:] + (n.version,) for n in networks]
        self._backend_type = backend_type
        self._enabled = {n.version for n in networks}
        self._own_subnets = [s for s in own.subnets() if s.version in self._enabled]
        self._claims = _Claims()
        for sub in self._own_subnets:
            self._claims.add(_span(sub))
        self._tokens: dict[Hashable, str] = dict.fromkeys(own_tokens, "")
        # per held peer: its subnets in enabled families, and its tokens
        self._held: dict[str, tuple[tuple[IPNetwork, ...], tuple[Hashable, ...]]] = {}

    def _spans(self, lease: Lease) -> list[_Span]:
        return [_span(s) for s in lease.subnets() if s.version in self._enabled]

    def hold(self, lease: Lease, tokens: Iterable[Hashable] = ()) -> None:
        """Record a peer the full pass found usable."""
        self._hold(lease.key, self._spans(lease), tuple(tokens))

    def _hold(self, key: str, spans: list[_Span], tokens: tuple[Hashable, ...]) -> None:
        for span in spans:
            self._claims.add(span)
        for token in tokens:
            self._tokens[token] = key
        self._held[key] = (tuple(span[0] for span in spans), tokens)

    def add_tokens(self, key: str, tokens: Iterable[Hashable]) -> None:
        """Give a held peer the tokens a full pass found nobody else holds."""
        subnets, held = self._held[key]
        more = tuple(tokens)
        for token in more:
            self._tokens[token] = key
        self._held[key] = (subnets, held + more)

    def release(self, key: str) -> bool:
        """Forget a peer (removed or about to change); False if it was not held."""
        held = self._held.pop(key, None)
        if held is None:
            return False
        for subnet in held[0]:
            self._claims.remove(subnet)
        for token in held[1]:
            self._tokens.pop(token, None)
        return True

    def admit(self, lease: Lease, tokens: Iterable[Hashable] = ()) -> bool:
        """Hold ``lease`` if a full pass would find it usable alongside the others."""
        wanted = tuple(tokens)
        if any(t in self._tokens for t in wanted):
            return False
        return not self.take(lease, wanted)

    def take(self, lease: Lease, tokens: tuple[Hashable, ...] = ()) -> str:
        """Why a full pass would skip ``lease`` given the peers held so far ('' if it
        would not: then it is held, with ``tokens``)."""
        spans = self._spans(lease)
        reason = self._reject_reason(lease, spans)
        if not reason:
            self._hold(lease.key, spans, tokens)
        return reason

    def _reject_reason(self, peer: Lease, spans: list[_Span]) -> str:
        if self._backend_type is not None and peer.attrs.backend_type != self._backend_type:
            return f"backend type {peer.attrs.backend_type!r}, not {self._backend_type!r}"
        if not spans:
            return "no subnet in an enabled address family"
        if peer.ipv6_subnet is not None and 6 in self._enabled:
            unusable = unusable_ipv6(peer.attrs.public_ipv6)
            if unusable:
                return unusable
        for span in spans:
            sub, first, last = span
            if not any(low <= first and last <= high and sub.version == version
                       for low, high, version in self._networks):
                return f"subnet {sub} is outside the cluster network"
            other = self._claims.overlapping(span)
            if other is not None:
                whose = "ours" if other in self._own_subnets else "another peer's"
                return f"subnet {sub} overlaps {whose} ({other})"
        return ""


T = TypeVar("T")
# One changed peer as a backend sees it alone: what it needs programmed (kernel objects,
# table entries) and the tokens it must hold exclusively; None when only a full pass can
# tell (a peer the per-peer checks reject, or one a backend cannot use).
PeerView = Callable[[Lease], tuple[list[T], tuple[Hashable, ...]] | None]


class PeerEntries(Generic[T]):
    """What each usable peer needs, kept between passes with the :class:`PeerIndex` of
    the last full pass, so that an event recomputes only the peers it changes."""

    def __init__(self) -> None:
        self._index: PeerIndex | None = None
        self._entries: dict[str, list[T]] = {}

    def reset(self, index: PeerIndex | None, entries: dict[str, list[T]]) -> None:
        """The result of a full pass (``index`` None: it skipped a peer, so every event
        is a full pass until one skips none)."""
        self._index = index
        self._entries = entries

    def change(
        self, changes: Mapping[str, Lease | None], view: PeerView[T]
    ) -> tuple[list[T], list[T]] | None:
        """The changed peers' old and new entries; None (and the index dropped) when a
        changed peer needs a full pass."""
        index = self._index
        if index is None:
            return None
        old: list[T] = []
        new: list[T] = []
        for key, lease in changes.items():
            if index.release(key):
                old += self._entries.pop(key, ())
            if lease is None:
                continue
            seen = view(lease)
            if seen is None or not index.admit(lease, seen[1]):
                self._index = None
                return None
            self._entries[key] = seen[0]
            new += seen[0]
        return old, new

    def all(self) -> list[T]:
        return [entry for entries in self._entries.values() for entry in entries]

    def peer_keys(self) -> Iterable[str]:
        return self._entries.keys()

    def __len__(self) -> int:
        return len(self._entries)
