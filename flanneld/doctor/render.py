"""The doctor's report as a table (one line per check, the fix under each problem) or JSON."""

from __future__ import annotations

from collections.abc import Sequence

from flanneld.doctor.model import CheckResult, Status

MARKS = {Status.OK: "✓", Status.FAIL: "✗", Status.WARN: "!", Status.SKIP: "-"}


def failed(results: Sequence[CheckResult]) -> bool:
    return any(r.status is Status.FAIL for r in results)


def render_table(results: Sequence[CheckResult], elapsed: float) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{MARKS[r.status]} {r.name.ljust(width)}  {r.found}".rstrip())
        if r.fix and r.status in (Status.FAIL, Status.WARN):
            lines.append(f"  {' ' * width}  fix: {r.fix}")
    counts = {s: sum(1 for r in results if r.status is s) for s in Status}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    verdict = "problems found" if failed(results) else "no problem found"
    lines.append(f"\n{verdict}: {summary} ({elapsed:.1f} s)")
    return "\n".join(lines)


def render_json(results: Sequence[CheckResult], elapsed: float) -> dict[str, object]:
    return {
        "ok": not failed(results),
        "elapsed_s": round(elapsed, 3),
        "checks": [r.to_json() for r in results],
    }
