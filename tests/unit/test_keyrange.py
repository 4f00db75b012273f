"""The one "end of a key prefix" computation, shared by the etcd manager and the lab's client."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from subnet.keyrange import prefix_range_end


def test_prefix_range_end_selects_exactly_the_prefix() -> None:
    assert prefix_range_end(b"/coreos.com/network/subnets/") == b"/coreos.com/network/subnets0"
    assert prefix_range_end(b"/coreos.com/network/subnets/10.5.1.0") == (
        b"/coreos.com/network/subnets/10.5.1.1"
    )
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\0"
    assert prefix_range_end(b"") == b"\0"


@given(st.binary(min_size=1, max_size=6), st.binary(max_size=6))
def test_a_key_is_in_the_range_exactly_when_it_starts_with_the_prefix(
    prefix: bytes, key: bytes
) -> None:
    end = prefix_range_end(prefix)
    in_range = prefix <= key and (end == b"\0" or key < end)
    assert in_range == key.startswith(prefix)
