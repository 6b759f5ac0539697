"""report.html and report.pdf of a scenario run, from its run directory alone.

Every figure that is also judged (endpoint percentiles, steps and the knee,
pool sizing, lag, saga invariants) is shown from results.json, as the judge
computed it; the charts draw the raw records (requests, samples) with the
same fault windows.  The HTML is one self-contained file (inline CSS,
charts as data URIs) that opens offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import analysis as A
from . import charts as Ch
from .lag import lag_section
from .measures import fault_windows
from .output import write_html_pdf
from .rundata import Run
from .templating import env
from .verdicts import verdict_rows, with_unit

__all__ = ["report_context", "build_scenario_report"]

SAGA_INVARIANTS = ("stock-conservation", "no-oversell", "orders-end", "payments-match-orders",
                   "outcomes-match-history", "idempotency")
NOT_JUDGED = {"verdict": "unknown", "checks": [{
    "name": "judged", "verdict": "unknown", "measured": None, "threshold": None,
    "details": {"reason": "this run directory has no results.json; `msdb check RUN_DIR` judges it"}}],
    "metrics": {}}


def _pool_findings(little: list[dict], pool_cfg: dict, slo: dict) -> list[str]:
    out = []
    pmax = pool_cfg.get("max")
    acquire = pool_cfg.get("acquire")
    for r in little:
        if r["pool"] != "primary":
            continue
        need = r["recommended_max"]
        verdict = "adequate" if pmax is None or need <= pmax else "too small"
        out.append(f"{r['service']}: {r['checkouts_per_s']:.0f} checkouts/s × {r['hold_ms']:.2f} ms held "
                   f"= {r['busy_connections']:.2f} busy connections (Little's law); with 50% headroom "
                   f"{need} — pool.max {pmax} is {verdict}"
                   + (f"; up to {r['max_waiting']:.0f} requests waited, {r['mean_wait_ms']:.1f} ms on average"
                      if r.get("max_waiting") else "") + ".")
    p99 = slo.get("p99_ms_max") or slo.get("p95_ms_max")
    if acquire and p99:
        ratio = acquire / p99
        out.append(f"pool.acquire {acquire} ms is {ratio:.0f}× the latency SLO ({p99:g} ms): a request "
                   f"that waits that long for a connection has failed its SLO long before; an acquire "
                   f"timeout near the SLO turns pool exhaustion into fast, clean 503s instead.")
    return out


# the checks that judge a fault's effect on one endpoint (details.endpoint)
EFFECT_CHECKS = ("injected-latency-observed", "fault-slowed-requests", "pool-timeouts-clean",
                 "fault-had-effect")
KEY_FIGURES = (("requests_total", "requests", None), ("throughput_rps", "throughput", "req/s"),
               ("p50_ms", "p50", "ms"), ("p95_ms", "p95", "ms"), ("p99_ms", "p99", "ms"),
               ("failures_total", "failed requests", None), ("server_errors", "5xx responses", None),
               ("recovery_s", "healthy again after the heal", "s"))


def _fault_focus(checks: list[dict], requests, t0: float, windows: list[dict]) -> dict | None:
    """The view where the fault was aimed: the endpoint its effect check
    judged, charted per second, with the check's own figures."""
    c = next((c for c in checks if c["name"] in EFFECT_CHECKS and (c.get("details") or {}).get("endpoint")),
             None)
    if c is None or requests.empty:
        return None
    d = c["details"]
    mine = requests[requests["name"] == d["endpoint"]]
    injected = c.get("threshold") if c["name"] == "injected-latency-observed" else None
    chart = Ch.endpoint_chart(A.per_second(mine, t0), d["endpoint"], windows,
                              before_ms=d.get("median_before_ms"), injected_ms=injected)
    return {"endpoint": d["endpoint"], "check": c["name"], "chart": chart,
            "verdict": c["verdict"]} if chart else None


