"""Fault scenarios end to end on the session stack, and faults that always heal."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from chaos.client import ToxiproxyServer
from fix_cli import MSDB, msdb
from harness.stack.info import StackInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["--users", "6", "--seed-users", "10", "--seed-products", "20"]


def api(stack) -> ToxiproxyServer:
    return ToxiproxyServer.at(stack.proxy.api)


def assert_clean(stack):
    """No toxic anywhere, every proxy enabled, every part healthy."""
    proxies = api(stack).proxies()
    assert all(p.enabled for p in proxies.values())
    assert all(api(stack).toxics(n) == {} for n in proxies)
    st = msdb("status", "--state-dir", stack.state_dir)
    assert st.returncode == 0, st.stdout + st.stderr


def check(results, name):
    return next(c for c in results["checks"] if c["name"] == name)


def test_db_latency_shows_the_injected_latency(stack, tmp_path):
    out = tmp_path / "run"
    r = msdb("run", "db-latency", "--no-report", "--duration", "20s", "--state-dir", stack.state_dir,
             "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    seen = check(results, "injected-latency-observed")
    assert seen["verdict"] == "pass" and 160 <= seen["measured"] <= 400, seen
    faults = [json.loads(x) for x in (out / "faults.jsonl").read_text().splitlines()]
    assert [f["status"] for f in faults] == ["active", "healed"]
    assert faults[-1]["target"] == "catalog-db" and faults[-1]["params"]["latency"] == 200
    assert_clean(stack)


def test_db_restart_kills_and_restarts_postgres(stack, tmp_path):
    state = stack.state_dir
    pid0 = StackInfo.load(state).part("pg-main").proc["pid"]
    out = tmp_path / "run"
    r = msdb("run", "db-restart", "--no-report", "--duration", "25s", "--state-dir", state, "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert check(results, "fault-had-effect")["verdict"] == "pass"
    assert check(results, "no-internal-errors")["measured"] == 0
    pid1 = StackInfo.load(state).part("pg-main").proc["pid"]
    assert pid1 != pid0                       # it really was killed and restarted
    assert_clean(stack)


def test_custom_schedule_pause_and_down_heal(stack, tmp_path):
    """A fault file on a scenario without faults: judged by the fault checks, with
    the fault thresholds of the SLO file's defaults."""
    sched = tmp_path / "faults.yaml"
    sched.write_text("- {kind: pause, target: search, at: 2s, for: 3s}\n"
                     "- {kind: down, target: users-redis, at: 3s, for: 2s}\n")
    out = tmp_path / "run"
    r = msdb("run", "smoke", "--no-report", "--duration", "20s", "--faults", str(sched),
             "--state-dir", stack.state_dir, "--out", str(out), *SMALL,
             "--users", "20")     # enough orders outside the faults for their p99 (min_samples_p99)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert check(results, "no-errors-after-heal")["measured"] == 0
    final = {f["name"]: f for f in map(json.loads, (out / "faults.jsonl").read_text().splitlines())}
    assert {f["status"] for f in final.values()} == {"healed"}
    assert final["pause-search-1"]["kind"] == "pause"
    assert_clean(stack)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_run_killed_mid_fault_leaves_the_stack_clean(stack, tmp_path, how):
    """Ctrl-C heals through the run; a run that dies outright is healed by its nemesis."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*MSDB, "run", "db-latency", "--duration",
                             "120s", "--state-dir", stack.state_dir, "--out", str(out), *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while '"active"' not in ((out / "faults.jsonl").read_text() if (out / "faults.jsonl").exists() else ""):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert api(stack).toxics("catalog-db")        # the fault is in place
        proc.send_signal(getattr(signal, how))
        proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == "SIGINT":
        assert proc.returncode == 130      # 128 + SIGINT, as shells report it
        assert json.loads((out / "results.json").read_text())["verdict"] == "unknown"
        assert (out / "report.html").exists()      # a report on the partial data
    deadline = time.monotonic() + 20
    while api(stack).toxics("catalog-db"):
        assert time.monotonic() < deadline, "the fault outlived its run"
        time.sleep(0.2)
    final = {f["name"]: f for f in map(json.loads, (out / "faults.jsonl").read_text().splitlines())}
    assert [f["status"] for f in final.values()] == ["healed"]
    assert_clean(stack)


def test_saga_run_is_valid_under_faults_and_a_kill(stack, tmp_path):
    out = tmp_path / "run"
    r = msdb("run", "saga", "--duration", "40s", "--state-dir", stack.state_dir, "--out", str(out),
             "--seed-users", "20", timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    for name in ("stock-conservation", "no-oversell", "orders-end", "payments-match-orders",
                 "outcomes-match-history", "idempotency"):
        assert check(results, name)["verdict"] == "pass", check(results, name)
    m = results["metrics"]
    assert m["sagas_total"] >= 2000      # the load goes on past 40 s if the machine is slow
    assert 0 <= m["load_extended_s"] <= 60 + 1
    if m["load_extended_s"]:
        assert "past <code>--duration</code>" in (out / "report.html").read_text()
    assert m["sagas_completed"] > 0 and m["sagas_compensated"] > 0     # declines took the other path
    faults = {f["kind"]: f for f in map(json.loads, (out / "faults.jsonl").read_text().splitlines())}
    assert faults["kill"]["status"] == "healed" and faults["reset_peer"]["status"] == "healed"
    assert (out / "final_state.json").exists()
    html = (out / "report.html").read_text()
    assert 'id="saga-table"' in html and "stock-conservation" in html
    assert_clean(stack)


def test_replica_lag_scenario_lines_up_lag_with_its_faults(stack, tmp_path):
    out = tmp_path / "run"
    r = msdb("run", "replica-lag", "--duration", "35s", "--state-dir", stack.state_dir,
             "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    for k in ("replica_lag_peak_ms", "replica_catch_up_s", "cdc_lag_p99_ms", "stale_reads"):
        assert m.get(k) is not None, k
    lat = next(f for f in m["replica_faults"] if f["kind"] == "latency")
    assert 250 <= lat["lag_p50_ms"] <= 400, lat
    assert check(res, "read-your-writes-holds")["measured"] == 0
    assert m["stale_reads"] > 0
    html = (out / "report.html").read_text()
    assert 'id="lag"' in html and "Streaming replica lag" in html and 'id="stale-reads"' in html
    assert_clean(stack)
    ro = json.loads((out / "run.json").read_text())
    assert ro["overrides"] == {"orders": {"ORDER_HISTORY_READ": "replica"}}


def test_cdc_lag_scenario_kills_the_consumer_and_the_targets_catch_up(stack, tmp_path):
    out = tmp_path / "run"
    r = msdb("run", "cdc-lag", "--duration", "60s", "--state-dir", stack.state_dir,
             "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    search = res["metrics"]["cdc_consumers"]["search"]
    assert search["backlog_peak"] > 100 and search["catch_up_s"] is not None
    assert search["lag_max_ms"] >= 25_000          # events waited out the 30 s outage
    for name in ("search-index-matches-catalog", "analytics-has-every-order-once",
                 "user-replica-matches-users", "analytics-totals-exactly-once"):
        assert check(res, name)["verdict"] == "pass"
    assert 'id="cdc-consumers"' in (out / "report.html").read_text()
    assert_clean(stack)
