"""The shared measures (reports.measures) and the report's time series
(reports.analysis), on made-up data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.checks.capacity import Capacity
from reports import analysis as A
from reports import measures as M
from reports.rundata import Request
from rundirs import make_run


@pytest.mark.parametrize("q", [1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentiles_match_numpy_on_known_samples(q):
    rng = np.random.default_rng(7)
    for values in ([3.0], [1.0, 2.0], list(range(1, 101)), list(rng.lognormal(2, 1, 1013))):
        expected = float(np.percentile(values, q, method="inverted_cdf"))
        assert M.percentile(values, q) == expected
        assert M.percentile(list(reversed(values)), q) == expected   # order does not matter
    assert M.percentile([], 50) is None


def _requests(rows):
    return pd.DataFrame(rows, columns=["time", "name", "method", "status", "response_ms", "bytes", "ok", "error"])


def _planted(plan):
    rows, steps, t = [], [], 1000.0
    for users, rps, p99 in plan:
        steps.append({"users": users, "start": t, "end": t + 10})
        n = rps * 10
        for i in range(n):
            # 2% of the requests sit at the planted value (so it is the p99), the rest below
            ms = p99 if i % 50 == 0 else p99 / 4
            rows.append(Request(t + i * 10 / n, "GET /x", "GET", 200, ms, 10, True, ""))
        t += 10
    return rows, steps


def test_knee_is_found_where_it_was_planted(tmp_path):
    """p99 stays at 20 ms up to 40 users, then jumps to 900 ms: the knee is the 40-user step."""
    rows, steps = _planted([(5, 50, 20.0), (10, 100, 20.0), (20, 200, 21.0), (40, 400, 22.0),
                            (80, 500, 900.0), (160, 520, 2000.0)])
    table = M.step_rows(rows, steps, settle_s=0, p99_ms=300, error_rate=0.01)
    k = M.knee(table)[M.ALL]
    assert k["knee"]["users"] == 40 and k["breach"]["users"] == 80
    assert abs(k["knee"]["throughput"] - 400) < 1
    assert "p99 900.0 ms" in k["breach"]["breach"]
    # the live judge of a step says the same as the table
    st = steps[4]
    assert M.breach(M.window_stats(rows, st["start"], st["end"]), p99_ms=300, error_rate=0.01) \
        == k["breach"]["breach"]
    # and the capacity check reads the same figures from a run directory
    run = make_run(tmp_path / "run", scenario="capacity", requests=rows, files={"steps.json": steps},
                   info={"parameters": {"settle_s": 0}})
    checks, metrics = Capacity()(run, {"p99_ms_max": 300, "error_rate_max": 0.01, "knee_min_rps": 100})
    assert metrics["knee_users"] == 40 and abs(metrics["knee_rps"] - 400) < 1
    assert [c["users"] for c in metrics["steps"]] == [5, 10, 20, 40, 80, 160]
    assert {c.name: c.verdict for c in checks} == {"load-stepped": "pass", "knee-throughput": "pass"}


def _rows(specs):
    """(users, throughput, p99, error_rate) -> table rows of one endpoint."""
    return [{"users": u, "endpoint": "e", "throughput": tp, "p99_ms": p99, "error_rate": er,
             "breach": M.breach({"requests": 1, "error_rate": er, "p99_ms": p99}, p99_ms=100,
                                error_rate=0.01)} for u, tp, p99, er in specs]


def test_knee_counts_errors_and_ignores_a_lucky_later_step():
    k = M.knee(_rows([(5, 10, 10, 0.0), (10, 20, 10, 0.05), (20, 40, 10, 0.0)]))["e"]
    assert k["knee"]["users"] == 5 and k["breach"]["users"] == 10 and "error rate" in k["breach"]["breach"]


def test_no_knee_when_the_first_step_breaks():
    k = M.knee(_rows([(5, 10, 500, 0.0)]))["e"]
    assert k["knee"] is None and k["breach"]["users"] == 5


def test_errors_break_a_step_before_latency_does():
    """A step that fails fast has a low p99: that must not read as a pass."""
    assert "error rate" in M.breach({"requests": 10, "error_rate": 0.5, "p99_ms": 1.0},
                                    p99_ms=100, error_rate=0.01)
    assert M.breach({"requests": 0, "error_rate": None, "p99_ms": None}, p99_ms=1, error_rate=0) is None


def test_fault_windows_match_the_journal(tmp_path):
    faults = [{"name": "lat", "kind": "latency", "target": "orders-db", "status": "healed",
               "start": "2026-11-27T10:00:10.250Z", "end": "2026-11-27T10:00:40.750Z"},
              {"name": "cut", "kind": "down", "target": "catalog-db", "status": "active",
               "start": "2026-11-27T10:00:50.000Z", "end": None}]
    t0 = pd.Timestamp("2026-11-27T10:00:00Z").timestamp()
    w = A.chart_windows(M.fault_windows(faults), t0)
    assert w[0]["start_s"] == pytest.approx(10.25) and w[0]["end_s"] == pytest.approx(40.75)
    assert w[1]["start_s"] == pytest.approx(50.0) and w[1]["end_s"] is None
    # and the chart shades exactly those spans
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from reports.charts import shade
    fig, ax = plt.subplots()
    shade(ax, w, t_max=60)
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches)
    plt.close(fig)
    assert spans[0] == pytest.approx((10.25, 40.75)) and spans[1] == pytest.approx((50.0, 60.0))


def test_one_filter_for_fault_windows():
    """Every user of fault windows (checks, lag, charts) gets the same set: a
    fault that never started, failed to start or was skipped is no window."""
    base = {"kind": "latency", "target": "orders-db", "start": "2026-11-27T10:00:10Z",
            "end": "2026-11-27T10:00:20Z"}
    recs = [{"name": n, **base, "status": st} for n, st in
            (("a", "healed"), ("b", "heal-failed"), ("c", "active"), ("d", "failed"), ("e", "skipped"))]
    recs.append({"name": "f", **base, "start": None, "status": "pending"})
    assert [w.name for w in M.fault_windows(recs)] == ["a", "b", "c"]
    assert [w.name for w in M.fault_windows(recs, targets=("other",))] == []


def test_per_second_counts_and_percentiles():
    rows = [(100.0 + i / 10, "a", "GET", 200, float(i % 10 + 1), 1, 1 if i % 5 else 0, "") for i in range(30)]
    sec = A.per_second(_requests(rows), t0=100.0)
    assert list(sec["second"]) == [0, 1, 2] and list(sec["requests"]) == [10, 10, 10]
    assert list(sec["errors"]) == [2, 2, 2]
    assert list(sec["p50"]) == [5.0, 5.0, 5.0] and list(sec["p99"]) == [10.0, 10.0, 10.0]


def test_pool_counters_and_littles_law():
    rows = []
    for t in range(11):
        for stat, v in (("pool_size", 5), ("pool_available", 4), ("requests_waiting", 0), ("pool_max", 20),
                        ("requests_num_total", 100 * t), ("usage_ms_total", 250 * t),
                        ("requests_wait_ms_total", 0), ("requests_queued_total", 0)):
            rows.append((1000.0 + t, "orders", f"psycopg_pool_{stat}", "pool=primary", v))
    m = pd.DataFrame(rows, columns=["time", "service", "metric", "labels", "value"])
    pools = A.pool_series(m, t0=1000.0)
    little = A.pool_sizing(pools, 0, 10)[0]
    # 100 checkouts/s x 2.5 ms held = 0.25 busy connections
    assert little["checkouts_per_s"] == pytest.approx(100) and little["hold_ms"] == pytest.approx(2.5)
    assert little["busy_connections"] == pytest.approx(0.25) and little["recommended_max"] == 1


def test_redis_hit_rate_from_counter_deltas():
    r = pd.DataFrame([(1.0, "keyspace_hits", 0), (1.0, "keyspace_misses", 0),
                      (2.0, "keyspace_hits", 90), (2.0, "keyspace_misses", 10),
                      (3.0, "keyspace_hits", 90), (3.0, "keyspace_misses", 10)],
                     columns=["time", "metric", "value"])
    h = A.redis_hit_rate(r, t0=0.0)
    assert h["hit_rate"].iloc[1] == pytest.approx(0.9)
    assert pd.isna(h["hit_rate"].iloc[2])        # no lookups: no rate, not 0 or 100
