"""Two "hosts" (namespaces) joined by a veth underlay, for the backend namespace tests."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from typing import Any

from backends.base import ExternalInterface


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
    sh("ip", "-n", a, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", b)
    hosts = []
    for ns, third in ((a, 1), (b, 2)):
        sh("ip", "-n", ns, "addr", "add", f"198.18.0.{third}/24", "dev", "ul0")
        sh("ip", "-n", ns, "addr", "add", f"10.244.{third}.1/32", "dev", "lo")
        sh("ip", "-n", ns, "link", "set", "ul0", "up")
        index = int(ip_json(ns, "link", "show", "ul0")[0]["ifindex"])
        addr = ipaddress.IPv4Address(f"198.18.0.{third}")
        hosts.append((ns, third, ExternalInterface("ul0", index, 1500, addr, addr)))
    return hosts
