"""etcd's v3 JSON gateway (``/v3/kv/...``): the one client of the lab, its tests and the benchmarks.

:class:`EtcdGateway` keeps one HTTP connection alive, so a benchmark measures etcd and flanneld, not TCP set-up.  The lab's
etcd listens on an address that exists only inside a namespace: given
``netns``, every (re)connect happens inside it (a socket keeps the namespace
it was made in), while the calls themselves run in the caller's thread.
Without ``netns`` a connection is opened where the caller is.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from flanneld.lab.topology import run_in_netns
from subnet.errors import StoreError
from subnet.keyrange import prefix_range_end

TXN_OPS = 128  # etcd's default --max-txn-ops


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


class _Connection(http.client.HTTPConnection):
    """An HTTP connection whose socket is always made inside ``netns`` (when given)."""

    def __init__(self, host: str, port: int | None, timeout: float, netns: str | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        if self._netns is None:
            super().connect()
            return
        run_in_netns(self._netns, super().connect)


class EtcdGateway:
    """put, delete, list and count keys through etcd's JSON gateway at ``url``.

    Every failure (connection, HTTP status, an answer that is not a JSON
    object) raises :class:`~subnet.errors.StoreError`; a kept-alive
    connection that the server closed is reopened once.  Not thread-safe:
    one gateway per thread.
    """

    def __init__(self, url: str, *, netns: str | None = None, timeout: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise StoreError(f"etcd gateway: {url!r} is not an http://host:port URL")
        self._url = url
        self._host, self._port = parts.hostname, parts.port
        self._netns = netns
        self._timeout = timeout
        self._conn: _Connection | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = _Connection(self._host, self._port, self._timeout, self._netns)
            try:
                self._conn.request(method, path, body, {"Content-Type": "application/json"})
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as err:
                self.close()
                if attempt == 2:
                    raise StoreError(f"etcd gateway {self._url}{path}: {err}") from err
        raise AssertionError("unreachable")

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        status, raw = self._request("POST", path, json.dumps(body).encode())
        if status != 200:
            raise StoreError(f"etcd gateway {self._url}{path}: HTTP {status}: {raw[:200]!r}")
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise StoreError(f"etcd gateway {self._url}{path}: {err}") from err
        if not isinstance(doc, dict):
            raise StoreError(f"etcd gateway {self._url}{path}: unexpected answer")
        return doc

    def put(self, key: str, value: str) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def put_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Puts in transactions of at most :data:`TXN_OPS` operations each."""
        for start in range(0, len(items), TXN_OPS):
            chunk = items[start : start + TXN_OPS]
            ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in chunk]
            self._post("/v3/kv/txn", {"success": ops})

    def _prefix_range(self, prefix: str) -> dict[str, Any]:
        end = base64.b64encode(prefix_range_end(prefix.encode())).decode("ascii")
        return {"key": _b64(prefix), "range_end": end}

    def get_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` with its value."""
        doc = self._post("/v3/kv/range", self._prefix_range(prefix))
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in doc.get("kvs", [])}

    def count_prefix(self, prefix: str) -> int:
        """How many keys start with ``prefix``."""
        doc = self._post("/v3/kv/range", {**self._prefix_range(prefix), "count_only": True})
        return int(doc.get("count", 0))

    def healthy(self) -> bool:
        """Whether etcd's ``/health`` says ``"health": "true"`` (False on any error)."""
        try:
            status, raw = self._request("GET", "/health", None)
            return status == 200 and json.loads(raw).get("health") == "true"
        except (StoreError, ValueError, AttributeError):
            return False
