"""Warn about a skipped peer lease once per reason, not on every reconcile pass."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from backends.model import Skipped


class SkipLog:
    """Remembers what was last said about each skipped peer."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._said: dict[str, str] = {}

    def report(self, skipped: Sequence[Skipped]) -> None:
        current = {s.key: s.reason for s in skipped}
        for key, reason in current.items():
            if self._said.get(key) != reason:
                self._log.warning("skipping peer lease %s: %s", key, reason)
        self._said = current
