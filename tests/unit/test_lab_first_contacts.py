"""The lab's one-way first pings before a wireguard matrix (crossing handshakes)."""

from __future__ import annotations

import ipaddress

from flanneld.lab.lab import _first_contacts
from flanneld.lab.matrix import Endpoint


def test_one_ping_per_node_pair_and_family_in_one_direction() -> None:
    endpoints = [
        Endpoint(f"n{n}p{p}", f"x-n{n}p{p}", ipaddress.ip_address(addr))
        for n in (1, 2, 3) for p in (1, 2)
        for addr in (f"10.244.{n}.{p + 1}", f"fd00:10:244:{n}::{p + 1}")
    ]
    jobs = _first_contacts(endpoints, 10.0)
    pairs = sorted((j.src.name, j.dst.name, j.dst.ip.version) for j in jobs)
    assert pairs == [(a, b, v) for a, b in (("n1p1", "n2p1"), ("n1p1", "n3p1"), ("n2p1", "n3p1"))
                     for v in (4, 6)]
    assert all(j.count == 1 and "-w" in j.argv for j in jobs)
