"""A few calls of etcd's v3 JSON gateway (``/v3/kv/...``), stdlib only.

The lab's etcd listens on an address that exists only inside the underlay
namespace, so callers run these through
:func:`flanneld.lab.topology.run_in_netns`.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from subnet.errors import StoreError


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix)
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # etcd: from the key to the end of the keyspace
    raw[-1] += 1
    return bytes(raw)


def _post(url: str, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            doc = json.load(resp)
    except (OSError, urllib.error.URLError, ValueError) as err:
        raise StoreError(f"etcd gateway {url}{path}: {err}") from err
    if not isinstance(doc, dict):
        raise StoreError(f"etcd gateway {url}{path}: unexpected answer")
    return doc


def put(url: str, key: str, value: str, timeout: float = 5.0) -> None:
    _post(url, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout)


def get_prefix(url: str, prefix: str, timeout: float = 5.0) -> dict[str, str]:
    """Every key under ``prefix`` with its value."""
    end = base64.b64encode(prefix_range_end(prefix.encode())).decode("ascii")
    doc = _post(url, "/v3/kv/range", {"key": _b64(prefix), "range_end": end}, timeout)
    return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in doc.get("kvs", [])}


def healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether etcd's ``/health`` says ``"health": "true"``."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:
            return bool(json.load(resp).get("health") == "true")
    except (OSError, urllib.error.URLError, ValueError):
        return False
