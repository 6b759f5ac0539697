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
