"""The node watch's stream parser: chunk boundaries, and bad lines that must not kill the thread."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from subnet.errors import StoreError
from subnet.kube import _events


class Chunks:
    """The part of a urllib3 response ``_events`` reads: the body in given pieces."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self._chunks


def event(name: str) -> bytes:
    return json.dumps({"type": "ADDED", "object": {"metadata": {"name": name}}}).encode()


def names(resp: Chunks) -> list[str]:
    return [e["object"]["metadata"]["name"] for e in _events(resp)]


def test_lines_split_anywhere_across_chunks_and_a_last_line_without_newline() -> None:
    body = event("a") + b"\n\n" + event("b") + b"\n" + event("c")
    for cut in range(1, len(body)):
        assert names(Chunks(body[:cut], body[cut:])) == ["a", "b", "c"], cut
    assert names(Chunks(*[bytes([b]) for b in body])) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"type": "MODIFIED", "object": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "recursion"),
    ],
    ids=["not-json", "not-an-object", "nested-too-deeply"],
)
def test_a_bad_line_is_a_store_error_after_the_good_events(line: bytes, reason: str) -> None:
    events = _events(Chunks(event("a") + b"\n", line + b"\n", event("b") + b"\n"))
    assert next(events)["object"]["metadata"]["name"] == "a"
    with pytest.raises(StoreError, match=reason):  # the manager re-lists; no thread dies
        next(events)
