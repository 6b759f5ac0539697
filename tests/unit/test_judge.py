"""`judge` and `msdb check` on checked-in run directories: the verdict is a pure
function of the run directory and the SLO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fix_cli import msdb
from harness.checks.judge import judge
from harness.errors import UsageError

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(params=["run-db-latency", "run-capacity"])
def run_dir(request, tmp_path) -> Path:
    d = tmp_path / request.param
    shutil.copytree(DATA / request.param, d)
    return d


def _brief(doc):
    return [(c["name"], c["verdict"], c["measured"]) for c in doc["checks"]]


def test_rejudging_gives_the_checks_the_run_printed(run_dir):
    recorded = json.loads((run_dir / "results.json").read_text())
    again = judge(run_dir, write=False)
    assert _brief(again) == _brief(recorded) and again["verdict"] == recorded["verdict"]
    assert again["metrics"] == recorded["metrics"]


def test_msdb_check_exits_with_the_verdict_and_leaves_results_alone(run_dir):
    recorded = (run_dir / "results.json").read_text()
    r = msdb("check", run_dir, timeout=120)
    verdict = json.loads(recorded)["verdict"]
    assert r.returncode == {"pass": 0, "fail": 1}[verdict], r.stdout + r.stderr
    assert f"VERDICT: {verdict.upper()}" in r.stdout and "unchanged" in r.stdout
    assert (run_dir / "results.json").read_text() == recorded


def test_a_tightened_slo_fails_and_a_loosened_one_passes(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(DATA / "run-db-latency", run_dir)
    tight = tmp_path / "tight.yaml"
    tight.write_text("db-latency: {healthy_after_s: 30, recovery_s: 15, heal_grace_s: 2, "
                     "errors_after_heal_max: 0, fault_error_rate_max: 0.01, internal_errors_max: 0, "
                     "latency_observed_min_ratio: 1.5, latency_observed_max_ratio: 2.0}\n")
    doc = judge(run_dir, slo_path=str(tight), write=False)
    assert doc["verdict"] == "fail"
    assert {c["name"] for c in doc["checks"] if c["verdict"] == "fail"} == {"injected-latency-observed"}
    r = msdb("check", run_dir, "--slo", tight, timeout=120)
    assert r.returncode == 1 and "injected-latency-observed" in r.stdout


def test_capacity_knee_passes_with_a_lower_throughput_floor(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(DATA / "run-capacity", run_dir)
    slo = tmp_path / "slo.yaml"
    slo.write_text("capacity: {p99_ms_max: 300, error_rate_max: 0.01, knee_min_rps: 20, healthy_after_s: 30}\n")
    doc = judge(run_dir, slo_path=str(slo), write=True)
    assert doc["verdict"] == "pass"
    assert json.loads((run_dir / "results.json").read_text())["verdict"] == "pass"   # --write


def test_the_report_and_the_verdict_show_one_figure(run_dir):
    """The knee, the steps and the endpoint table are the judge's figures."""
    from reports.render import report_context
    ctx = report_context(run_dir)
    doc = json.loads((run_dir / "results.json").read_text())
    assert ctx["steps"] == doc["metrics"].get("steps", [])
    assert {e["endpoint"]: e["p95_ms"] for e in ctx["endpoints"]} == \
        {k: v["p95_ms"] for k, v in doc["metrics"]["endpoints"].items()}


@pytest.mark.parametrize("change,needle", [
    (lambda d: (d / "run.json").unlink(), "no run.json"),
    (lambda d: (d / "run.json").write_text(json.dumps({"scenario": "nope"})), "unknown scenario 'nope'"),
])
def test_not_a_run_directory_is_a_usage_error(run_dir, change, needle):
    change(run_dir)
    with pytest.raises(UsageError, match=needle):
        judge(run_dir, write=False)
    r = msdb("check", run_dir, timeout=120)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_a_crashing_check_is_unknown_never_a_pass(run_dir):
    (run_dir / "requests.csv").write_text("time,name\nnot-a-number,x\n")
    doc = judge(run_dir, write=False)
    assert doc["verdict"] in ("unknown", "fail")
    crashed = [c for c in doc["checks"] if c["verdict"] == "unknown" and "error" in c["details"]]
    assert crashed, doc["checks"]


def test_a_run_that_ended_before_its_load_is_unknown(run_dir):
    info = json.loads((run_dir / "run.json").read_text())
    info["status"] = "error"
    info["error"] = "seeding failed: HTTP 500"
    del info["load"]
    (run_dir / "run.json").write_text(json.dumps(info))
    doc = judge(run_dir, write=False)
    assert doc["verdict"] == "unknown"
    assert [c["name"] for c in doc["checks"]] == ["run-completed"]
    assert "seeding failed" in doc["checks"][0]["details"]["reason"]
