"""Start lab daemons inside a namespace, and end them by PID only.

A PID is signalled only while ``/proc/<pid>/cmdline`` still contains the
marker recorded when we started it (the lab's state dir), so a recycled
PID belonging to someone else is never touched.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping

from backends.topology import netns_argv
from flanneld.errors import FlannelError
from flanneld.lab.state import ProcessRecord

log = logging.getLogger(__name__)


def launcher(python: str, script: str, module: str) -> list[str]:
    """How to run one of our console scripts with interpreter ``python``.

    The script installed next to the interpreter (venv or not) if there is
    one, else ``python -m module``.
    """
    beside = os.path.join(os.path.dirname(python), script)
    if os.access(beside, os.X_OK):
        return [beside]
    return [python, "-m", module]


def spawn(
    argv: list[str],
    log_path: str,
    netns: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in namespace ``netns``, in its own session, output to ``log_path``."""
    with open(log_path, "ab") as out:
        try:
            return subprocess.Popen(
                netns_argv(netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as err:
            raise FlannelError(f"cannot start {argv[0]} in {netns}: {err}") from err


def cmdline(pid: int) -> str | None:
    """The NUL-joined command line of ``pid`` as text, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        # The state letter follows the parenthesised command name.
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def is_ours(record: ProcessRecord) -> bool:
    """Whether ``record.pid`` is alive and still the process we started."""
    line = cmdline(record.pid)
    return line is not None and record.marker in line


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (no zombie left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def signal_process(record: ProcessRecord, sig: int) -> bool:
    """Send ``sig`` to the recorded process if it is still ours; False if it was not."""
    if not is_ours(record):
        return False
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        return False
    log.info("sent signal %d to pid %d", sig, record.pid)
    return True


def wait_gone(record: ProcessRecord, timeout: float) -> bool:
    """Wait until the recorded process has exited; True if it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(record.pid)
        if not is_ours(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop(record: ProcessRecord, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; no-op if the process is gone or not ours."""
    if not signal_process(record, signal.SIGTERM):
        _reap(record.pid)
        return
    if wait_gone(record, timeout):
        return
    signal_process(record, signal.SIGKILL)
    if not wait_gone(record, timeout):
        raise FlannelError(f"pid {record.pid} survived SIGKILL")

