"""Start-up phase timing: consecutive phases from the process's start, and its age."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flanneld.startphases import CollectorPause, StartPhases, process_age


@pytest.fixture
def collector() -> Iterator[None]:
    """Automatic collection on, nothing frozen, before and after the test."""
    gc.unfreeze()
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_phases_are_consecutive_from_the_process_start() -> None:
    now = [100.0]
    phases = StartPhases(age=0.5, clock=lambda: now[0])
    phases.mark("imports")
    now[0] = 100.25
    phases.mark("store")
    now[0] = 101.0
    phases.mark("first pass")
    assert phases.seconds == {"imports": 0.5, "store": 0.25, "first pass": 0.75}
    assert phases.total() == 1.5
    assert phases.summary() == "1.50s: imports 0.50s, store 0.25s, first pass 0.75s"


def test_a_phase_marked_twice_adds_up() -> None:
    now = [0.0]
    phases = StartPhases(age=0.0, clock=lambda: now[0])
    now[0] = 1.0
    phases.mark("store")
    now[0] = 3.0
    phases.mark("store")
    assert phases.seconds == {"store": 3.0}


def test_process_age_of_this_process_is_plausible() -> None:
    age = process_age()
    assert 0.0 < age < 24 * 3600


def test_process_age_reads_the_start_time_field(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # pid (comm with ") " inside) state ... field 22 = starttime: 0 ticks after boot
    fields = ["S"] + ["0"] * 18 + ["0"] + ["0"] * 10
    stat.write_text("42 (a) b) " + " ".join(fields) + "\n")
    assert process_age(str(stat)) > 0.0  # as old as the machine's uptime
    fields[19] = str(10**12 * os.sysconf("SC_CLK_TCK"))  # started in the far future
    stat.write_text("42 (a) b) " + " ".join(fields) + "\n")
    assert process_age(str(stat)) == 0.0


def test_process_age_without_proc_is_zero(tmp_path: Path) -> None:
    assert process_age(str(tmp_path / "missing")) == 0.0
    (tmp_path / "garbage").write_text("no parens here")
    assert process_age(str(tmp_path / "garbage")) == 0.0


def test_the_collector_is_paused_until_the_start_is_done(collector: None) -> None:
    pause = CollectorPause()
    assert not gc.isenabled()
    kept = [[1, 2], {"lease": [3]}]  # containers of containers: the collector tracks them
    gc.collect()
    pause.finish()
    assert gc.isenabled()
    # what the start built is frozen: still tracked, in none of the collected generations
    collected = {id(obj) for generation in range(3) for obj in gc.get_objects(generation)}
    assert gc.get_freeze_count() > 0
    assert all(gc.is_tracked(obj) and id(obj) not in collected for obj in kept)
    pause.resume()  # the entry point's finally: nothing more happens
    assert gc.isenabled()


def test_the_pause_ends_by_itself_when_the_start_hangs(collector: None) -> None:
    pause = CollectorPause(limit=0.05)
    pause._timer.join(30.0)  # the limit's timer has called resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # only a finished start is frozen


def test_resume_without_finish_freezes_nothing(collector: None) -> None:
    pause = CollectorPause()
    pause.resume()  # the start failed
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_collector_off_before_stays_off(collector: None) -> None:
    gc.disable()
    pause = CollectorPause(limit=0.01)
    pause.finish()
    pause.resume()
    assert not gc.isenabled() and gc.get_freeze_count() == 0
