"""`msdb suite`: junit.xml, index, summary PDF, and exit codes that follow the SLO."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest

from fix_cli import msdb
from fix_stack import TEST_BASE_PORT
from harness.stack.pg import PgRuntime

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLO = ("smoke: {error_rate_max: %s, server_errors_max: 0, p95_ms_max: %s, healthy_after_s: 10}\n")


def suite(tmp_path, slo_text, port):
    tmp_path.mkdir(parents=True, exist_ok=True)
    suites = tmp_path / "suites.yaml"
    # 5 users for 8 s: enough requests on the busiest endpoints for a p95 (min_samples_p95)
    suites.write_text("mini:\n  - {scenario: smoke, duration: 8s, users: 5}\n")
    slo = tmp_path / "slo.yaml"
    slo.write_text(slo_text)
    out = tmp_path / "out"
    r = msdb("suite", "mini", "--suites", suites, "--slo", slo, "--out", out,
             "--state-dir", tmp_path / "state", "--base-port", port, timeout=600)
    assert not PgRuntime.for_state_dir(tmp_path / "state").data_root.exists()   # purged
    return r, out


def test_tightened_slo_fails_the_suite_and_loosened_passes(tmp_path):
    r, out = suite(tmp_path / "tight", SLO % (0.01, 0.001), TEST_BASE_PORT + 400)
    assert r.returncode == 1, r.stdout + r.stderr
    junit = ET.parse(out / "junit.xml").getroot()
    assert int(junit.get("failures")) >= 1
    failed = [tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None]
    assert "p95-latency" in failed
    assert (out / "index.html").exists() and (out / "summary.pdf").read_bytes()[:5] == b"%PDF-"
    # the run's own report, written by the suite after the run (the run had --no-report)
    assert "reports not written (--no-report)" in (out / "01-smoke.log").read_text()
    assert (out / "01-smoke" / "report.html").exists()
    assert (out / "01-smoke" / "report.pdf").read_bytes()[:5] == b"%PDF-"
    r, out = suite(tmp_path / "loose", SLO % (1.0, 100000), TEST_BASE_PORT + 400)
    assert r.returncode == 0, r.stdout + r.stderr
    junit = ET.parse(out / "junit.xml").getroot()
    assert junit.get("failures") == "0" and junit.get("errors") == "0" and int(junit.get("tests")) > 5
