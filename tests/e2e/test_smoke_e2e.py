"""End to end: `msdb run smoke` against the session stack, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fix_cli import msdb

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_smoke_run_passes_and_writes_the_run_directory(stack, state_dir, tmp_path):
    out = tmp_path / "run"
    # 20 users for 20 s: enough orders (>= 100) for the p99 of POST /orders to be judged
    r = msdb("run", "smoke", "--duration", "20s", "--users", "20", "--state-dir", str(state_dir),
             "--out", str(out), "--seed-users", "20", "--seed-products", "30")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "VERDICT: PASS" in r.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["scenario"] == "smoke" and results["verdict"] == "pass"
    names = {c["name"]: c for c in results["checks"]}
    assert {"requests-made", "no-server-errors", "error-rate", "p95-latency", "healthy-after-run",
            "metrics-sampled", "workload-errors"} <= set(names)
    assert all(c["verdict"] == "pass" for c in results["checks"])
    m = results["metrics"]
    assert m["requests_total"] > 50 and m["orders_ok"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["scenario"] == "smoke" and run["topology"] == "single" and run["status"] == "completed"
    assert run["start"].endswith("Z") and run["end"].endswith("Z")
    assert run["versions"]["postgresql"].startswith("18") and run["versions"]["redis"].startswith("6.2")
    # Our per-request samples agree with Locust's own count: nothing lost.
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["requests_total"] == m["locust_requests"]
    assert {r["name"] for r in rows} >= {"orders POST /orders", "catalog GET /products/{id}"}
    with open(out / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    scraped = {r["service"] for r in metrics if r["metric"] == "up" and r["value"] == "1"}
    assert scraped == {"users", "catalog", "orders", "payments", "search", "analytics", "cdc"}
    assert any(r["metric"] == "psycopg_pool_pool_size" for r in metrics)
    assert any(r["metric"] == "db_query_duration_seconds_count" for r in metrics)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    invokes = [h for h in history if h["type"] == "invoke"]
    completions = [h for h in history if h["type"] in ("ok", "fail", "info")]
    assert invokes and len(invokes) == len(completions)
    assert (out / "faults.jsonl").exists()
    assert (out / "report.html").exists() and (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert 'href="run/report.html"' in (out.parent / "index.html").read_text()
    # The verdict is a function of the run directory: `msdb check` gives the same
    # checks and verdicts, and a tightened SLO fails it.
    again = msdb("check", str(out), "--json")
    assert again.returncode == 0, again.stderr
    rejudged = json.loads(again.stdout)
    assert [(c["name"], c["verdict"], c["measured"]) for c in rejudged["checks"]] == \
        [(c["name"], c["verdict"], c["measured"]) for c in results["checks"]]
    tight = tmp_path / "tight.yaml"
    tight.write_text("smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: 0.001, "
                     "healthy_after_s: 5}\n")
    failed = msdb("check", str(out), "--slo", str(tight))
    assert failed.returncode == 1 and "p95-latency" in failed.stdout and "FAIL" in failed.stdout
    assert json.loads((out / "results.json").read_text()) == results   # read-only without --write


def test_smoke_fails_when_the_slo_cannot_be_met(stack, state_dir, tmp_path):
    """The verdict can fail: a p95 threshold of 0 ms is impossible."""
    slo = tmp_path / "slo.yaml"
    slo.write_text("smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: 0, healthy_after_s: 5}\n")
    out = tmp_path / "run"
    # enough requests (>= 20 on some endpoint) for a p95 to be judged at all
    r = msdb("run", "smoke", "--duration", "6s", "--users", "5", "--state-dir", str(state_dir),
             "--out", str(out), "--slo", str(slo), "--seed-users", "5", "--seed-products", "10")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"] == "fail"
    p95 = next(c for c in results["checks"] if c["name"] == "p95-latency")
    assert p95["verdict"] == "fail" and p95["measured"] > 0


def test_plain_locust_cli_drives_the_running_stack(stack, state_dir, tmp_path):
    """`locust -f locustfile.py` needs no arguments but what the stack recorded."""
    env = {**os.environ, "MSDB_STATE_DIR": str(state_dir), "MSDB_SEED_USERS": "5",
           "MSDB_SEED_PRODUCTS": "10"}
    report = tmp_path / "locust.json"
    locustfile = str(Path(__file__).resolve().parents[2] / "locustfile.py")
    r = subprocess.run([sys.executable, "-m", "locust", "-f", locustfile, "--headless", "-u", "3",
                        "-r", "3", "-t", "4s", "--json-file", str(report.with_suffix(""))],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(report.read_text())
    by_name = {s["name"]: s for s in stats}
    assert sum(s["num_requests"] for s in stats) > 10
    assert sum(s["num_failures"] for s in stats) == 0
    assert any(n.startswith("catalog ") for n in by_name) and any(n.startswith("users ") for n in by_name)
