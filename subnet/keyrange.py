"""etcd key ranges: the one place that computes where a key prefix ends.

etcd selects a range ``[key, range_end)``; every key that starts with a
prefix lies below the prefix with its last byte raised by one.  Used by the
etcd subnet manager (create-if-absent over a subnet's keys) and by the lab's
JSON-gateway client (list or count leases).
"""

from __future__ import annotations


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects exactly the keys starting with ``prefix``.

    Trailing 0xff bytes cannot be raised and are dropped first; a prefix of
    nothing but 0xff (or an empty one) selects to the end of the keyspace,
    which etcd spells ``b"\\0"``.
    """
    raw = bytearray(prefix)
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)
