"""report.html and report.pdf from one run directory, and the index of runs.

The HTML is one self-contained file (inline CSS, charts as data URIs) that
opens offline; the PDF is WeasyPrint's rendering of the same HTML.
`build_report(run_dir)` needs nothing but the run directory.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from . import analysis as A
from . import charts as Ch
from .lag import lag_section

__all__ = ["build_report", "build_index", "report_context"]

SAGA_INVARIANTS = ("stock-conservation", "no-oversell", "orders-end", "payments-match-orders",
                   "outcomes-match-history", "idempotency")

_env = Environment(loader=PackageLoader("reports", "templates"),
                   autoescape=select_autoescape(["html", "j2"]))


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:120]
    return str(v)


_env.filters["fmt"] = _fmt


def _records(df: pd.DataFrame) -> list[dict]:
    return [] if df is None or df.empty else df.to_dict("records")


def _pool_findings(little: pd.DataFrame, pool_cfg: dict, slo: dict) -> list[str]:
    out = []
    pmax = pool_cfg.get("max")
    acquire = pool_cfg.get("acquire")
    for _, r in little.iterrows():
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


def report_context(run_dir: str | Path) -> dict:
    d = A.load_run(run_dir)
    t0 = d.t0
    windows = A.fault_windows(d.faults, t0)
    sec = A.per_second(d.requests, t0)
    steps = A.steps_table(d.requests, d.steps, settle_s=d.run.get("parameters", {}).get("settle_s", 0) or 0) \
        if d.steps else pd.DataFrame()
    slo = d.run.get("slo", {}) or {}
    p99_slo = slo.get("p99_ms_max") or slo.get("p95_ms_max")
    knees = A.knee(steps, p99_ms=p99_slo or float("inf"), error_rate=slo.get("error_rate_max", 0.01)) \
        if not steps.empty else pd.DataFrame()
    pools = A.pool_series(d.metrics, t0)
    lo, hi = 0.0, float(sec["second"].max()) if not sec.empty else 0.0
    if not knees.empty and d.steps:
        k = knees[knees["endpoint"] == "(all)"]
        if not k.empty and pd.notna(k.iloc[0]["knee_users"]):
            st = next(s for s in d.steps if s["users"] == k.iloc[0]["knee_users"])
            lo, hi = st["start"] - t0, st["end"] - t0
    little = A.pool_little(pools, lo, hi)
    pool_cfg = d.run.get("stack", {}).get("pool", {}) or {}
    results = d.results or {"verdict": "unknown", "checks": [], "metrics": {}}
    stmts = d.statements.head(15) if not d.statements.empty else pd.DataFrame()
    charts = [c for c in (
        ("Throughput", Ch.throughput_chart(sec, windows)),
        ("Latency", Ch.latency_chart(sec, windows)),
        ("Capacity", Ch.capacity_chart(sec, steps, knees, p99_slo)),
        ("Connection pools", Ch.pool_chart(pools, windows)),
        ("Database query latency", Ch.db_chart(A.db_latency(d.metrics, t0), windows)),
        ("PostgreSQL transactions", Ch.tps_chart(A.pg_tps(d.postgres, t0), windows)),
        ("Redis", Ch.redis_chart(A.redis_hit_rate(d.redis, t0), windows)),
    ) if c[1]]
    return {
        "run": d.run, "results": results, "verdict": results.get("verdict", "unknown"),
        "checks": results.get("checks", []), "metrics": results.get("metrics", {}),
        "windows": windows, "charts": charts, "endpoints": _records(A.endpoint_table(d.requests)),
        "steps": _records(steps[steps["endpoint"] == "(all)"]) if not steps.empty else [],
        "knees": _records(knees), "little": _records(little),
        "pool_findings": _pool_findings(little, pool_cfg, slo), "pool_cfg": pool_cfg,
        "statements": _records(stmts), "slo": slo, "name": Path(run_dir).name,
        "comparison": json.loads((Path(run_dir) / "comparison.json").read_text())
        if (Path(run_dir) / "comparison.json").exists() else [],
        "invariants": [c for c in results.get("checks", []) if c["name"] in SAGA_INVARIANTS],
        "lag": lag_section(Path(run_dir), t0, windows, results.get("metrics", {}), slo),
    }


def build_report(run_dir: str | Path, *, pdf: bool = True) -> tuple[Path, Path | None]:
    run_dir = Path(run_dir)
    if json.loads((run_dir / "run.json").read_text()).get("scenario", "").startswith("drill-"):
        from .drill import build_drill_report   # backup/restore drills have their own page
        return build_drill_report(run_dir, pdf=pdf)
    ctx = report_context(run_dir)
    text = _env.get_template("report.html.j2").render(**ctx)
    out = run_dir / "report.html"
    out.write_text(text)
    pdf_path = None
    if pdf:
        from weasyprint import HTML
        pdf_path = run_dir / "report.pdf"
        HTML(string=text, base_url=str(run_dir)).write_pdf(pdf_path)
    return out, pdf_path


def build_index(root: str | Path, *, title: str = "msdb runs") -> Path:
    """index.html linking every run directory under root (newest first)."""
    root = Path(root)
    rows = []
    for rj in sorted(root.glob("*/run.json"), reverse=True):
        run = json.loads(rj.read_text())
        res_p = rj.parent / "results.json"
        res = json.loads(res_p.read_text()) if res_p.exists() else {}
        checks = res.get("checks", [])
        rows.append({"dir": rj.parent.name, "scenario": run.get("scenario"), "start": run.get("start"),
                     "topology": run.get("topology"), "verdict": res.get("verdict", "unknown"),
                     "failed": [c["name"] for c in checks if c["verdict"] != "pass"],
                     "has_report": (rj.parent / "report.html").exists(),
                     "has_pdf": (rj.parent / "report.pdf").exists()})
    out = root / "index.html"
    out.write_text(_env.get_template("index.html.j2").render(rows=rows, title=html.escape(title)))
    return out
