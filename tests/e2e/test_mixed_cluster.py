"""``flannelctl lab up --flanneld NODE=PATH``: some nodes run another flanneld binary
(for users testing a mixed upstream/pyflannel cluster before a migration).

No upstream build can be installed here, so the other binary is a wrapper script
that records each start and its arguments, then execs our own flanneld.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

import pytest

from flanneld.lab import procs
from flanneld.lab.lab import Lab, down
from flanneld.lab.layout import is_lab_netns
from flanneld.lab.topology import list_netns
from tests.conftest import RUN_PREFIX, needs_root
from tests.e2e.test_ctl import flannelctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PREFIX = RUN_PREFIX + "mx"


def _wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A 'foreign' flanneld: appends its argv to a marker file, then execs ours."""
    marker = tmp_path / "ran"
    script = tmp_path / "other-flanneld"
    ours = shlex.join(procs.launcher(sys.executable, "flanneld", "flanneld.cli"))
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {shlex.quote(str(marker))}\n'
        f'exec {ours} "$@"\n'
    )
    script.chmod(0o755)
    return script, marker


def test_named_node_runs_the_other_binary_and_the_matrix_is_ok(tmp_path: Path) -> None:
    needs_root()
    script, marker = _wrapper(tmp_path)
    try:
        done = flannelctl("lab", "up", "--nodes", "2", "--prefix", PREFIX, "--json",
                          "--flanneld", f"n2={script}")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert len(doc["matrix"]) == 2 and all(c["ok"] for c in doc["matrix"]), doc["matrix"]

        # Only n2 went through the wrapper, once, with upstream's flag spelling.
        (started,) = marker.read_text().splitlines()
        assert "/n2/subnet.env" in started and "/n1/" not in started
        assert "-etcd-endpoints=http://198.18.0.1:12379" in started.split()
        assert "-iface=ul0" in started.split() and "-ip-masq" in started.split()

        # A restart of n2 (a later session attaching to the lab) uses the wrapper again.
        lab = Lab.attach(PREFIX)
        lab.kill_flanneld("n2", signal.SIGTERM)
        lab.start_flanneld("n2")
        assert len(marker.read_text().splitlines()) == 2
        cells = lab.matrix(count=3, timeout=10.0)
        assert cells and all(c.ok for c in cells), cells
    finally:
        down(PREFIX)
    assert not [n for n in list_netns() if is_lab_netns(PREFIX, n)]


def test_a_binary_that_cannot_run_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    needs_root()
    missing = tmp_path / "no-such-flanneld"
    try:
        done = flannelctl("lab", "up", "--nodes", "2", "--prefix", PREFIX,
                          "--flanneld", f"n2={missing}")
        assert done.returncode != 0
        assert "not an executable file" in done.stderr
        assert not [n for n in list_netns() if is_lab_netns(PREFIX, n)]
        assert not os.path.exists(missing)
    finally:
        down(PREFIX)
