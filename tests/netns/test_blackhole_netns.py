"""--ip-blackhole-route: blackhole routes for our subnets, and only ours."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from backends.model import ROUTE_PROTOCOL
from backends.netlink import Netlink

pytestmark = pytest.mark.netns


def routes(ns: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "show", "table", "all"], check=True,
        capture_output=True, text=True,
    ).stdout
    return list(json.loads(out or "[]"))


def blackholes(ns: str) -> set[str]:
    return {str(r["dst"]) for r in routes(ns) if r.get("type") == "blackhole"}


def test_blackholes_follow_our_subnets_and_leave_others_alone(netns_factory) -> None:  # type: ignore[no-untyped-def]
    ns = netns_factory("bh")
    subprocess.run(["ip", "-n", ns, "route", "add", "blackhole", "10.99.0.0/24"], check=True)
    with Netlink(ns) as netlink:
        first = ipaddress.ip_network("10.244.3.0/24")
        assert netlink.sync_blackholes([first]) == 1
        assert blackholes(ns) == {"10.244.3.0/24", "10.99.0.0/24"}
        assert netlink.sync_blackholes([first]) == 0  # idempotent
        ours = [r for r in routes(ns) if r.get("dst") == "10.244.3.0/24"]
        assert ours and str(ours[0].get("protocol")) == str(ROUTE_PROTOCOL)
        # our subnet changed: the old blackhole goes, the foreign one stays
        assert netlink.sync_blackholes([ipaddress.ip_network("10.244.7.0/24")]) == 2
        assert blackholes(ns) == {"10.244.7.0/24", "10.99.0.0/24"}
        # a blackhole is not a route the backends manage
        assert netlink.observe([], [2]).routes == frozenset()
