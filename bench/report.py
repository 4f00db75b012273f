"""What a benchmark writes: machine facts, percentiles, tables and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg_at_start": _loadavg(),
        "argv": [sys.executable, *sys.argv],
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _loadavg() -> str:
    """/proc/loadavg: other work on this shared machine skews the figures."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def finish_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` with the load average at the end of the run added."""
    return {**facts, "loadavg_at_end": _loadavg()}


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p99, max and mean of ``values`` (milliseconds in, milliseconds out)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(q: float) -> float:
        # nearest rank: the smallest value with at least q of the samples at or below it
        rank = max(1, int(-(-q * len(ordered) // 1)))
        return ordered[min(rank, len(ordered)) - 1]

    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(pct(0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def write_json(path: str, doc: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False)
        fh.write("\n")
    print(f"\nwrote {path}")


def default_out(name: str) -> str:
    return os.path.join(RESULTS, f"{name}.json")


def emit_table(text: str, facts: Mapping[str, Any], out: str | None, what: str = "") -> None:
    """Print a Markdown table with the load it was measured under; also to ``out`` if given."""
    text += (
        f"\n{what}load average at start {facts['loadavg_at_start']}, "
        f"at end {facts['loadavg_at_end']} ({facts['nproc']} CPUs, shared)\n"
    )
    sys.stdout.write(text)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
