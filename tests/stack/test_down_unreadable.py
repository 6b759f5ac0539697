"""`msdb down` when stack.json cannot be read as a whole (another msdb
version's, or damaged): the processes it records are still stopped by PID
before anything is deleted, and a stack.json with no readable processes
deletes nothing.  (Found when a suite's stack outlived its suite: the suite,
started before a schema change, could not read the stack.json its runs had
rewritten, and purged the data under its running processes.)"""

from __future__ import annotations

import json
import sys

from harness.stack import procs
from harness.stack.embedded import StackOptions
from harness.stack.embedded_backend import EmbeddedBackend


def _sleeper(state):
    _, rec = procs.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"],
                         log_path=state / "logs" / "sleeper.log")
    return rec


def test_down_stops_the_recorded_processes_of_an_unreadable_stack_json(tmp_path):
    state = tmp_path / "state"
    rec = _sleeper(state)
    try:
        (state / "stack.json").write_text(json.dumps(
            {"schema": 2, "a_key_of_a_newer_msdb": True,
             "parts": [{"name": "sleeper", "kind": "service", "proc": rec.to_json()}]}))
        left = EmbeddedBackend(StackOptions(state_dir=state)).down(purge=True)
        assert left == []
        assert procs.start_ticks(rec.pid) != rec.start_ticks, "the recorded process outlived down"
        assert not state.exists()
    finally:
        procs.stop(rec)


def test_down_deletes_nothing_when_no_process_can_be_read(tmp_path):
    state = tmp_path / "state"
    rec = _sleeper(state)
    try:
        (state / "stack.json").write_text("{ damaged")
        left = EmbeddedBackend(StackOptions(state_dir=state)).down(purge=True)
        assert left and "unreadable" in left[0]
        assert (state / "stack.json").exists()
        assert procs.start_ticks(rec.pid) == rec.start_ticks   # not ours to guess at
    finally:
        procs.stop(rec)
