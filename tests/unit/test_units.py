"""Small pure parts: topology layout, durations, verdict composition, percentiles,
SLO files, the process supervisor."""

from __future__ import annotations

import sys
import textwrap

import pytest

from harness.checks import core as C
from harness.checks.faults import Errors, FaultChecks
from harness.checks.slo import load_slo
from harness.durations import parse_duration
from harness.errors import ConfigError, UsageError
from harness.run.rundir import HistoryWriter
from harness.stack import procs
from harness.stack.topology import layout
from reports.measures import percentile
from rundirs import fault, make_run, req
from scenarios import registry


def keys(scenario: str, faults: bool = False) -> tuple[str, ...]:
    return registry.get(scenario).slo_keys(has_faults=faults)


def test_topologies_place_databases_as_the_seed_options_say():
    single = layout("single", 15400)
    assert [i.name for i in single.primaries] == ["pg-main"]
    assert single.instance_of("users").port == 15400
    grouped = layout("grouped", 15400)
    assert grouped.instance_of("orders").name == grouped.instance_of("payments").name == "pg-transactions"
    assert grouped.instance_of("catalog").name == grouped.instance_of("search").name == "pg-reference"
    assert grouped.instance_of("users").name == "pg-core"
    dedicated = layout("dedicated", 15400)
    assert len({dedicated.instance_of(s).port for s in ("users", "orders", "payments", "catalog", "search")}) == 5
    for L in (single, grouped, dedicated):
        assert L.replica.replica_of == L.instance_of("orders").name
        ports = L.all_ports()
        assert len(ports) == len(set(ports)) and all(15400 <= p < 15470 for p in ports)


def test_layout_rejects_bad_values_by_name():
    with pytest.raises(UsageError, match="--topology 'star'"):
        layout("star")
    with pytest.raises(UsageError, match="--base-port 80"):
        layout("single", 80)


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("15min", 900), ("2h", 7200),
                                          ("500ms", 0.5), ("12", 12), ("1.5m", 90)])
def test_durations(text, seconds):
    assert parse_duration(text, "--duration") == seconds


@pytest.mark.parametrize("bad", ["", "abc", "-3s", "0", "10 parsecs"])
def test_bad_durations_name_the_option(bad):
    with pytest.raises(UsageError, match=r"--duration"):
        parse_duration(bad, "--duration")


def test_worst_verdict_ranks_fail_over_unknown_over_pass():
    assert C.worst(["pass", "pass"]) == "pass"
    assert C.worst(["pass", "unknown"]) == "unknown"
    assert C.worst(["unknown", "fail", "pass"]) == "fail"
    assert C.worst([]) == "unknown"   # nothing checked is not a pass


def test_crashing_checker_is_unknown_never_pass():
    def boom():
        raise ZeroDivisionError("no data")
    c = C.guarded("latency", boom, threshold=5)
    assert c.verdict == "unknown" and "ZeroDivisionError" in c.details["error"]
    assert C.at_most("x", None, 1).verdict == "unknown"
    assert C.at_most("x", 2, 1).verdict == "fail" and C.at_most("x", 1, 1).verdict == "pass"
    assert C.exit_code("pass") == 0 and C.exit_code("fail") == 1 and C.exit_code("unknown") == 3


