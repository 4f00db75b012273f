"""How long each phase of flanneld's start took, from the process's own start.

The daemon marks the end of each phase; once the peers are programmed it logs
one line (``start-up 0.62s to peers programmed: imports 0.31s, store 0.05s,
...``) and exports each phase as ``flannel_start_phase_seconds{phase=...}``,
so a slow start names its slow part.  ``imports`` runs from the process's
start (the kernel's record of it, 10 ms resolution) to the daemon's first
step: interpreter start-up and module imports.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# The longest the collector stays paused when the start does not finish (a store that
# is down, a first pass that keeps failing): garbage cycles pile up no longer than this.
PAUSE_LIMIT = 10.0


def process_age(stat_path: str = "/proc/self/stat") -> float:
    """Seconds since this process started (0.0 where /proc cannot tell)."""
    try:
        with open(stat_path, encoding="ascii", errors="replace") as stat:
            text = stat.read()
        # field 22 (starttime, clock ticks after boot) is the 20th after the "(comm)" field
        ticks = int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return max(0.0, age)


class StartPhases:
    """Durations of consecutive start-up phases, each ended by :meth:`mark`."""

    def __init__(self, age: float, clock: Callable[[], float] = time.monotonic) -> None:
        """``age``: seconds the process had already run when this was made."""
        self._clock = clock
        self._started = clock() - age
        self._last = self._started
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """``phase`` ended now (it began where the previous one ended)."""
        now = self._clock()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return self._last - self._started

    def summary(self) -> str:
        parts = ", ".join(f"{phase} {secs:.2f}s" for phase, secs in self.seconds.items())
        return f"{self.total():.2f}s: {parts}"


def release_start_memory() -> None:
    """Hand back to the kernel what the start's transient data left free in the heap.

    The first pass decodes every lease and builds every request at once; once
    those are garbage, glibc keeps the freed pages.  ``malloc_trim(0)`` returns
    them (measured at 5000 peers: about 2.3 MiB of 72 MiB resident).  Where
    the C library has no ``malloc_trim`` (musl), only the collection runs.
    """
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this interpreter runs on
    except (OSError, AttributeError):
        log.debug("the C library has no malloc_trim")
        return
    trim(0)


class CollectorPause:
    """Python's automatic cyclic garbage collection off while flanneld starts.

    A start builds tens of thousands of objects that stay (about 50 000 at 1000
    peers, 100 000 at 5000: modules, leases, kernel objects) and makes hardly any
    garbage cycles, yet every 700 allocations the collector walks the young ones
    and now and then the whole heap: measured on the loaded 2-core lab machine,
    97 collections and 18 ms of a 1000-peer start, 244 collections and 53 ms of
    a 5000-peer one (one of them over the whole heap: 17 ms).  Made at the entry
    point; :meth:`finish` once the peers are programmed, or at the latest after
    ``limit`` seconds (a timer thread calls :meth:`resume`).  If automatic
    collection was off already (an embedding program), it stays as it was.
    """

    def __init__(self, limit: float = PAUSE_LIMIT) -> None:
        self._ours = gc.isenabled()
        gc.disable()
        self._timer = threading.Timer(limit, self.resume)
        self._timer.name = "gc-pause-limit"
        self._timer.daemon = True
        if self._ours:
            self._timer.start()

    def finish(self) -> None:
        """The start is done: what it built moves out of later collections, which resume.

        ``gc.freeze`` puts every object alive now (call it after a collection)
        in the permanent generation: later collections, also the full ones that
        a single lease event can land in, walk only what was made since, not the
        start's leases and modules again.  The price: a frozen object that later
        becomes part of a garbage cycle is never reclaimed, at most what the start built.
        """
        if self._ours:
            gc.freeze()
        self.resume()

    def resume(self) -> None:
        """Automatic collection on again, with the interpreter's usual thresholds."""
        self._timer.cancel()
        if self._ours:
            self._ours = False
            gc.enable()
