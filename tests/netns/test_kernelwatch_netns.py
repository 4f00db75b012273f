"""The kernel watch notices deletions of our objects inside a namespace."""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from collections.abc import Callable

import pytest
from pyroute2 import netns as pyroute2_netns

from backends.kernelwatch import KernelWatch, OwnDeletions
from backends.model import Route
from backends.netlink import Netlink
from backends.plan import Delete, Put

pytestmark = pytest.mark.netns


def watch_in(
    name: str, notify: Callable[[], None], stop: threading.Event, own: OwnDeletions | None = None
) -> KernelWatch:
    """Create the watch's socket from a thread that entered the namespace."""
    made: list[KernelWatch] = []

    def build() -> None:
        pyroute2_netns.setns(name)
        made.append(KernelWatch(notify, stop, own))

    thread = threading.Thread(target=build)
    thread.start()
    thread.join(5)
    return made[0]


def ip(name: str, *args: str) -> None:
    subprocess.run(["ip", "-n", name, *args], check=True)


def test_deletions_of_ours_notify_and_foreign_ones_do_not(netns_factory) -> None:  # type: ignore[no-untyped-def]
    ns = netns_factory("kw")
    ip(ns, "link", "add", "kw0", "type", "veth", "peer", "name", "kw1")
    ip(ns, "addr", "add", "198.18.5.1/24", "dev", "kw0")
    ip(ns, "link", "set", "kw0", "up")
    ip(ns, "link", "set", "kw1", "up")
    ip(ns, "route", "add", "10.9.1.0/24", "via", "198.18.5.2", "proto", "static")
    ip(ns, "route", "add", "10.9.2.0/24", "via", "198.18.5.2", "proto", "44")
    notified = threading.Event()
    stop = threading.Event()
    watch = watch_in(ns, notified.set, stop)
    watch.start()
    try:
        ip(ns, "route", "del", "10.9.1.0/24")
        assert not notified.wait(1.0), "a foreign route's deletion must not trigger"
        ip(ns, "route", "del", "10.9.2.0/24")
        assert notified.wait(3.0), "deleting a proto 44 route must trigger"
        notified.clear()
        ip(ns, "link", "del", "kw0")
        assert notified.wait(3.0), "deleting a link must trigger"
    finally:
        stop.set()
        watch.join(3)
    assert not watch.is_alive()


def test_our_own_deletions_are_their_echo_and_new_objects_never_wake_it(netns_factory) -> None:  # type: ignore[no-untyped-def]
    ns = netns_factory("kwe")
    ip(ns, "link", "add", "kw0", "type", "veth", "peer", "name", "kw1")
    ip(ns, "addr", "add", "198.18.6.1/24", "dev", "kw0")
    ip(ns, "link", "set", "kw0", "up")
    ip(ns, "link", "set", "kw1", "up")
    own = OwnDeletions()
    notified = threading.Event()
    stop = threading.Event()
    gw = ipaddress.IPv4Address("198.18.6.2")
    with Netlink(ns, deletions=own) as netlink:
        index = netlink.link("kw0").index  # type: ignore[union-attr]
        routes = [Route(ipaddress.IPv4Network(f"10.9.{i}.0/24"), gw, index) for i in range(200)]
        watch = watch_in(ns, notified.set, stop, own)
        watch.start()
        try:
            assert len(netlink.apply([Put(r) for r in routes]).applied) == 200
            assert not notified.wait(1.0), "adding objects must not wake the watch"
            assert len(netlink.apply([Delete(r) for r in routes[:100]]).applied) == 100
            assert not notified.wait(1.5), "our own deletions are their echo, not damage"
            ip(ns, "route", "del", "10.9.150.0/24")
            assert notified.wait(3.0), "a deletion by hand is damage"
        finally:
            stop.set()
            watch.join(3)
    assert not watch.is_alive()
