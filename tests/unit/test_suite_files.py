"""Suite files are validated by name; junit.xml marks failures and unknowns."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from harness.errors import ConfigError, UsageError
from harness.run.suite import load_suite, write_junit
from scenarios import registry


def test_suite_files_are_validated(tmp_path):
    assert [e["scenario"] for e in load_suite("quick")][:1] == ["smoke"]
    f = tmp_path / "s.yaml"
    f.write_text("x:\n  - {scenario: smoke, durration: 5s}\n")
    with pytest.raises(ConfigError, match=r"x\[1\].durration: unknown key"):
        load_suite("x", str(f))
    f.write_text("x:\n  - {scenario: smok}\n")
    with pytest.raises(ConfigError, match=r"x\[1\].scenario: unknown scenario 'smok'"):
        load_suite("x", str(f))
    with pytest.raises(UsageError, match="unknown suite 'nope'"):
        load_suite("nope", str(f))


def test_junit_marks_failures_and_unknowns(tmp_path):
    results = {"verdict": "fail", "checks": [
        {"name": "a", "verdict": "pass", "measured": 1, "threshold": 1, "details": {}},
        {"name": "b", "verdict": "fail", "measured": 9, "threshold": 1, "details": {"x": 1}},
        {"name": "c", "verdict": "unknown", "measured": None, "threshold": 1, "details": {}}]}
    write_junit(tmp_path / "j.xml", "t", [("01-smoke", tmp_path, results, 1.0), ("02-x", tmp_path, None, 0.5)])
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "2")
    b = next(tc for tc in root.iter("testcase") if tc.get("name") == "b")
    assert "measured 9" in b.find("failure").get("message")


def test_every_shipped_suite_entry_leaves_room_after_its_last_heal():
    """The nightly suite's db-down once ended before its after-heal window
    opened (UNKNOWN on a healthy system): every entry is checked as a run is."""
    from harness.checks.slo import load_slo
    from harness.durations import parse_duration
    from harness.checks.faults import check_schedule
    from harness.run.suite import load_suite
    for suite in ("nightly", "quick"):
        for e in load_suite(suite):
            sc = registry.get(e["scenario"])
            if not sc.faults:
                continue
            d = parse_duration(e["duration"], "duration") if "duration" in e else sc.default_duration_s()
            slo = load_slo(None, sc.name, sc.slo_keys(has_faults=True))
            check_schedule([dict(f) for f in sc.faults], d, slo, f"{suite}: {sc.name}")


def test_a_schedule_without_room_after_its_heal_is_exit_2_naming_the_duration():
    from harness.checks.slo import load_slo
    from harness.errors import ConfigError
    from harness.checks.faults import check_schedule
    sc = registry.get("db-down")
    slo = load_slo(None, sc.name, sc.slo_keys(has_faults=True))
    with pytest.raises(ConfigError, match=r"leaves 0 s of the 35 s run.*--duration 43s or more"):
        check_schedule([dict(f) for f in sc.faults], 35.0, slo, "scenario db-down")
    check_schedule([dict(f) for f in sc.faults], 43.0, slo, "scenario db-down")


# -- the reports written beside the runs ----------------------------------------------

FAKE_REPORT = r'''
import os, sys, time
args = sys.argv[2:]           # argv[1] is "report"
if os.environ.get("FAKE_REPORT_HANG") and not os.path.exists(os.environ["FAKE_REPORT_HANG"]):
    open(os.environ["FAKE_REPORT_HANG"], "w").close()
    time.sleep(60)
index = None
if "--index" in args:
    i = args.index("--index")
    index = args[i + 1]
    del args[i:i + 2]
for d in args:
    with open(os.path.join(d, "report.html"), "w") as f:
        f.write(f"policy={os.sched_getscheduler(0)} pid={os.getpid()}")
if index:
    open(os.path.join(index, "index.html"), "w").close()
'''


def _runs(tmp_path, n):
    out = []
    for i in range(n):
        d = tmp_path / f"{i:02d}-smoke"
        d.mkdir()
        (d / "run.json").write_text("{}")
        out.append(d)
    return out


def _reports(tmp_path):
    from harness.run.suite import BackgroundReports
    script = tmp_path / "fake_msdb.py"
    script.write_text(FAKE_REPORT)
    import sys
    return BackgroundReports([sys.executable, str(script)])


def test_reports_are_written_beside_the_runs_at_idle_priority_and_the_rest_at_the_end(tmp_path):
    import os
    import time
    r = _reports(tmp_path)
    first, second, third, done = _runs(tmp_path, 4)
    (done / "report.html").write_text("written by its own run")
    matrix = second
    for topo in ("single", "grouped"):
        (matrix / topo).mkdir()
        (matrix / topo / "run.json").write_text("{}")
    r.add(first)
    deadline = time.monotonic() + 30
    while not (first / "report.html").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    # written while "the next run" goes on, at SCHED_IDLE
    assert (first / "report.html").read_text().startswith(f"policy={os.SCHED_IDLE} ")
    r.add(done)
    r.add(matrix)
    r.add(third)
    calls = []
    r.finish(beside=lambda: calls.append("stack stopped"))
    assert calls == ["stack stopped"] and not r.failures
    assert (done / "report.html").read_text() == "written by its own run"     # left alone
    for d in (matrix, matrix / "single", matrix / "grouped", third):
        assert (d / "report.html").exists(), d
    assert (matrix / "index.html").exists()       # the per-topology runs' index


def test_a_report_being_written_is_killed_when_the_suite_is_interrupted(tmp_path, monkeypatch):
    import time
    flag = tmp_path / "hanging"
    monkeypatch.setenv("FAKE_REPORT_HANG", str(flag))
    r = _reports(tmp_path)
    (run,) = _runs(tmp_path, 1)
    r.add(run)
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pr = r._current
    assert pr is not None and pr.poll() is None
    r.kill()
    assert pr.poll() is not None            # stopped, not left behind
    assert not (run / "report.html").exists()


def test_a_run_taken_by_the_worker_as_the_suite_closes_is_still_reported(tmp_path):
    """The worker takes a run off the queue just as finish() closes it: the
    run goes back for finish() to write, never lost."""
    import time
    r = _reports(tmp_path)
    (run,) = _runs(tmp_path, 1)
    with r._lock:                       # the worker takes the run and waits here
        r.add(run)
        deadline = time.monotonic() + 10
        while not r._todo.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r._todo.empty()
        r._closed = True                # as finish() does, before the worker gets the lock
    r._thread.join(timeout=10)
    assert not r._thread.is_alive() and not (run / "report.html").exists()
    r.finish()
    assert (run / "report.html").exists() and not r.failures
