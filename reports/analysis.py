"""Analysis of a run directory with pandas: everything a report shows.

All functions are pure: DataFrames in, DataFrames (or plain values) out, so
they are unit-tested on synthetic data with known answers.

Percentiles are nearest-rank (numpy's `inverted_cdf`): every reported
percentile is a latency that was actually observed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["RunData", "load_run", "percentile", "per_second", "fault_windows", "steps_table",
           "knee", "pool_series", "pool_little", "db_latency", "redis_hit_rate", "pg_tps",
           "endpoint_table"]


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile (numpy method 'inverted_cdf')."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return None
    return float(np.percentile(a, q, method="inverted_cdf"))


def _epoch(utc: str | None) -> float | None:
    if not utc:
        return None
    return datetime.fromisoformat(utc.replace("Z", "+00:00")).timestamp()


@dataclass
class RunData:
    path: Path
    run: dict
    results: dict | None
    requests: pd.DataFrame
    metrics: pd.DataFrame
    health: pd.DataFrame
    postgres: pd.DataFrame
    redis: pd.DataFrame
    statements: pd.DataFrame
    faults: list[dict]
    steps: list[dict] = field(default_factory=list)

    @property
    def t0(self) -> float:
        """Time zero of the run's charts: its first request (or its start)."""
        if not self.requests.empty:
            return float(self.requests["time"].min())
        return _epoch(self.run.get("start")) or 0.0


def _csv(path: Path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kw)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def load_run(path: str | Path) -> RunData:
    """Everything a report needs, from the run directory alone."""
    path = Path(path)
    run = json.loads((path / "run.json").read_text())
    results = json.loads((path / "results.json").read_text()) if (path / "results.json").exists() else None
    faults: dict[str, dict] = {}
    fj = path / "faults.jsonl"
    if fj.exists():
        for line in fj.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                faults[r["name"]] = r
    steps = []
    if (path / "steps.json").exists():
        steps = json.loads((path / "steps.json").read_text())
    return RunData(path=path, run=run, results=results,
                   requests=_csv(path / "requests.csv", keep_default_na=False),
                   metrics=_csv(path / "metrics.csv", keep_default_na=False),
                   health=_csv(path / "health.csv", keep_default_na=False),
                   postgres=_csv(path / "postgres.csv", keep_default_na=False),
                   redis=_csv(path / "redis.csv"),
                   statements=_csv(path / "statements.csv"),
                   faults=list(faults.values()), steps=steps)


def fault_windows(faults: list[dict], t0: float) -> list[dict]:
    """Fault windows in seconds since t0, straight from the journal's UTC times."""
    out = []
    for f in faults:
        s, e = _epoch(f.get("start")), _epoch(f.get("end"))
        if s is None:
            continue
        out.append({"name": f["name"], "kind": f["kind"], "target": f["target"],
                    "start_s": s - t0, "end_s": (e - t0) if e is not None else None,
                    "status": f.get("status")})
    return out


