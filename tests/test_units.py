"""Small pure parts: topology layout, durations, verdict composition, percentiles,
SLO files, the process supervisor."""

from __future__ import annotations

import sys
import textwrap

import pytest

from harness import checks as C
from harness import procs
from harness.durations import parse_duration
from harness.errors import ConfigError, UsageError
from harness.run import load_slo, percentile
from harness.topology import layout


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
    assert load_slo(None, "smoke")["server_errors_max"] == 0
    f = tmp_path / "slo.yaml"
    f.write_text(textwrap.dedent("""
        smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: fast, healthy_after_s: 5}
    """))
    with pytest.raises(ConfigError, match=r"smoke.p95_ms_max"):
        load_slo(str(f), "smoke")
    f.write_text("smoke: {error_rate_max: 0.01, p95_ms_max: 1, healthy_after_s: 1, server_errors_max: 0, p99: 1}\n")
    with pytest.raises(ConfigError, match=r"smoke.p99: unknown key"):
        load_slo(str(f), "smoke")
    with pytest.raises(ConfigError, match=r"no section for scenario 'smoke'"):
        f.write_text("other: {}\n")
        load_slo(str(f), "smoke")


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
    from harness.rundir import HistoryWriter
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
    slo = load_slo(None, "smoke")
    assert slo["rpo_seconds_max"] == 900 and slo["rto_seconds_max"] == 7200   # seed §7.2
    assert slo["endpoints"]["orders POST /orders"]["p99_ms_max"] == 1000
    f = tmp_path / "slo.yaml"
    base = "smoke: {error_rate_max: 0.01, server_errors_max: 0, p95_ms_max: 1, healthy_after_s: 1"
    f.write_text(base + ", endpoints: {'orders POST /ordrs': {p95_ms_max: 1}}}\n")
    with pytest.raises(ConfigError, match=r"unknown endpoint 'orders POST /ordrs'"):
        load_slo(str(f), "smoke")
    f.write_text(base + ", endpoints: {'orders POST /orders': {p95: 1}}}\n")
    with pytest.raises(ConfigError, match=r"endpoints.orders POST /orders.p95: unknown key"):
        load_slo(str(f), "smoke")
    f.write_text(base + ", endpoints: {'orders POST /orders': {p95_ms_max: fast}}}\n")
    with pytest.raises(ConfigError, match=r"p95_ms_max: expected a number, got 'fast'"):
        load_slo(str(f), "smoke")
    f.write_text("defaults: {rpo_seconds_max: 60}\n" + base + "}\n")
    assert load_slo(str(f), "smoke")["rpo_seconds_max"] == 60
    f.write_text("defaults: {rpo_minutes: 15}\n" + base + "}\n")
    with pytest.raises(ConfigError, match=r"defaults.rpo_minutes: unknown key"):
        load_slo(str(f), "smoke")


def _errors_effect(samples):
    from harness import verdicts as V
    start, end = 1000.0, 1005.0
    records = [{"name": "kill-db", "kind": "kill", "target": "@orders-instance", "status": "healed",
                "start": "1970-01-01T00:16:40.000Z", "end": "1970-01-01T00:16:45.000Z"}]
    assert V.fault_windows(records)[0][:2] == (start, end)
    slo = load_slo(None, "db-restart", V.FAULT_KEYS)
    checks, _ = V.fault_checks(samples=samples, records=records, expected=1, slo=slo, recovery_s=1.0,
                               pools_after={}, pool_min=0,
                               effect={"kind": "errors", "endpoint": "orders POST /orders", "min": 1})
    return next(c for c in checks if c.name == "fault-had-effect")


def _req(t, ms, ok=True, status=201, name="orders POST /orders"):
    return (t, name, "POST", status, ms, 10, ok, "" if ok else f"HTTP {status}")


def test_fault_effect_counts_requests_in_flight_when_the_fault_began():
    quick = [_req(990.0 + i * 0.5, 20) for i in range(20)] + [_req(1010.0 + i, 20) for i in range(5)]
    # Only quick successes outside the window: the kill was not felt.
    assert _errors_effect(quick).verdict == "unknown"
    # A success inside the window: the kill was not felt there.
    assert _errors_effect(quick + [_req(1002.0, 30)]).verdict == "fail"
    # A request started before the kill that failed during it is the effect ...
    c = _errors_effect(quick + [_req(999.0, 2500, ok=False, status=503)])
    assert (c.verdict, c.measured, c.details["failed"]) == ("pass", 1, 1)
    # ... and so is one held for the whole kill, then answered.
    c = _errors_effect(quick + [_req(999.5, 6000)])
    assert (c.verdict, c.details["held_through_fault"]) == ("pass", 1)
    # Another endpoint's failure is not this endpoint's effect.
    assert _errors_effect(quick + [_req(1001.0, 5, ok=False, status=503, name="x")]).verdict == "unknown"
