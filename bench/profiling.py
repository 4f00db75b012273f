"""Where the daemon's time goes: py-spy attached to its PID, and a summary of the stacks."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping
from typing import Any

import checkout  # noqa: F401 - this checkout's pyflannel first
from report import print_table

from flanneld.lab.procs import stop_children


class PySpy:
    """``py-spy record`` attached to a PID (raw collapsed stacks); stopped with SIGINT."""

    def __init__(self, pid: int, out: str, rate: int = 100) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", out, "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_children([proc], signal.SIGINT, timeout)


def top_functions(collapsed_path: str, limit: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        with open(collapsed_path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return {"samples": 0, "self": [], "inclusive": []}
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [_short_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int], count: int) -> list[dict[str, Any]]:
        best = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:count]
        return [{"function": f, "samples": n, "share": round(n / total, 3)} for f, n in best]

    return {"samples": total, "self": ranked(own, limit), "inclusive": ranked(inclusive, 4 * limit)}


OUR_CODE = ("(backends/", "(flanneld/", "(subnet/")


def print_profile(title: str, prof: Mapping[str, Any], rows: int = 8) -> None:
    """The top self-time functions, then pyflannel's own functions by inclusive time."""
    if not prof.get("samples"):
        return
    top = [(f["function"], f"{100 * f['share']:.1f}%") for f in prof["self"][:rows]]
    print_table(f"{title} ({prof['samples']} samples, all threads): top self time",
                ["function", "share"], top)
    ours = [f for f in prof["inclusive"] if any(d in f["function"] for d in OUR_CODE)]
    print_table(f"{title}: pyflannel functions, inclusive time", ["function", "share"],
                [(f["function"], f"{100 * f['share']:.1f}%") for f in ours[:rows]])


def _short_frame(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``; thread markers kept as they are."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if not path:
        return name
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"