def per_second(requests: pd.DataFrame, t0: float, by_endpoint: bool = False) -> pd.DataFrame:
    """Per second (since t0): requests, errors, p50/p95/p99 in ms (exact)."""
    if requests.empty:
        return pd.DataFrame(columns=["second", "requests", "errors", "p50", "p95", "p99"])
    df = requests.assign(second=((requests["time"] - t0) // 1).astype(int),
                         failed=(requests["ok"].astype(int) == 0).astype(int))
    keys = ["second", "name"] if by_endpoint else ["second"]
    g = df.groupby(keys)
    out = pd.DataFrame({
        "requests": g.size(), "errors": g["failed"].sum(),
        "p50": g["response_ms"].apply(lambda v: percentile(v, 50)),
        "p95": g["response_ms"].apply(lambda v: percentile(v, 95)),
        "p99": g["response_ms"].apply(lambda v: percentile(v, 99)),
    }).reset_index()
    return out


def endpoint_table(requests: pd.DataFrame) -> pd.DataFrame:
    if requests.empty:
        return pd.DataFrame()
    g = requests.groupby("name")
    return pd.DataFrame({
        "requests": g.size(),
        "errors": g["ok"].apply(lambda v: int((v.astype(int) == 0).sum())),
        "p50_ms": g["response_ms"].apply(lambda v: percentile(v, 50)),
        "p95_ms": g["response_ms"].apply(lambda v: percentile(v, 95)),
        "p99_ms": g["response_ms"].apply(lambda v: percentile(v, 99)),
        "max_ms": g["response_ms"].max(),
    }).reset_index().rename(columns={"name": "endpoint"})


def steps_table(requests: pd.DataFrame, steps: list[dict], settle_s: float = 0.0) -> pd.DataFrame:
    """Per load step and endpoint: throughput, percentiles and error rate.

    `steps` are dicts with users, start and end (Unix seconds); the first
    `settle_s` of each step are left out (users still arriving)."""
    rows = []
    for st in steps:
        lo, hi = st["start"] + settle_s, st["end"]
        if hi <= lo:
            continue
        win = requests[(requests["time"] >= lo) & (requests["time"] < hi)]
        for name, g in list(win.groupby("name")) + [("(all)", win)]:
            if g.empty:
                continue
            errors = int((g["ok"].astype(int) == 0).sum())
            rows.append({"users": st["users"], "endpoint": name, "seconds": hi - lo,
                         "throughput": len(g) / (hi - lo), "requests": len(g),
                         "error_rate": errors / len(g),
                         "p50": percentile(g["response_ms"], 50), "p95": percentile(g["response_ms"], 95),
                         "p99": percentile(g["response_ms"], 99)})
    return pd.DataFrame(rows)


def knee(steps: pd.DataFrame, *, p99_ms: float, error_rate: float) -> pd.DataFrame:
    """Per endpoint, the highest throughput at which p99 and errors still meet the SLO.

    Steps are taken in order of load; the knee is the last step before the
    first breach (a later lucky step does not count)."""
    rows = []
    if steps.empty:
        return pd.DataFrame(columns=["endpoint", "knee_users", "knee_throughput", "knee_p99",
                                     "breach_users", "breach_reason"])
    for name, g in steps.sort_values("users").groupby("endpoint", sort=False):
        best, breach = None, None
        for _, r in g.iterrows():
            reason = None
            if r["p99"] > p99_ms:
                reason = f"p99 {r['p99']:.0f} ms > {p99_ms:g} ms"
            elif r["error_rate"] > error_rate:
                reason = f"errors {r['error_rate']:.1%} > {error_rate:.1%}"
            if reason:
                breach = (r["users"], reason)
                break
            best = r
        rows.append({"endpoint": name,
                     "knee_users": None if best is None else int(best["users"]),
                     "knee_throughput": None if best is None else float(best["throughput"]),
                     "knee_p99": None if best is None else float(best["p99"]),
                     "breach_users": None if breach is None else int(breach[0]),
                     "breach_reason": None if breach is None else breach[1]})
    return pd.DataFrame(rows)


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


def pool_little(pools: pd.DataFrame, t_lo: float, t_hi: float) -> pd.DataFrame:
    """Little's law per service over [t_lo, t_hi]: L = lambda x W, where lambda is
    connection checkouts per second and W the mean time a connection is held."""
    rows = []
    if pools.empty:
        return pd.DataFrame()
    for (svc, pool), g in pools.groupby(["service", "pool"]):
        w = g[(g["t"] >= t_lo) & (g["t"] <= t_hi)]
        if len(w) < 2 or "requests_num" not in w or "usage_ms" not in w:
            continue
        d_req = w["requests_num"].iloc[-1] - w["requests_num"].iloc[0]
        d_use = w["usage_ms"].iloc[-1] - w["usage_ms"].iloc[0]
        d_t = w["t"].iloc[-1] - w["t"].iloc[0]
        if d_req <= 0 or d_t <= 0:
            continue
        lam = d_req / d_t
        hold_ms = d_use / d_req
        L = lam * hold_ms / 1000.0
        wait = w.get("requests_wait_ms")
        queued = w.get("requests_queued")
        d_wait = (wait.iloc[-1] - wait.iloc[0]) if wait is not None else 0
        d_q = (queued.iloc[-1] - queued.iloc[0]) if queued is not None else 0
        rows.append({"service": svc, "pool": pool, "checkouts_per_s": lam, "hold_ms": hold_ms,
                     "busy_connections": L, "recommended_max": max(1, math.ceil(L * 1.5)),
                     "max_waiting": float(w["requests_waiting"].max()) if "requests_waiting" in w else None,
                     "mean_wait_ms": (d_wait / d_q) if d_q > 0 else 0.0,
                     "pool_max": float(w["pool_max"].max()) if "pool_max" in w else None})
    return pd.DataFrame(rows)


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
