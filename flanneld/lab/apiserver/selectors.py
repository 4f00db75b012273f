"""Label and field selectors as the API server parses them from a query string.

Label selector grammar (``labelSelector``): comma-separated requirements,
each ``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``,
``key notin (a,b)``, ``key`` (exists) or ``!key`` (does not exist).
``!=`` and ``notin`` match objects without the key, as in Kubernetes.
Field selectors (``fieldSelector``) take ``path=value``, ``path==value``
and ``path!=value`` over dotted paths such as ``metadata.name`` or
``spec.nodeName``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Any], bool]

_SET_OP = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")


class SelectorError(ValueError):
    """A selector the server cannot parse (answered with 400 BadRequest)."""


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    found = _SET_OP.match(term)
    if found:
        key, op, values = found.group(1), found.group(2), found.group(3)
        wanted = {v.strip() for v in values.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in wanted
        return lambda labels: labels.get(key) not in wanted
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (part.strip() for part in term.split(op, 1))
            if not key:
                raise SelectorError(f"no key in {term!r}")
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if " " in term:
        raise SelectorError(f"cannot parse label requirement {term!r}")
    return lambda labels: term in labels


def label_matcher(text: str) -> Matcher:
    """A predicate over whole objects for ``labelSelector=text``."""
    checks = [_label_term(term) for term in _split_terms(text)]

    def matches(obj: Any) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def _field(obj: Any, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def field_matcher(text: str) -> Matcher:
    """A predicate over whole objects for ``fieldSelector=text``."""
    checks: list[Matcher] = []
    for term in _split_terms(text):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = (part.strip() for part in term.split(op, 1))
                break
        else:
            raise SelectorError(f"cannot parse field requirement {term!r}")
        checks.append(_field_check(path, value, equal=op != "!="))
    return lambda obj: all(check(obj) for check in checks)


def _field_check(path: str, value: str, *, equal: bool) -> Matcher:
    return lambda obj: (_field(obj, path) == value) == equal
