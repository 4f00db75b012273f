"""Label and field selectors of the lab's API server double, as the API server parses them."""

from __future__ import annotations

from typing import Any

import pytest

from flanneld.lab.apiserver.selectors import SelectorError, field_matcher, label_matcher


def obj(**labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "o", "labels": labels}, "spec": {"nodeName": "n1"}}


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ("pod=a", {"pod": "a"}, True),
    ("pod==a", {"pod": "b"}, False),
    ("pod!=a", {}, True),  # != matches objects without the key
    ("pod in (a, b)", {"pod": "b"}, True),
    ("pod in (a,b),ns=x", {"pod": "b", "ns": "y"}, False),
    ("pod notin (a,b)", {}, True),  # so does notin
    ("pod notin (a,b)", {"pod": "a"}, False),
    ("pod", {"pod": ""}, True),
    ("!pod", {"pod": "a"}, False),
    ("!pod", {}, True),
    ("", {"x": "y"}, True),
    ("kubernetes.io/metadata.name=x", {"kubernetes.io/metadata.name": "x"}, True),
])
def test_label_selector(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert label_matcher(selector)(obj(**labels)) is matches


def test_label_selector_tolerates_objects_without_labels() -> None:
    assert label_matcher("a!=b")({"metadata": {"name": "o"}})


@pytest.mark.parametrize("bad", ["a b", "=x"])
def test_unparsable_label_selector(bad: str) -> None:
    with pytest.raises(SelectorError):
        label_matcher(bad)


def test_field_selector() -> None:
    assert field_matcher("spec.nodeName=n1,metadata.name==o")(obj())
    assert not field_matcher("spec.nodeName!=n1")(obj())
    assert field_matcher("status.phase!=Running")(obj())  # absent reads as ""
    with pytest.raises(SelectorError):
        field_matcher("spec.nodeName")