def test_nearest_rank_percentile_is_exact():
    vals = sorted(range(1, 101))
    assert percentile(vals, 50) == 50 and percentile(vals, 95) == 95 and percentile(vals, 99) == 99
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_slo_file_errors_name_the_key(tmp_path):
    assert load_slo(None, "smoke", keys("smoke"))["server_errors_max"] == 0
    f = tmp_path / "slo.yaml"
    f.write_text(textwrap.dedent("""
        smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: fast, healthy_after_s: 5}
    """))
    with pytest.raises(ConfigError, match=r"smoke.p95_ms_max"):
        load_slo(str(f), "smoke", keys("smoke"))
    f.write_text("smoke: {error_rate_max: 0.01, p95_ms_max: 1, healthy_after_s: 1, server_errors_max: 0, p99: 1}\n")
    with pytest.raises(ConfigError, match=r"smoke.p99: unknown key"):
        load_slo(str(f), "smoke", keys("smoke"))
    with pytest.raises(ConfigError, match=r"no section for scenario 'smoke'"):
        f.write_text("db-latency: {}\n")
        load_slo(str(f), "smoke", keys("smoke"))
    # a misspelt section beside a valid one is not ignored
    f.write_text("smoke: {error_rate_max: 0.01, p95_ms_max: 1, healthy_after_s: 1, server_errors_max: 0}\n"
                 "smok: {p95_ms_max: 1}\n")
    with pytest.raises(ConfigError, match=r"smok: unknown section \(did you mean 'smoke'\?\)"):
        load_slo(str(f), "smoke", keys("smoke"))


def test_supervisor_stops_by_pid_and_ignores_reused_pids(tmp_path):
    _, rec = procs.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                         log_path=tmp_path / "s.log")
    assert procs.is_running(rec)
    # A record whose start time does not match is not that process: never signalled.
    impostor = procs.ProcRecord(name="x", pid=rec.pid, start_ticks=rec.start_ticks + 1)
    assert not procs.is_running(impostor)
    assert procs.stop(impostor) is True and procs.is_running(rec)
    assert procs.stop(rec, timeout=5) is True
    assert not procs.is_running(rec)
    assert procs.wait_gone(rec.pid, 5)


def test_supervisor_escalates_to_sigkill(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    _, rec = procs.spawn("stubborn", [sys.executable, "-c", code], log_path=tmp_path / "s.log")
    deadline = __import__("time").monotonic() + 10
    while "ready" not in (tmp_path / "s.log").read_text() and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    assert procs.stop(rec, timeout=0.5) is True
    assert not procs.is_running(rec)


def test_history_closes_pending_operations_as_info(tmp_path):
    import json
    h = HistoryWriter(tmp_path / "history.jsonl")
    h.invoke("p1", "create_order", {"k": 1})
    h.ok("p1", "create_order", {"k": 1, "status": 201})
    h.invoke("p2", "create_order", {"k": 2})      # never completes
    h.close()
    ops = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(o["process"], o["type"]) for o in ops] == [("p1", "invoke"), ("p1", "ok"),
                                                        ("p2", "invoke"), ("p2", "info")]
    assert ops[-1]["value"]["k"] == 2 and "run ended" in ops[-1]["value"]["error"]
    assert [o["index"] for o in ops] == [0, 1, 2, 3]


def test_slo_defaults_endpoints_and_unknown_names(tmp_path):
    slo = load_slo(None, "drill", ("rpo_seconds_max", "rto_seconds_max"), endpoints=False)
    assert slo["rpo_seconds_max"] == 900 and slo["rto_seconds_max"] == 7200   # seed §7.2
    assert load_slo(None, "smoke", keys("smoke"))["endpoints"]["orders POST /orders"]["p99_ms_max"] == 1000
    f = tmp_path / "slo.yaml"
    base = "smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: 1, healthy_after_s: 1"
    f.write_text(base + ", endpoints: {'orders POST /ordrs': {p95_ms_max: 1}}}\n")
    with pytest.raises(ConfigError, match=r"unknown endpoint 'orders POST /ordrs'"):
        load_slo(str(f), "smoke", keys("smoke"))
    f.write_text(base + ", endpoints: {'orders POST /orders': {p95: 1}}}\n")
    with pytest.raises(ConfigError, match=r"endpoints.orders POST /orders.p95: unknown key"):
        load_slo(str(f), "smoke", keys("smoke"))
    f.write_text(base + ", endpoints: {'orders POST /orders': {p95_ms_max: fast}}}\n")
    with pytest.raises(ConfigError, match=r"p95_ms_max: expected a number, got 'fast'"):
        load_slo(str(f), "smoke", keys("smoke"))
    f.write_text("defaults: {rpo_seconds_max: 60}\n" + base + "}\ndrill: {}\n")
    assert load_slo(str(f), "drill", ("rpo_seconds_max",), endpoints=False)["rpo_seconds_max"] == 60
    f.write_text("defaults: {rpo_minutes: 15}\n" + base + "}\n")
    with pytest.raises(ConfigError, match=r"defaults.rpo_minutes: unknown key"):
        load_slo(str(f), "smoke", keys("smoke"))