def _settings(d: dict) -> list[tuple[str, str]]:
    """A flat mapping as (key, value) rows, every key shown in full."""
    def text(v) -> str:
        if v is None:
            return "–"
        return json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return [(k, text(v)) for k, v in (d or {}).items()]


def report_context(run_dir: str | Path) -> dict:
    run = Run(run_dir)
    info = run.info
    results = run.results or NOT_JUDGED
    metrics = results.get("metrics", {})
    requests = run.df("requests.csv", keep_default_na=False)
    metrics_df = run.df("metrics.csv", keep_default_na=False)
    t0 = float(requests["time"].min()) if not requests.empty else 0.0
    windows = A.chart_windows(fault_windows(run.faults), t0)
    sec = A.per_second(requests, t0)
    # The thresholds the verdict applied (a re-judge with --slo records them in
    # results.json); runs judged before that field existed: the run's own SLO.
    slo = ((results.get("slo") or {}).get("applied") if isinstance(results, dict) else None) \
        or info.get("slo", {}) or {}
    p99_slo = slo.get("p99_ms_max") or slo.get("p95_ms_max")
    pool_cfg = (info.get("stack") or {}).get("pool", {}) or {}
    stmts = run.df("statements.csv")
    checks = results.get("checks", [])
    # A capacity curve is a stepped load's: a fault run's scatter mixes the
    # fault's seconds with the rest and says nothing about capacity.
    capacity = metrics.get("steps") and not windows
    charts = [c for c in (
        ("Throughput", Ch.throughput_chart(sec, windows)),
        ("Latency", Ch.latency_chart(sec, windows)),
        ("Capacity", Ch.capacity_chart(sec, metrics.get("steps") or [], metrics.get("knee_rps"), p99_slo)
         if capacity else None),
        ("Connection pools", Ch.pool_chart(A.pool_series(metrics_df, t0), windows)),
        ("Database query latency", Ch.db_chart(A.db_latency(metrics_df, t0), windows)),
        ("PostgreSQL transactions", Ch.tps_chart(A.pg_tps(run.df("postgres.csv", keep_default_na=False), t0),
                                                 windows)),
        ("Redis", Ch.redis_chart(A.redis_hit_rate(run.df("redis.csv"), t0), windows)),
    ) if c[1]]
    little = metrics.get("pools") or []
    return {
        "run": info, "results": results, "verdict": results.get("verdict", "unknown"),
        "checks": checks, "metrics": metrics, "verdict_rows": verdict_rows(checks),
        "fault_focus": _fault_focus(checks, requests, t0, windows) if windows else None,
        "key_figures": [(label, with_unit(metrics[k], unit)) for k, label, unit in KEY_FIGURES
                        if k in metrics],
        "parameters": _settings(info.get("parameters") or {}), "slo_rows": _settings(slo),
        "windows": windows, "charts": charts,
        "endpoints": [{"endpoint": k, **v} for k, v in (metrics.get("endpoints") or {}).items()],
        "steps": metrics.get("steps") or [], "knees": metrics.get("knees") or [],
        "little": little, "pools_window": metrics.get("pools_window"),
        "pool_findings": _pool_findings(little, pool_cfg, slo), "pool_cfg": pool_cfg,
        "statements": [] if stmts.empty else stmts.head(15).to_dict("records"), "slo": slo,
        "name": run.path.name, "comparison": metrics.get("comparison") or [],
        "invariants": [c for c in results.get("checks", []) if c["name"] in SAGA_INVARIANTS],
        "lag": lag_section(run.path, t0, windows, metrics, slo),
        "stand_ins": [e for e in (info.get("stack") or {}).get("engines", []) if e.get("stand_in")],
    }


def build_scenario_report(run_dir: Path, *, pdf: bool = True) -> tuple[Path, Path | None]:
    text = env.get_template("report.html.j2").render(**report_context(run_dir))
    return write_html_pdf(text, Path(run_dir) / "report.html", pdf=pdf)
