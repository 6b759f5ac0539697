"""Time series of a run directory, with pandas: what the report's charts draw.

Pure functions: DataFrames in, DataFrames out, unit-tested on made-up data.
Every figure that is also a verdict (percentiles, fault windows, steps, the
knee, pool sizing) comes from reports.measures, the implementation the
checks use; the report shows those figures from results.json.
"""

from __future__ import annotations

import pandas as pd

from .measures import Window, little, percentile

__all__ = ["chart_windows", "per_second", "pool_series", "pool_sizing", "db_latency",
           "redis_hit_rate", "pg_tps"]


def chart_windows(windows: list[Window], t0: float) -> list[dict]:
    """Fault windows in seconds since t0, for shading charts."""
    return [{"name": w.name, "kind": w.kind, "target": w.target, "start_s": w.start - t0,
             "end_s": None if w.end == float("inf") else w.end - t0, "status": w.status}
            for w in windows]


def per_second(requests: pd.DataFrame, t0: float) -> pd.DataFrame:
    """Per second (since t0): requests, errors, p50/p95/p99 in ms (exact)."""
    if requests.empty:
        return pd.DataFrame(columns=["second", "requests", "errors", "p50", "p95", "p99"])
    df = requests.assign(second=((requests["time"] - t0) // 1).astype(int),
                         failed=(requests["ok"].astype(int) == 0).astype(int))
    g = df.groupby("second")
    return pd.DataFrame({
        "requests": g.size(), "errors": g["failed"].sum(),
        "p50": g["response_ms"].apply(lambda v: percentile(v, 50)),
        "p95": g["response_ms"].apply(lambda v: percentile(v, 95)),
        "p99": g["response_ms"].apply(lambda v: percentile(v, 99)),
    }).reset_index()


def _labels(series: pd.Series, key: str) -> pd.Series:
    return series.astype(str).str.extract(rf"(?:^|;){key}=([^;]*)")[0]


def pool_series(metrics: pd.DataFrame, t0: float) -> pd.DataFrame:
    """Per service/pool/second: pool_size, pool_available, requests_waiting,
    and wait_ms_per_s (rate of the cumulative requests_wait_ms)."""
    if metrics.empty:
        return pd.DataFrame()
    m = metrics[metrics["metric"].astype(str).str.startswith("psycopg_pool_")].copy()
    if m.empty:
        return pd.DataFrame()
    m["pool"] = _labels(m["labels"], "pool")
    # counters come out of the exposition format as <name>_total
    m["stat"] = m["metric"].str[len("psycopg_pool_"):].str.replace(r"_total$", "", regex=True)
    m["value"] = pd.to_numeric(m["value"], errors="coerce")
    m["t"] = m["time"] - t0
    wide = m.pivot_table(index=["service", "pool", "t"], columns="stat", values="value",
                         aggfunc="last").reset_index()
    wide = wide.sort_values(["service", "pool", "t"])
    for counter in ("requests_wait_ms", "usage_ms", "requests_num", "requests_queued",
                    "requests_errors", "connections_lost"):
        if counter in wide:
            d = wide.groupby(["service", "pool"])[counter].diff()
            dt = wide.groupby(["service", "pool"])["t"].diff()
            wide[f"{counter}_per_s"] = (d / dt).clip(lower=0)
    return wide


def pool_sizing(pools: pd.DataFrame, t_lo: float, t_hi: float) -> list[dict]:
    """Little's law per service and pool over [t_lo, t_hi] (seconds since t0),
    from the pool's counters: busy connections and the pool size they need."""
    rows = []
    if pools.empty:
        return rows
    for (svc, pool), g in pools.groupby(["service", "pool"]):
        w = g[(g["t"] >= t_lo) & (g["t"] <= t_hi)]
        if len(w) < 2 or "requests_num" not in w or "usage_ms" not in w:
            continue
        law = little(checkouts=float(w["requests_num"].iloc[-1] - w["requests_num"].iloc[0]),
                     usage_ms=float(w["usage_ms"].iloc[-1] - w["usage_ms"].iloc[0]),
                     seconds=float(w["t"].iloc[-1] - w["t"].iloc[0]))
        if law is None:
            continue
        wait, queued = w.get("requests_wait_ms"), w.get("requests_queued")
        d_wait = float(wait.iloc[-1] - wait.iloc[0]) if wait is not None else 0.0
        d_q = float(queued.iloc[-1] - queued.iloc[0]) if queued is not None else 0.0
        rows.append({"service": svc, "pool": pool, **law,
                     "max_waiting": float(w["requests_waiting"].max()) if "requests_waiting" in w else None,
                     "mean_wait_ms": (d_wait / d_q) if d_q > 0 else 0.0,
                     "pool_max": float(w["pool_max"].max()) if "pool_max" in w else None})
    return rows


def db_latency(metrics: pd.DataFrame, t0: float, top: int = 6) -> pd.DataFrame:
    """Mean time inside the database per named query and second, from the
    services' db_query_duration_seconds histograms (sum/count deltas), in ms."""
    if metrics.empty:
        return pd.DataFrame()
    m = metrics[metrics["metric"].isin(["db_query_duration_seconds_sum",
                                        "db_query_duration_seconds_count"])].copy()
    if m.empty:
        return pd.DataFrame()
    m["query"] = m["service"] + ":" + _labels(m["labels"], "query")
    m["value"] = pd.to_numeric(m["value"], errors="coerce")
    m["t"] = m["time"] - t0
    w = m.pivot_table(index=["query", "t"], columns="metric", values="value", aggfunc="last").reset_index()
    w = w.sort_values(["query", "t"])
    w["d_sum"] = w.groupby("query")["db_query_duration_seconds_sum"].diff()
    w["d_count"] = w.groupby("query")["db_query_duration_seconds_count"].diff()
    w = w[w["d_count"] > 0]
    w["mean_ms"] = w["d_sum"] / w["d_count"] * 1000
    busiest = w.groupby("query")["d_sum"].sum().sort_values(ascending=False).head(top).index
    return w[w["query"].isin(busiest)][["query", "t", "mean_ms", "d_count"]]


def redis_hit_rate(redis: pd.DataFrame, t0: float) -> pd.DataFrame:
    """Per sample: hit rate of the keyspace lookups since the previous sample."""
    if redis.empty:
        return pd.DataFrame()
    r = redis.copy()
    r["value"] = pd.to_numeric(r["value"], errors="coerce")
    w = r.pivot_table(index="time", columns="metric", values="value", aggfunc="last").reset_index()
    if "keyspace_hits" not in w or "keyspace_misses" not in w:
        return pd.DataFrame()
    w = w.sort_values("time")
    dh, dm = w["keyspace_hits"].diff(), w["keyspace_misses"].diff()
    w["t"] = w["time"] - t0
    w["lookups"] = dh + dm
    w["hit_rate"] = (dh / (dh + dm)).where((dh + dm) > 0)
    return w[["t", "hit_rate", "lookups"] + [c for c in ("connected_clients", "used_memory") if c in w]]


def pg_tps(postgres: pd.DataFrame, t0: float) -> pd.DataFrame:
    """Transactions per second per instance (commits + rollbacks), from counter deltas."""
    if postgres.empty:
        return pd.DataFrame()
    p = postgres[postgres["metric"].isin(["xact_commit", "xact_rollback"])].copy()
    if p.empty:
        return pd.DataFrame()
    p["value"] = pd.to_numeric(p["value"], errors="coerce")
    s = p.groupby(["instance", "time"])["value"].sum().reset_index().sort_values(["instance", "time"])
    s["tps"] = (s.groupby("instance")["value"].diff() / s.groupby("instance")["time"].diff()).clip(lower=0)
    s["t"] = s["time"] - t0
    return s.dropna(subset=["tps"])[["instance", "t", "tps"]]