def test_a_threshold_the_scenario_does_not_check_is_an_error(tmp_path):
    """A PASS must mean every stated threshold was measured and met."""
    f = tmp_path / "slo.yaml"
    f.write_text("smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: 1, "
                 "healthy_after_s: 1, knee_min_rps: 100000}\n")
    with pytest.raises(ConfigError, match=r"smoke.knee_min_rps: scenario 'smoke' does not check"):
        load_slo(str(f), "smoke", keys("smoke"))
    # The same key where the scenario does check it is fine.
    f.write_text("capacity: {p99_ms_max: 300, error_rate_max: 0.01, knee_min_rps: 50, healthy_after_s: 30}\n")
    assert load_slo(str(f), "capacity", keys("capacity"))["knee_min_rps"] == 50


def _errors_effect(tmp_path, samples):
    run = make_run(tmp_path / f"run{len(list(tmp_path.iterdir()))}", scenario="db-restart",
                   requests=samples, faults=[fault("kill-db", "kill", "pg-main", 1000.0, 1005.0)])
    slo = load_slo(None, "db-restart", keys("db-restart"))
    checks, _ = FaultChecks(effect=Errors("orders POST /orders"))(run, slo)
    return next(c for c in checks if c.name == "fault-had-effect")


def test_fault_effect_counts_requests_in_flight_when_the_fault_began(tmp_path):
    quick = [req(990.0 + i * 0.5, 20) for i in range(20)] + [req(1010.0 + i, 20) for i in range(5)]
    # Only quick successes outside the window: the kill was not felt.
    assert _errors_effect(tmp_path, quick).verdict == "unknown"
    # A success inside the window: the kill was not felt there.
    assert _errors_effect(tmp_path, quick + [req(1002.0, 30)]).verdict == "fail"
    # A request started before the kill that failed during it is the effect ...
    c = _errors_effect(tmp_path, quick + [req(999.0, 2500, ok=False, status=503)])
    assert (c.verdict, c.measured, c.details["failed"]) == ("pass", 1, 1)
    # ... and so is one held for the whole kill, then answered.
    c = _errors_effect(tmp_path, quick + [req(999.5, 6000)])
    assert (c.verdict, c.details["held_through_fault"]) == ("pass", 1)
    # Another endpoint's failure is not this endpoint's effect.
    assert _errors_effect(tmp_path, quick + [req(1001.0, 5, ok=False, status=503, name="x")]).verdict == "unknown"


def test_an_instance_kill_is_felt_by_every_service_on_that_instance(tmp_path):
    """Which endpoint a client is in when its database dies is chance: the kill
    of pg-main counts on every service whose database pg-main holds, and only
    those."""
    kill = fault("kill-db", "kill", "pg-main", 1000.0, 1005.0)
    quick = [req(990.0 + i * 0.5, 20) for i in range(20)]
    stuck = req(1000.5, 5500, name="catalog GET /products", status=200)     # held through the kill
    info = {"stack": {"databases": {"orders": "pg-main", "catalog": "pg-main", "users": "pg-users"}}}
    slo = load_slo(None, "db-restart", keys("db-restart"))

    def effect(requests, instance_wide):
        run = make_run(tmp_path / f"r{len(list(tmp_path.iterdir()))}", scenario="db-restart",
                       requests=requests, faults=[kill], info=info)
        checks, _ = FaultChecks(effect=Errors("orders POST /orders", instance_wide=instance_wide))(run, slo)
        return next(c for c in checks if c.name == "fault-had-effect")
    assert effect(quick + [stuck], instance_wide=False).verdict == "unknown"
    c = effect(quick + [stuck], instance_wide=True)
    assert (c.verdict, c.details["held_through_fault"]) == ("pass", 1)
    # users' database is elsewhere: its failures are not this kill's effect
    other = req(1001.0, 5, ok=False, status=503, name="users POST /sessions")
    assert effect(quick + [other], instance_wide=True).verdict == "unknown"


