"""usable_peers: the shared peer checks, against a brute-force model."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.peers import PeerIndex, usable_peers
from subnet.lease import Lease, LeaseAttrs

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
OWN = Lease(ipaddress.IPv4Network("10.244.1.0/24"), None, LeaseAttrs(backend_type="vxlan"))


def peer(net: str, kind: str = "vxlan") -> Lease:
    return Lease(ipaddress.IPv4Network(net), None, LeaseAttrs(backend_type=kind))


def brute_force(peers: list[Lease]) -> list[str]:
    claimed = [OWN.subnet]
    kept = []
    for p in sorted(peers, key=lambda p: p.key):
        sub = p.subnet
        assert sub is not None
        if not sub.subnet_of(NETWORK) or any(sub.overlaps(c) for c in claimed if c):
            continue
        kept.append(p.key)
        claimed.append(sub)
    return kept


subnets = st.builds(
    lambda third, fourth, plen: ipaddress.IPv4Network((f"10.{third}.{fourth}.0", plen), strict=False),
    st.sampled_from([243, 244, 245]), st.integers(0, 7), st.integers(14, 26),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(subnets, max_size=25))
def test_matches_brute_force(nets: list[ipaddress.IPv4Network]) -> None:
    peers = [peer(str(n)) for n in nets]
    usable, skipped = usable_peers(OWN, peers, [NETWORK], "vxlan")
    assert [p.key for p in usable] == brute_force(peers)
    assert len(usable) + len(skipped) == len(peers)


def test_reasons_name_the_conflict() -> None:
    usable, skipped = usable_peers(
        OWN,
        [peer("10.244.1.0/24"), peer("10.244.2.0/24"), peer("10.244.2.0/25"),
         peer("10.9.0.0/24"), peer("10.244.3.0/24", "host-gw")],
        [NETWORK],
        "vxlan",
    )
    assert [p.key for p in usable] == ["10.244.2.0-24"]
    reasons = {s.key: s.reason for s in skipped}
    assert reasons["10.244.1.0-24"] == "subnet 10.244.1.0/24 overlaps ours (10.244.1.0/24)"
    assert "another peer's (10.244.2.0/24)" in reasons["10.244.2.0-25"]
    assert "outside the cluster network" in reasons["10.9.0.0-24"]
    assert "backend type 'host-gw'" in reasons["10.244.3.0-24"]


def test_dual_stack_peer_in_ipv4_cluster_is_kept() -> None:
    dual = Lease(
        ipaddress.IPv4Network("10.244.7.0/24"), ipaddress.IPv6Network("fd00:7::/64"),
        LeaseAttrs(backend_type="vxlan"),
    )
    usable, skipped = usable_peers(OWN, [dual], [NETWORK], "vxlan")
    assert usable == [dual] and skipped == []


def test_five_thousand_peers_are_fast() -> None:
    import time

    peers = [peer(f"10.{100 + i // 256}.{i % 256}.0/24") for i in range(5000)]
    started = time.perf_counter()
    usable, _ = usable_peers(OWN, peers, [ipaddress.IPv4Network("10.0.0.0/8")], "vxlan")
    assert len(usable) == 5000
    # About 0.05 s; a quadratic check of 5000 peers would take minutes.  The
    # bound is generous so that a loaded machine never fails it.
    assert time.perf_counter() - started < 10.0


def test_the_older_claim_wins_whatever_the_key_order() -> None:
    import dataclasses

    owner = dataclasses.replace(peer("10.244.9.0/24"), claim_order=10.0)
    intruder = dataclasses.replace(peer("10.244.8.0/23"), claim_order=99.0)  # sorts first by key
    usable, skipped = usable_peers(OWN, [intruder, owner], [NETWORK], "vxlan")
    assert [p.key for p in usable] == ["10.244.9.0-24"]
    assert skipped[0].key == "10.244.8.0-23"
    assert "another peer's (10.244.9.0/24)" in skipped[0].reason
    unknown = dataclasses.replace(peer("10.244.8.0/23"), claim_order=None)
    usable, _ = usable_peers(OWN, [unknown, owner], [NETWORK], "vxlan")
    assert [p.key for p in usable] == ["10.244.9.0-24"]


@settings(max_examples=300, deadline=None)
@given(st.lists(subnets, max_size=12), st.lists(st.tuples(st.booleans(), subnets), max_size=8))
def test_a_change_the_index_admits_is_what_a_full_pass_would_decide(
    start: list[ipaddress.IPv4Network], changes: list[tuple[bool, ipaddress.IPv4Network]]
) -> None:
    """Law: while the index holds (no peer skipped), every admitted change leaves the
    peers usable exactly as a full pass over all of them finds them: none skipped."""
    table = {p.key: p for p in (peer(str(s)) for s in start)}
    usable, skipped = usable_peers(OWN, list(table.values()), [NETWORK], "vxlan")
    if skipped:
        return
    index = PeerIndex(OWN, [NETWORK], "vxlan")
    for lease in usable:
        index.hold(lease)
    for remove, sub in changes:
        new = peer(str(sub))
        if remove:
            assert index.release(new.key) == (new.key in table)
            table.pop(new.key, None)
        else:
            index.release(new.key)
            if not index.admit(new):
                return  # a full pass decides from here on
            table[new.key] = new
        usable, skipped = usable_peers(OWN, list(table.values()), [NETWORK], "vxlan")
        assert not skipped and {p.key for p in usable} == set(table)


def test_the_index_refuses_overlaps_taken_tokens_and_other_backends() -> None:
    index = PeerIndex(OWN, [NETWORK], "vxlan", own_tokens=["0e:00:00:00:00:01"])
    index.hold(peer("10.244.2.0/24"), ["0e:00:00:00:00:02"])
    assert not index.admit(peer("10.244.2.0/25"), ["0e:00:00:00:00:03"])  # overlaps a peer
    assert not index.admit(peer("10.244.1.0/24"), ["0e:00:00:00:00:03"])  # overlaps ours
    assert not index.admit(peer("10.244.3.0/24"), ["0e:00:00:00:00:02"])  # a peer's MAC
    assert not index.admit(peer("10.244.3.0/24"), ["0e:00:00:00:00:01"])  # our MAC
    assert not index.admit(peer("10.244.3.0/24", "host-gw"), ["0e:00:00:00:00:03"])
    assert not index.admit(peer("10.99.3.0/24"), ["0e:00:00:00:00:03"])  # outside the network
    assert index.admit(peer("10.244.3.0/24"), ["0e:00:00:00:00:03"])
    assert index.release(peer("10.244.2.0/24").key)
    assert index.admit(peer("10.244.2.0/25"), ["0e:00:00:00:00:02"])  # freed by the release


V6_NETWORK = ipaddress.IPv6Network("fd00:10:244::/56")
OWN_DUAL = Lease(ipaddress.IPv4Network("10.244.1.0/24"), ipaddress.IPv6Network("fd00:10:244:1::/64"),
                 LeaseAttrs(backend_type="host-gw"))


def dual_peer(third: int, public_ipv6: str | None) -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        ipaddress.IPv6Network(f"fd00:10:244:{third:x}::/64"),
        LeaseAttrs(
            public_ip=ipaddress.IPv4Address(f"198.18.0.{third}"),
            public_ipv6=ipaddress.IPv6Address(public_ipv6) if public_ipv6 else None,
            backend_type="host-gw",
        ),
    )


def test_unusable_public_ipv6_is_skipped_with_the_reason_and_others_stay() -> None:
    peers = [dual_peer(2, "fd00:198:18::12"), dual_peer(3, "::ffff:198.18.0.3"),
             dual_peer(4, "fe80::4"), dual_peer(5, "::1"), dual_peer(6, None)]
    usable, skipped = usable_peers(OWN_DUAL, peers, [NETWORK, V6_NETWORK], "host-gw")
    assert [p.key for p in usable] == [peers[0].key, peers[4].key]
    reasons = {s.key: s.reason for s in skipped}
    assert "is an IPv4-mapped address" in reasons[peers[1].key]
    assert "is link-local" in reasons[peers[2].key]
    assert "is the loopback address" in reasons[peers[3].key]
    # the per-event path decides the same
    index = PeerIndex(OWN_DUAL, [NETWORK, V6_NETWORK], "host-gw")
    assert not index.admit(peers[1]) and index.admit(peers[0])


def test_ipv4_cluster_ignores_a_peers_ipv6_endpoint() -> None:
    usable, skipped = usable_peers(OWN, [dual_peer(3, "fe80::3")], [NETWORK], None)
    assert len(usable) == 1 and skipped == []


subnets6 = st.builds(
    lambda word, plen: ipaddress.IPv6Network((f"fd00:10:{word:x}::", plen), strict=False),
    st.sampled_from([0x243, 0x244, 0x245, 0x2440]), st.integers(20, 64),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(subnets6, max_size=20))
def test_ipv6_containment_and_overlap_match_ipaddress(nets: list[ipaddress.IPv6Network]) -> None:
    """The integer checks decide as ipaddress's subnet_of and overlaps do."""
    network6 = ipaddress.IPv6Network("fd00:10:244::/48")
    own = Lease(None, ipaddress.IPv6Network("fd00:10:244:1::/64"), LeaseAttrs(backend_type="x"))
    peers = [Lease(None, n, LeaseAttrs(backend_type="x")) for n in nets]
    usable, skipped = usable_peers(own, peers, [network6], "x")
    claimed: list[ipaddress.IPv6Network] = [own.ipv6_subnet]  # type: ignore[list-item]
    kept = []
    for p in sorted(peers, key=lambda p: p.key):
        sub = p.ipv6_subnet
        assert sub is not None
        if sub.subnet_of(network6) and not any(sub.overlaps(c) for c in claimed):
            kept.append(p.key)
            claimed.append(sub)
    assert [p.key for p in usable] == kept
    assert len(usable) + len(skipped) == len(peers)
