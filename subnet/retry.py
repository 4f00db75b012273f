"""Explicit backoff: capped exponential delays with jitter, and a waiting helper."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each with ±``jitter``."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2
    _next: float = field(default=0.0, init=False)
    _random: random.Random = field(default_factory=random.Random, init=False, repr=False)

    def next_delay(self) -> float:
        base = self._next or self.initial
        self._next = min(base * self.factor, self.maximum)
        spread = base * self.jitter
        return max(0.0, base + self._random.uniform(-spread, spread))

    def reset(self) -> None:
        self._next = 0.0


def wait(stop: threading.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` was set meanwhile."""
    return stop.wait(max(0.0, seconds))
