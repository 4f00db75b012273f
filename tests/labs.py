"""A lab a test module shares: brought up, torn down, and nothing of it left."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flanneld.lab import procs
from flanneld.lab.lab import Lab, down, up
from flanneld.lab.layout import is_lab_netns
from flanneld.lab.state import ProcessRecord
from flanneld.lab.topology import list_netns
from tests.conftest import needs_root


def assert_nothing_left(prefix: str, records: list[ProcessRecord]) -> None:
    """No namespace of the lab and none of its processes outlive ``down``."""
    assert not [n for n in list_netns() if is_lab_netns(prefix, n)]
    assert not any(procs.is_ours(r) for r in records)


@contextlib.contextmanager
def module_lab(prefix: str, **options: Any) -> Iterator[Lab]:
    """``up(prefix=prefix, **options)``; on leaving, ``down`` and check that it left nothing."""
    needs_root()
    made: Lab | None = None
    try:
        made = up(prefix=prefix, **options)
        yield made
    finally:
        records = list(made.processes.values()) if made is not None else []
        down(prefix)
    assert_nothing_left(prefix, records)
