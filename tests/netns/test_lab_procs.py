"""flanneld/lab/procs.py: detached daemons in a namespace, stopped by PID only."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from flanneld.lab import procs
from flanneld.lab.state import ProcessRecord
from tests.waiting import wait_until

pytestmark = pytest.mark.netns


def _read_when(path: str, words: int) -> list[str]:
    """The words of ``path`` once it holds at least ``words`` of them."""

    def read() -> list[str]:
        with open(path, encoding="utf-8") as fh:
            return fh.read().split()

    wait_until(lambda: len(read()) >= words, 30.0, f"{words} word(s) in {path}", step=0.02)
    return read()


def test_spawned_daemon_runs_in_the_namespace_and_stops_by_pid(
    netns_factory: Callable[[str], str], tmp_path: Path
) -> None:
    name = netns_factory("procs")
    log_path = str(tmp_path / "daemon.log")
    pid = procs.spawn(["sh", "-c", "readlink /proc/self/ns/net; exec sleep 60"], log_path, name)
    ours = ProcessRecord(pid, "sleep 60")
    try:
        netns_inode = os.stat(f"/var/run/netns/{name}").st_ino
        assert _read_when(log_path, 1) == [f"net:[{netns_inode}]"]
        assert procs.is_ours(ours)
        # A recorded PID whose command line lacks the marker is somebody else's.
        assert not procs.signal_process(ProcessRecord(pid, "/not/our/lab/"), signal.SIGTERM)
        assert procs.stop([ProcessRecord(pid, "/not/our/lab/")]) == []
        assert procs.is_ours(ours)
        assert procs.stop([ours], timeout=5) == [ours]
        assert procs.cmdline(pid) is None and not procs.is_ours(ours)
        assert procs.stop([ours]) == []
    finally:
        if procs.is_ours(ours):
            os.kill(pid, signal.SIGKILL)
