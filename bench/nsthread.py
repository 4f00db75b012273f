"""The benches' two namespaces, a worker thread inside each, and HTTP GETs made from them.

    <prefix>-ul  the store's side (etcd or the API double), 198.18.0.1 on veth ``ul0``
    <prefix>-n1  the node under test, 198.18.0.2 on ``ul0``

Dual stack (``dual=True``): the IPv4 prefix is /15, so that the fake peers'
addresses in 198.19.0.0/16 are on-link (host-gw routes through them), and
``ul0`` also carries fd00:198:18::1/64 and ::2/64.

Names carry a unique ``pfb<6 hex>`` prefix; everything is removed afterwards,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import http.client
import ipaddress
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import checkout  # noqa: F401 - this checkout's pyflannel first

from flanneld.lab.topology import (
    add_address,
    create_netns,
    delete_netns,
    enter_netns,
    veth_link,
)

T = TypeVar("T")

UNDERLAY_IP = "198.18.0.1"
NODE_IP = "198.18.0.2"
UNDERLAY_IP6 = "fd00:198:18::1"
NODE_IP6 = "fd00:198:18::2"


class NsThread:
    """One worker thread living in namespace ``ns``: sockets it opens belong there."""

    def __init__(self, ns: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=enter_netns(ns),
                                        thread_name_prefix=f"ns-{ns}")

    def run(self, func: Callable[[], T]) -> T:
        return self._pool.submit(func).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

def http_get(thread: NsThread, url_host: str, port: int, path: str,
             timeout: float = 2.0) -> tuple[int, str]:
    """GET from inside the thread's namespace; (0, error text) when it cannot connect."""

    def call() -> tuple[int, str]:
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as err:
            return 0, str(err)
        finally:
            conn.close()

    return thread.run(call)


def unique_prefix() -> str:
    return "pfb" + uuid.uuid4().hex[:6]


@dataclass(frozen=True, slots=True)
class Namespaces:
    prefix: str
    underlay_ns: str
    node_ns: str
    workdir: str
    underlay_thread: NsThread
    node_thread: NsThread


@contextmanager
def node_and_underlay(dual: bool = False) -> Iterator[Namespaces]:
    """The two namespaces joined by ``ul0``, a worker thread in each, and a work directory."""
    prefix = unique_prefix()
    underlay_ns, node_ns = f"{prefix}-ul", f"{prefix}-n1"
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-")
    created: list[str] = []
    threads: list[NsThread] = []
    try:
        for ns in (underlay_ns, node_ns):
            create_netns(ns)
            created.append(ns)
        plen = 15 if dual else 24
        veth_link(underlay_ns, "ul0", ipaddress.IPv4Interface(f"{UNDERLAY_IP}/{plen}"),
                  node_ns, "ul0", ipaddress.IPv4Interface(f"{NODE_IP}/{plen}"))
        if dual:
            add_address(underlay_ns, "ul0", ipaddress.IPv6Interface(f"{UNDERLAY_IP6}/64"))
            add_address(node_ns, "ul0", ipaddress.IPv6Interface(f"{NODE_IP6}/64"))
        underlay_thread, node_thread = NsThread(underlay_ns), NsThread(node_ns)
        threads += [underlay_thread, node_thread]
        yield Namespaces(prefix, underlay_ns, node_ns, workdir, underlay_thread, node_thread)
    finally:
        for thread in threads:
            thread.close()
        for ns in created:
            delete_netns(ns)
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)
