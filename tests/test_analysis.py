"""The report analysis on synthetic data with known answers."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from reports import analysis as A
from harness.verdicts import percentile as nearest_rank, step_breach, capacity_checks


@pytest.mark.parametrize("q", [1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentiles_match_numpy_on_known_samples(q):
    rng = np.random.default_rng(7)
    for values in ([3.0], [1.0, 2.0], list(range(1, 101)), list(rng.lognormal(2, 1, 1013))):
        expected = float(np.percentile(values, q, method="inverted_cdf"))
        assert A.percentile(values, q) == expected
        assert nearest_rank(sorted(values), q) == expected   # the checks' own implementation
    assert A.percentile([], 50) is None


def _requests(rows):
    return pd.DataFrame(rows, columns=["time", "name", "method", "status", "response_ms", "bytes", "ok", "error"])


def test_knee_is_found_where_it_was_planted():
    """p99 stays at 20 ms up to 40 users, then jumps to 900 ms: the knee is the 40-user step."""
    rows, steps, t = [], [], 1000.0
    plan = [(5, 50, 20.0), (10, 100, 20.0), (20, 200, 21.0), (40, 400, 22.0), (80, 500, 900.0),
            (160, 520, 2000.0)]
    for users, rps, p99 in plan:
        steps.append({"users": users, "start": t, "end": t + 10})
        n = rps * 10
        for i in range(n):
            # 2% of the requests sit at the planted value (so it is the p99), the rest below
            ms = p99 if i % 50 == 0 else p99 / 4
            rows.append((t + i * 10 / n, "GET /x", "GET", 200, ms, 10, 1, ""))
        t += 10
    req = _requests(rows)
    st = A.steps_table(req, steps)
    k = A.knee(st, p99_ms=300, error_rate=0.01)
    allk = k[k["endpoint"] == "(all)"].iloc[0]
    assert allk["knee_users"] == 40 and allk["breach_users"] == 80
    assert abs(allk["knee_throughput"] - 400) < 1
    assert "p99 900 ms" in allk["breach_reason"]
    # the checks' own knee agrees with the report's
    samples = [tuple(r) for r in rows]
    for s_ in steps:
        s_["breach"] = step_breach(samples, s_, settle_s=0, p99_ms=300, error_rate=0.01)
    checks, metrics = capacity_checks(samples=samples, steps=steps, settle_s=0,
                                      slo={"knee_min_rps": 100})
    assert metrics["knee_users"] == 40 and abs(metrics["knee_rps"] - 400) < 1
    assert [c["users"] for c in metrics["steps"]] == [5, 10, 20, 40, 80]   # stops at the breach


def test_knee_counts_errors_and_ignores_a_lucky_later_step():
    st = pd.DataFrame([
        {"users": 5, "endpoint": "e", "throughput": 10, "p99": 10, "error_rate": 0.0},
        {"users": 10, "endpoint": "e", "throughput": 20, "p99": 10, "error_rate": 0.05},
        {"users": 20, "endpoint": "e", "throughput": 40, "p99": 10, "error_rate": 0.0}])
    k = A.knee(st, p99_ms=100, error_rate=0.01).iloc[0]
    assert k["knee_users"] == 5 and k["breach_users"] == 10 and "errors" in k["breach_reason"]


def test_no_knee_when_the_first_step_breaks():
    st = pd.DataFrame([{"users": 5, "endpoint": "e", "throughput": 10, "p99": 500, "error_rate": 0.0}])
    k = A.knee(st, p99_ms=100, error_rate=0.01).iloc[0]
    assert pd.isna(k["knee_users"]) and k["breach_users"] == 5


def test_fault_windows_match_the_journal(tmp_path):
    faults = [{"name": "lat", "kind": "latency", "target": "orders-db", "status": "healed",
               "start": "2026-11-27T10:00:10.250Z", "end": "2026-11-27T10:00:40.750Z"},
              {"name": "cut", "kind": "down", "target": "catalog-db", "status": "active",
               "start": "2026-11-27T10:00:50.000Z", "end": None}]
    t0 = pd.Timestamp("2026-11-27T10:00:00Z").timestamp()
    w = A.fault_windows(faults, t0)
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
    little = A.pool_little(pools, 0, 10).iloc[0]
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