def test_smoke_given_faults_judges_errors_outside_the_fault_windows(tmp_path):
    """A fault file on a scenario without faults: errors inside a fault window
    (and its heal grace) are the fault checks' to judge, not the load's."""
    from harness.checks.load import LoadChecks
    reqs = [req(990.0 + i * 0.1, 10, name="catalog GET /products") for i in range(50)]
    reqs += [req(1001.0, 10, ok=False, status=503, name="catalog GET /products")]
    run = make_run(tmp_path / "run", requests=reqs, faults=[fault("down-x", "down", "catalog-db", 1000.0, 1002.0)])
    slo = load_slo(None, "smoke", keys("smoke", faults=True))
    checks = {c.name: c for c in LoadChecks()(run, slo)[0]}
    assert checks["error-rate"].verdict == "pass" and checks["error-rate"].measured == 0
    assert "outside the 1 fault window" in checks["error-rate"].details["judged"]
    bare = make_run(tmp_path / "bare", requests=reqs)
    assert {c.name: c for c in LoadChecks()(bare, slo)[0]}["error-rate"].verdict == "fail"


@pytest.mark.parametrize("name", [s.name for s in registry.all()])
def test_the_shipped_slo_file_judges_every_scenario(name):
    """Every scenario loads its thresholds from scenarios/slo.yaml, with and
    without a fault file: no missing key, no key its checks do not use."""
    assert load_slo(None, name, keys(name)) is not None
    assert load_slo(None, name, keys(name, faults=True)) is not None


def test_a_percentile_of_a_handful_of_requests_is_unknown_not_a_pass(tmp_path):
    """Minimum sample sizes (min_samples_p95/p99): below them the check says
    why it cannot judge; above them the same requests are judged."""
    from harness.checks.load import LoadChecks
    slo = load_slo(None, "smoke", keys("smoke"))
    few = [req(1000.0 + i * 0.1, 10, name="orders POST /orders") for i in range(12)]
    checks = {c.name: c for c in LoadChecks()(make_run(tmp_path / "few", requests=few), slo)[0]}
    assert checks["p95-latency"].verdict == "unknown"
    assert "only 12 samples" in checks["p95-latency"].details["reason"]
    assert checks["p99[orders POST /orders]"].verdict == "unknown"
    many = few + [req(1002.0 + i * 0.01, 10, name="orders POST /orders") for i in range(100)]
    many += [req(1003.0, 10, name="users POST /users")]       # too few of its own: left out, named
    checks = {c.name: c for c in LoadChecks()(make_run(tmp_path / "many", requests=many), slo)[0]}
    assert checks["p95-latency"].verdict == "pass" and checks["p99[orders POST /orders]"].verdict == "pass"
    assert checks["p95-latency"].details["too_few_samples"] == {"users POST /users": 1}


def test_a_knee_resting_on_a_thin_step_is_unknown():
    from reports.measures import knee
    rows = [{"endpoint": "ALL", "users": 5, "requests": 500, "breach": None},
            {"endpoint": "ALL", "users": 10, "requests": 40, "breach": None},
            {"endpoint": "ALL", "users": 20, "requests": 900, "breach": "p99 400 ms > 300 ms"}]
    k = knee(rows, min_requests=100)["ALL"]
    assert k["knee"]["users"] == 5 and k["breach"] is None and k["undersampled"]["users"] == 10
    assert knee(rows)["ALL"]["breach"]["users"] == 20       # without a minimum, as before
