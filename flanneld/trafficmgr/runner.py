"""The one place the traffic manager runs programs (iptables, nft)."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from subnet.errors import DataplaneError


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a program run ended: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True, slots=True)
class CommandRunner:
    """Runs a program with optional stdin; ``prefix`` lets tests run it elsewhere.

    A missing program raises DataplaneError with errno ENOENT; a non-zero
    exit status is returned, not raised, since "rule absent" is one.
    """

    prefix: tuple[str, ...] = ()
    timeout: float = 30.0

    def run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        cmd = [*self.prefix, *argv]
        try:
            done = subprocess.run(
                cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError as err:
            raise DataplaneError(f"{argv[0]} not found", errno.ENOENT) from err
        except subprocess.TimeoutExpired as err:
            raise DataplaneError(
                f"{argv[0]} timed out after {self.timeout}s", errno.ETIMEDOUT
            ) from err
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def check(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        """Like :meth:`run`, but a non-zero exit raises DataplaneError."""
        result = self.run(argv, stdin)
        if not result.ok:
            raise DataplaneError(
                f"{argv[0]} failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result
