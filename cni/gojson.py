"""JSON the way Go's ``encoding/json`` reads and writes it (pure).

Upstream's plugin unmarshals the netconf into ``map[string]interface{}``
values and marshals the delegate config back; to render the same bytes for
the same input this module copies the observable rules:

* numbers are float64: ``1500``, ``1500.0`` and ``1.5e3`` all come out as
  ``1500``; big integers lose precision exactly as in Go;
* map keys are sorted; struct fields (:class:`Struct`) keep their order;
* ``<``, ``>``, ``&``, U+2028 and U+2029 are escaped; other non-ASCII text is
  written as UTF-8; invalid UTF-8 and lone surrogates become U+FFFD;
* ``NaN``/``Infinity`` are not JSON;
* struct fields match object keys case-insensitively, the last match wins.

It drives the C scanner and string encoder of ``_json`` directly: the ``json``
package would also import ``re`` (and ``enum``) for its whitespace pattern,
a few milliseconds of every plugin call.
"""

from __future__ import annotations

import math
from _json import encode_basestring, make_scanner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


class Struct(dict):  # type: ignore[type-arg]
    """A JSON object encoded in insertion order, like a Go struct."""


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid JSON value {name}")


def _float64(text: str) -> float:
    """A JSON number as Go's float64; one outside its range is an error, as in Go."""
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"cannot unmarshal number {text} into a float64")
    return number


class _Rules:
    """What the C scanner reads from a ``json.JSONDecoder``: Go's rules for numbers."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_float64)
    parse_int = staticmethod(_float64)
    parse_constant = staticmethod(_reject_constant)


_scan = make_scanner(_Rules())  # type: ignore[arg-type]  # typeshed wants a scanner; C reads attributes
_WHITESPACE = " \t\n\r"


def loads(data: bytes) -> object:
    """Decode JSON text; every number becomes a float as in Go. Raises ValueError.

    Nesting deeper than the interpreter's recursion limit is a ValueError too
    (Go's decoder stops at 10 000 levels).
    """
    text = data.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as err:
        raise ValueError(f"expecting a JSON value at character {err.value}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def dumps(value: object) -> bytes:
    """Encode compactly with Go's key order, escaping and number format."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode("utf-8")


def field(obj: Mapping[str, object], name: str) -> tuple[bool, object]:
    """Look up a Go struct field: keys match case-insensitively, the last one wins."""
    found: tuple[bool, object] = (False, None)
    wanted = name.lower()
    for key, value in obj.items():
        if key.lower() == wanted:
            found = (True, value)
    return found


def _encode_str(text: str, parts: list[str]) -> None:
    encoded = encode_basestring(text)
    for char, escape in _GO_ESCAPES.items():
        if char in encoded:
            encoded = encoded.replace(char, escape)
    if any("\ud800" <= char <= "\udfff" for char in encoded):
        encoded = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in encoded)
    parts.append(encoded)


def format_float(number: float) -> str:
    """Go's ``strconv.FormatFloat(f, 'f' or 'e', -1, 64)`` as encoding/json picks it."""
    if not math.isfinite(number):
        raise ValueError(f"unsupported value: {number!r}")
    if number == 0:
        return "-0" if str(number).startswith("-") else "0"
    shortest = repr(number)
    magnitude = abs(number)
    if magnitude < 1e-6 or magnitude >= 1e21:
        mantissa, _, exponent = shortest.partition("e")
        mantissa = mantissa.removesuffix(".0")
        sign = exponent[0]
        digits = exponent[1:].lstrip("0").rjust(2, "0")
        if sign == "-" and digits.startswith("0"):
            digits = digits[1:]
        return f"{mantissa}e{sign}{digits}"
    if "e" not in shortest:
        return shortest.removesuffix(".0")
    # Python chose an exponent where Go writes plain decimals: shift the digits.
    mantissa, _, exponent = shortest.partition("e")
    negative = mantissa.startswith("-")
    mantissa = mantissa.lstrip("-")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).rstrip("0") or "0"
    point = len(whole) + int(exponent)
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    return ("-" if negative else "") + text


def _encode(value: object, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        _encode_str(value, parts)
    elif isinstance(value, int):
        parts.append(str(value))
    elif isinstance(value, float):
        parts.append(format_float(value))
    elif isinstance(value, dict):
        keys = list(value) if isinstance(value, Struct) else sorted(value)
        parts.append("{")
        for index, key in enumerate(keys):
            if index:
                parts.append(",")
            _encode_str(str(key), parts)
            parts.append(":")
            _encode(value[key], parts)
        parts.append("}")
    elif isinstance(value, (list, tuple)):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")
