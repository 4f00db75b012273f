"""``flannelctl lab`` as an operator runs it: a subprocess, JSON out, clean down."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from flanneld.lab import procs
from flanneld.lab import state as statefile
from flanneld.lab.lab import down
from flanneld.lab.layout import is_lab_netns, state_dir
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PREFIX = RUN_PREFIX + "c"


def flannelctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flanneld.ctl", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_lab_up_json_then_down_leaves_nothing_behind() -> None:
    needs_root()
    try:
        done = flannelctl("lab", "up", "--nodes", "2", "--prefix", PREFIX, "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert set(doc) == {"nodes", "matrix"}
        assert [n["name"] for n in doc["nodes"]] == ["n1", "n2"]
        assert [n["public_ip"] for n in doc["nodes"]] == ["198.18.0.11", "198.18.0.12"]
        subnets = {ipaddress.IPv4Network(n["subnet"]) for n in doc["nodes"]}
        assert len(subnets) == 2
        assert {(c["src"], c["dst"]) for c in doc["matrix"]} == {("n1p1", "n2p1"), ("n2p1", "n1p1")}
        assert all(c["ok"] is True and c["rtt_ms"] > 0 for c in doc["matrix"])

        # The lab outlived the CLI process: its daemons still run.
        recorded = statefile.load(state_dir(PREFIX))
        assert recorded is not None
        records = list(recorded.processes.values())
        assert len(records) == 3 and all(procs.is_ours(r) for r in records)

        status = flannelctl("lab", "status", "--prefix", PREFIX, "--json")
        assert status.returncode == 0, status.stderr
        nodes = json.loads(status.stdout)["nodes"]
        assert {n["lease"]["subnet"] for n in nodes} == {str(s) for s in subnets}

        gone = flannelctl("lab", "down", "--prefix", PREFIX)
        assert gone.returncode == 0, gone.stderr
        assert not [n for n in list_netns() if is_lab_netns(PREFIX, n)]
        assert not any(procs.is_ours(r) for r in records)
        assert not os.path.exists(state_dir(PREFIX))
    finally:
        down(PREFIX)


def test_lab_up_refuses_an_existing_prefix_without_touching_it() -> None:
    needs_root()
    try:
        first = flannelctl("lab", "up", "--nodes", "1", "--pods-per-node", "0", "--prefix", PREFIX)
        assert first.returncode == 0, first.stderr
        assert "lab down --prefix" in first.stdout
        second = flannelctl("lab", "up", "--nodes", "1", "--prefix", PREFIX)
        assert second.returncode == 1
        assert "exists" in second.stderr
        # The refused call did not tear the first lab down.
        assert {f"{PREFIX}-ul", f"{PREFIX}-n1"} <= set(list_netns())
    finally:
        down(PREFIX)
