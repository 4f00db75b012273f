"""Two "hosts" (namespaces) joined by a veth underlay, for the backend namespace tests.

Built with the lab's plumbing (:mod:`flanneld.lab.topology`); ``sh`` and
``ip_json`` only inspect what the code under test did.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from typing import Any

from backends.base import ExternalInterface
from flanneld.lab import topology


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", ns, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def veth_hosts(
    netns_factory: Callable[[str], str], tag: str
) -> list[tuple[str, int, ExternalInterface]]:
    """Namespaces ``<tag>a`` and ``<tag>b`` on 198.18.0.1/.2 over ``ul0``.

    Each gets ``10.244.<n>.1/32`` on lo as a stand-in pod address.  Returns
    (namespace, n, external interface) per host, n = 1 and 2.
    """
    a, b = netns_factory(f"{tag}a"), netns_factory(f"{tag}b")
    topology.veth_link(a, "ul0", _underlay(1), b, "ul0", _underlay(2))
    hosts = []
    for ns, third in ((a, 1), (b, 2)):
        topology.add_address(ns, "lo", ipaddress.IPv4Interface(f"10.244.{third}.1/32"))
        addr = _underlay(third).ip
        ext = ExternalInterface("ul0", topology.link_index(ns, "ul0"), 1500, addr, addr)
        hosts.append((ns, third, ext))
    return hosts


def _underlay(third: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"198.18.0.{third}/24")
