"""The one-screen summary printed at the end of `msdb run`, from the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from .rundata import Run

__all__ = ["format_summary", "format_results"]

_MARK = {"pass": "PASS", "fail": "FAIL", "unknown": "UNKNOWN"}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_summary(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    return format_results(Run(run_dir), results, written=True)


def format_results(run: Run, results: dict, *, written: bool = False) -> str:
    """The checks, key figures, endpoints and faults of one verdict."""
    run_dir = run.path
    run = run.info
    lines = ["", f"scenario {results['scenario']}  topology {run.get('topology')}  "
             f"{run.get('start')} -> {run.get('end')}", ""]
    rows = [(c["name"], _MARK[c["verdict"]], _fmt(c["measured"]), _fmt(c["threshold"]))
            for c in results["checks"]]
    head = ("check", "verdict", "measured", "threshold")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    lines.append("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    lines.append("  ".join("-" * w[i] for i in range(4)))
    for r in rows:
        lines.append("  ".join(r[i].ljust(w[i]) for i in range(4)))
    m = results.get("metrics", {})
    if m:
        lines.append("")
        keys = ["requests_total", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "failures_total",
                "server_errors", "orders_ok", "orders_fail", "orders_info", "recovery_s"]
        lines.append("  ".join(f"{k}={_fmt(m[k])}" for k in keys if k in m))
        eps = m.get("endpoints") or {}
        if eps:
            lines.append("")
            nw = max(len(n) for n in eps)
            lines.append(f"{'endpoint'.ljust(nw)}  {'count':>7}  {'p50 ms':>8}  {'p95 ms':>8}  {'p99 ms':>8}")
            for n, e in eps.items():
                lines.append(f"{n.ljust(nw)}  {e['requests']:>7}  {_fmt(e['p50_ms']):>8}  "
                             f"{_fmt(e['p95_ms']):>8}  {_fmt(e['p99_ms']):>8}")
    faults = (m or {}).get("fault_windows") or []
    if faults:
        lines.append("")
        lines.append("faults: " + "; ".join(f"{f['kind']} on {f['target']} {f['start']} -> {f['end']}"
                                             for f in faults))
    stand_ins = [e for e in (run.get("stack") or {}).get("engines", []) if e.get("stand_in")]
    if stand_ins:
        lines.append("")
        lines.append("measured on stand-ins: " + ", ".join(
            f"{e['name']} on {e['kind']} (for {e['stands_in_for']})" for e in stand_ins))
    lines.append("")
    lines.append(f"VERDICT: {_MARK[results['verdict']]}   "
                 + (f"({run_dir / 'results.json'})" if written else "(re-judged; results.json unchanged)"))
    return "\n".join(lines)
