"""Shared fixtures: a per-run name prefix and throw-away network namespaces."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from flanneld.lab import topology

# Hypothesis's per-example deadline (200 ms) and its too-slow health check
# measure the machine, not the code: on a loaded 2-core machine they fail
# correct tests.  Every test still has pytest-timeout's bound.
settings.register_profile(
    "loaded-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("loaded-machine")

# Every kernel object a test creates carries this prefix, so parallel or
# crashed runs never collide and leftovers are easy to find by name.
# Kept in the environment so that a second import of this module (``from
# tests.conftest import ...``) and child processes see the same prefix.
RUN_PREFIX = os.environ.setdefault("PYFLANNEL_TEST_PREFIX", "pft" + uuid.uuid4().hex[:5])


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def run_prefix() -> str:
    return RUN_PREFIX


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """Create namespaces named ``<RUN_PREFIX>-<suffix>``; all deleted afterwards."""
    needs_root()
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"{RUN_PREFIX}-{suffix}"
        made.append(name)  # before creating: a half-made one is removed too
        topology.create_netns(name)
        return name

    yield make
    for name in reversed(made):
        topology.delete_netns(name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
