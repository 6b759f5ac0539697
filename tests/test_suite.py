"""`msdb suite`: junit.xml, index, summary PDF, and exit codes that follow the SLO."""

from __future__ import annotations

import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest

from harness.suite import load_suite, write_junit
from harness.errors import ConfigError, UsageError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLO = ("smoke: {error_rate_max: %s, server_errors_max: 0, p95_ms_max: %s, healthy_after_s: 10}\n")


def suite(tmp_path, slo_text, port):
    tmp_path.mkdir(parents=True, exist_ok=True)
    suites = tmp_path / "suites.yaml"
    suites.write_text("mini:\n  - {scenario: smoke, duration: 5s, users: 3}\n")
    slo = tmp_path / "slo.yaml"
    slo.write_text(slo_text)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "suite", "mini", "--suites", str(suites),
                        "--slo", str(slo), "--out", str(out), "--state-dir", str(tmp_path / "state"),
                        "--base-port", str(port)], capture_output=True, text=True, timeout=600)
    from harness.pg import PgRuntime
    assert not PgRuntime.for_state_dir(tmp_path / "state").data_root.exists()   # purged
    return r, out


def test_tightened_slo_fails_the_suite_and_loosened_passes(tmp_path):
    from fix_stack import TEST_BASE_PORT
    r, out = suite(tmp_path / "tight", SLO % (0.01, 0.001), TEST_BASE_PORT + 400)
    assert r.returncode == 1, r.stdout + r.stderr
    junit = ET.parse(out / "junit.xml").getroot()
    assert int(junit.get("failures")) >= 1
    failed = [tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None]
    assert "p95-latency" in failed
    assert (out / "index.html").exists() and (out / "summary.pdf").read_bytes()[:5] == b"%PDF-"
    r, out = suite(tmp_path / "loose", SLO % (1.0, 100000), TEST_BASE_PORT + 400)
    assert r.returncode == 0, r.stdout + r.stderr
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.get("failures") == "0" and junit.get("errors") == "0" and int(junit.get("tests")) > 5


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
