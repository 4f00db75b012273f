"""A worker thread inside a network namespace, and HTTP GETs made from it."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import checkout  # noqa: F401 - this checkout's pyflannel first

from flanneld.lab.topology import enter_netns

T = TypeVar("T")


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
