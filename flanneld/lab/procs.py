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
from collections.abc import Mapping, Sequence

from flanneld.lab.state import ProcessRecord
from flanneld.lab.topology import netns_argv
from subnet.errors import FlannelError

log = logging.getLogger(__name__)

EMPTY_CMDLINE_READS = 20
EMPTY_CMDLINE_PAUSE = 0.005


def launcher(python: str, script: str, module: str) -> list[str]:
    """How to run one of our console scripts with interpreter ``python``.

    The script installed next to the interpreter (venv or not) if there is
    one, else ``python -m module``.
    """
    beside = os.path.join(os.path.dirname(python), script)
    if os.access(beside, os.X_OK):
        return [beside]
    return [python, "-m", module]


# Run by sh: start "$@" in the background with its output appended to $1,
# print its PID, exit.  The daemon is then nobody's child but init's, so it
# outlives the process that started it (the CLI) and is never a zombie of ours.
_DETACH = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'


def spawn(
    argv: list[str],
    log_path: str,
    netns: str | None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start ``argv`` detached in namespace ``netns`` (None: ours), output to ``log_path``;
    its PID."""
    inner = argv if netns is None else netns_argv(netns, argv)
    command = ["sh", "-c", _DETACH, "sh", log_path, *inner]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FlannelError(f"cannot start {argv[0]} in {netns or 'our netns'}: {err}") from err
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise FlannelError(
            f"cannot start {argv[0]} in {netns or 'our netns'}: "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return int(done.stdout.strip())


def _read_cmdline(pid: int) -> str | None:
    """``pid``'s command line ('' if it has none right now); None if gone or a zombie."""
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


def cmdline(pid: int) -> str | None:
    """The command line of ``pid``, arguments joined by spaces; None if gone, exiting or a zombie.

    The kernel shows an empty command line for a moment in the middle of an
    exec (the launcher execs nsenter, which execs the daemon) and while a
    process exits; a short, bounded re-read tells the two apart.
    """
    for _ in range(EMPTY_CMDLINE_READS):
        line = _read_cmdline(pid)
        if line != "":
            return line
        time.sleep(EMPTY_CMDLINE_PAUSE)
    return None


def is_ours(record: ProcessRecord) -> bool:
    """Whether ``record.pid`` is alive and still the process we started."""
    line = cmdline(record.pid)
    return line is not None and record.marker in line


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
        if not is_ours(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop_children(
    children: Sequence[subprocess.Popen[bytes]], sig: int = signal.SIGTERM, timeout: float = 5.0
) -> None:
    """Send ``sig`` to each of our child processes still running, SIGKILL the ones
    still there after ``timeout``, and reap them all (their return codes are set)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(sig)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout)


def stop(records: Sequence[ProcessRecord], timeout: float = 5.0) -> list[ProcessRecord]:
    """SIGTERM all, then SIGKILL whatever is left after ``timeout``.

    Processes that are gone or no longer ours are skipped; returns the
    ones that were signalled.
    """
    signalled = [r for r in records if signal_process(r, signal.SIGTERM)]
    deadline = time.monotonic() + timeout
    stubborn = [r for r in signalled if not wait_gone(r, max(0.0, deadline - time.monotonic()))]
    for record in stubborn:
        signal_process(record, signal.SIGKILL)
    survivors = [r.pid for r in stubborn if not wait_gone(r, timeout)]
    if survivors:
        raise FlannelError(f"pids {survivors} survived SIGKILL")
    return signalled
