"""The health server under load inside a namespace: 1000 concurrent probes beside
300 idle or half-sent connections and 50 resets (issue 9, item 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SERVER = """
import logging, sys
from flanneld import health
from flanneld.metrics import Metrics, metrics_handler
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
state = health.HealthState()
state.mark_ready()
server = health.start(state, "127.0.0.1", 0, {"/metrics": metrics_handler(Metrics())})
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""
PROBES, IDLE, RESETS = 1000, 300, 50


def test_thousand_probes_beside_idle_and_reset_clients(
    netns_factory: Callable[[str], str],
) -> None:
    ns = netns_factory("hl")
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        # ``ip netns exec`` execs the interpreter: the PID is the server's.
        client = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.healthload",
             "--port", str(port), "--server-pid", str(server.pid), "--idle", str(IDLE),
             "--resets", str(RESETS), "--probes", str(PROBES), "--seconds", "60"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
        )
    finally:
        _, stderr = server.communicate(input="", timeout=30)
    result = json.loads(client.stdout)
    print("FIGURE health load:", json.dumps(result))
    assert result["answers"] == {"HTTP/1.1 200 OK": PROBES, "none": 0}, result
    assert result["threads_with_idle"] <= 3, result
    assert result["threads_after"] <= 3, result
    assert "Traceback" not in stderr
    reset_lines = [line for line in stderr.splitlines() if "reset" in line.lower()]
    assert len(reset_lines) <= RESETS, reset_lines[:5]
    assert all(line.startswith("DEBUG:") for line in reset_lines), reset_lines[:5]
