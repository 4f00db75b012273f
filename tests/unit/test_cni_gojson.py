"""Go encoding/json compatibility of the delegate config encoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import gojson


@pytest.mark.parametrize(
    ("number", "go"),
    [
        (1500.0, "1500"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (-2.0, "-2"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-7"),
        (2.5e-10, "2.5e-10"),
        (1e-6, "0.000001"),
        (1.5e-5, "0.000015"),
        (1e16, "10000000000000000"),
        (12345678901234567890.0, "12345678901234567000"),
    ],
)
def test_floats_format_like_go(number: float, go: str) -> None:
    assert gojson.format_float(number) == go


def test_strings_are_escaped_like_go() -> None:
    assert (
        gojson.dumps("<a&b>\u2028é\n\x01") == '"\\u003ca\\u0026b\\u003e\\u2028é\\n\\u0001"'.encode()
    )


def test_lone_surrogates_become_replacement_characters() -> None:
    assert gojson.dumps(gojson.loads(b'"\\ud800x"')) == '"\ufffdx"'.encode()


def test_maps_are_sorted_and_structs_keep_their_order() -> None:
    value = {"b": 1, "a": [True, None], "s": gojson.Struct(z=1, a=2)}
    assert gojson.dumps(value) == b'{"a":[true,null],"b":1,"s":{"z":1,"a":2}}'


def test_numbers_load_as_floats_and_constants_are_refused() -> None:
    assert gojson.loads(b'{"mtu": 1500}') == {"mtu": 1500.0}
    with pytest.raises(ValueError, match="NaN"):
        gojson.loads(b'{"mtu": NaN}')


def test_invalid_utf8_is_replaced() -> None:
    assert gojson.loads(b'"a\xffb"') == "a\ufffdb"


def test_field_lookup_is_case_insensitive_and_the_last_match_wins() -> None:
    assert gojson.field({"SubnetFile": "/a", "subnetfile": "/b"}, "subnetFile") == (True, "/b")
    assert gojson.field({"dataDir": "/a"}, "subnetFile") == (False, None)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _reference(data: bytes) -> object:
    """What the ``json`` package decodes, with Go's numbers (the behaviour to keep)."""
    return json.loads(data.decode("utf-8", "replace"), parse_int=float, parse_float=float)


@given(JSON_VALUES, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_loads_agrees_with_the_json_package(value: object, space: str) -> None:
    data = (space + json.dumps(value) + space).encode()
    assert gojson.loads(data) == _reference(data)


@pytest.mark.parametrize("text", [b"", b" ", b"{", b"[1,]", b'{"a":1} x', b"1 2", b"nul",
                                  b"\xef\xbb\xbf{}", b'{"a":1}}', b"[1e999]", b"NaN"])
def test_loads_refuses_what_the_json_package_refuses(text: bytes) -> None:
    with pytest.raises(ValueError):
        gojson.loads(text)
