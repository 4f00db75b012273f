"""The peer table: a fold of watch messages, and detection of our lost lease."""

from __future__ import annotations

import ipaddress

from flanneld.peertable import PeerTable, loses_own_lease
from subnet.lease import Lease, LeaseAttrs
from subnet.manager import LeaseAdded, LeaseRemoved, Snapshot


def lease(third: int, ip: str = "198.18.0.10") -> Lease:
    return Lease(
        ipaddress.IPv4Network(f"10.244.{third}.0/24"),
        None,
        LeaseAttrs(public_ip=ipaddress.IPv4Address(ip), backend_type="vxlan"),
    )


OWN = lease(1)


def test_snapshot_replaces_everything_and_hides_our_lease() -> None:
    table = PeerTable(OWN.key)
    table.apply(Snapshot((OWN, lease(2), lease(3))))
    assert sorted(p.key for p in table.peers()) == ["10.244.2.0-24", "10.244.3.0-24"]
    assert not loses_own_lease(OWN.key, Snapshot((OWN, lease(4))))
    table.apply(Snapshot((OWN, lease(4))))
    assert [p.key for p in table.peers()] == ["10.244.4.0-24"]


def test_snapshot_without_our_lease_reports_it_lost() -> None:
    table = PeerTable(OWN.key)
    assert loses_own_lease(OWN.key, Snapshot((lease(2),)))
    table.apply(Snapshot((lease(2),)))
    assert [p.key for p in table.peers()] == ["10.244.2.0-24"]


def test_added_updates_in_place_and_ignores_ours() -> None:
    table = PeerTable(OWN.key)
    table.apply(LeaseAdded(lease(2)))
    table.apply(LeaseAdded(lease(2, "198.18.0.99")))
    table.apply(LeaseAdded(OWN))
    assert [str(p.attrs.public_ip) for p in table.peers()] == ["198.18.0.99"]
    assert len(table) == 1


def test_removed_peer_and_removed_own_lease() -> None:
    table = PeerTable(OWN.key)
    table.apply(Snapshot((OWN, lease(2))))
    assert not loses_own_lease(OWN.key, LeaseRemoved("10.244.2.0-24"))
    table.apply(LeaseRemoved("10.244.2.0-24"))
    assert table.peers() == []
    assert loses_own_lease(OWN.key, LeaseRemoved(OWN.key))
    assert not loses_own_lease(OWN.key, LeaseAdded(OWN))


def test_new_own_key_drops_it_from_peers() -> None:
    table = PeerTable(OWN.key)
    table.apply(Snapshot((OWN, lease(2), lease(3))))
    table.set_own_key(lease(3).key)
    assert table.own_key == "10.244.3.0-24"
    assert [p.key for p in table.peers()] == ["10.244.2.0-24"]


def test_changes_since_the_last_take_are_per_key_and_unknown_after_a_snapshot() -> None:
    table = PeerTable(OWN.key)
    table.apply(Snapshot((OWN, lease(2), lease(3))))
    assert table.take_changes() is None  # everything may have changed
    table.apply(LeaseAdded(lease(4)))
    table.apply(LeaseRemoved(lease(2).key))
    table.apply(LeaseRemoved("10.244.99.0-24"))  # unknown: nothing changes
    table.apply(LeaseAdded(OWN))  # ours is not a peer
    assert table.take_changes() == {lease(4).key: lease(4), lease(2).key: None}
    assert table.take_changes() == {}
    table.apply(LeaseAdded(lease(5)))
    table.forget_changes()  # the pass failed: the next one looks at every peer
    assert table.take_changes() is None
