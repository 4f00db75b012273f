"""Waiting in tests: on a condition, with a generous deadline, never on the clock alone.

The suite runs on a loaded 2-core machine next to other heavy work, so a
test never sleeps "long enough" for another thread or process: it polls a
condition that shows the other side got there, and fails with what it was
waiting for when the deadline passes.  Deadlines are generous (they bound a
hang, they are not the measurement).
"""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
import time
from collections.abc import Callable

import pytest

from flanneld.lab.lab import Lab
from flanneld.lab.layout import POD_IF


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, *, step: float = 0.05
) -> float:
    """Poll ``predicate`` until it returns something true; the seconds that took.

    Fails the test after ``timeout`` seconds with a message naming ``what``
    (phrase it as the awaited state: "flannel.1 to be recreated on n1").
    """
    started = time.monotonic()
    while not predicate():
        waited = time.monotonic() - started
        if waited > timeout:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(step, max(0.0, timeout - waited)))
    return time.monotonic() - started


def wait_pinging(lab: Lab, pod: str) -> None:
    """Until lab pod ``pod`` has sent a few more packets: a background ping is under way."""
    netns = {ep.name: ep.netns for ep in lab.endpoints()}[pod]

    def sent() -> int:
        out = subprocess.run(
            ["ip", "-n", netns, "-s", "-j", "link", "show", POD_IF],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["packets"])

    first = sent()
    wait_until(lambda: sent() >= first + 3, 30.0, f"pings flowing from {pod}", step=0.02)


def klog_gaps(lines: list[str]) -> list[float]:
    """Seconds between consecutive klog lines (``E1206 23:05:26.123456 ...``), by the
    daemon's own clock: a retry's backoff read this way does not depend on when
    the test looked."""
    stamps = [datetime.datetime.strptime(line[1:21], "%m%d %H:%M:%S.%f") for line in lines]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(stamps)]


def assert_backs_off(gaps: list[float], initial: float = 1.0) -> None:
    """Gaps of a ``Backoff(initial, factor 2, jitter 0.2)`` retry: at least 0.8 x each wait
    (0.75 here, for the clock's and the log's rounding).  A slow machine only
    lengthens them, so this holds under any load."""
    assert all(gap >= 0.75 * initial * 2**i for i, gap in enumerate(gaps)), gaps
