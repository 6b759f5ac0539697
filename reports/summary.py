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


def _with_unit(v, unit: str | None) -> str:
    text = _fmt(v)
    return f"{text} {unit}" if unit and v is not None and not isinstance(v, str) else text


def _when(start: str | None, end: str | None) -> str:
    """`2026-12-01 22:39:12-22:39:40 UTC` from two ISO times."""
    if not start:
        return ""
    day, t0 = start[:10], start[11:19]
    t1 = (end or "")[11:19] if end and end[:10] == day else (end or "?")
    return f"{day} {t0}-{t1} UTC"


def format_results(run: Run, results: dict, *, written: bool = False) -> str:
    """The checks, key figures, endpoints and faults of one verdict, in lines
    that fit the terminal (80 columns at most)."""
    from harness.term import table, wrap, wrap_items
    run_dir = run.path
    run = run.info
    lines = [""] + wrap(f"scenario {results['scenario']}  topology {run.get('topology')}  "
                        f"{_when(run.get('start'), run.get('end'))}") + [""]
    rows = []
    for c in results["checks"]:
        unit = (c.get("details") or {}).get("unit")
        rows.append([c["name"], _MARK[c["verdict"]], _with_unit(c["measured"], unit),
                     _with_unit(c["threshold"], unit)])
    lines += table(rows, ["check", "verdict", "measured", "threshold"], right=(2,))
    m = results.get("metrics", {})
    worst = next((c["details"]["worst_endpoint"] for c in results["checks"]
                  if c["name"] == "p95-latency" and (c.get("details") or {}).get("worst_endpoint")), None)
    if worst:
        lines += [""] + wrap(f"p95-latency is the slowest endpoint's p95 ({worst}); the figures "
                             f"below are over all requests.")
    if m:
        lines.append("")
        figures = [("requests", m.get("requests_total"), ""), ("per s", m.get("throughput_rps"), ""),
                   ("p50", m.get("p50_ms"), " ms"), ("p95", m.get("p95_ms"), " ms"),
                   ("p99", m.get("p99_ms"), " ms"), ("failures", m.get("failures_total"), ""),
                   ("5xx", m.get("server_errors"), ""), ("orders ok", m.get("orders_ok"), ""),
                   ("orders failed", m.get("orders_fail"), ""),
                   ("orders unknown", m.get("orders_info"), ""), ("recovery", m.get("recovery_s"), " s")]
        lines += wrap_items([f"{k} {_fmt(v)}{u}" for k, v, u in figures if v is not None],
                            first="all requests: ")
        eps = m.get("endpoints") or {}
        if eps:
            lines.append("")
            lines += table([[n, e["requests"], _fmt(e["p50_ms"]), _fmt(e["p95_ms"]), _fmt(e["p99_ms"])]
                            for n, e in eps.items()],
                           ["endpoint", "count", "p50 ms", "p95 ms", "p99 ms"], right=(1, 2, 3, 4))
    faults = (m or {}).get("fault_windows") or []
    if faults:
        lines.append("")
        for f in faults:
            lines += wrap(f"fault: {f['kind']} on {f['target']}, {_when(f['start'], f['end'])}",
                          indent="  ")
    stand_ins = [e for e in (run.get("stack") or {}).get("engines", []) if e.get("stand_in")]
    if stand_ins:
        lines.append("")
        lines += wrap("measured on stand-ins: " + ", ".join(
            f"{e['name']} on {e['kind']} (for {e['stands_in_for']})" for e in stand_ins), indent="  ")
    lines.append("")
    where = f"({run_dir / 'results.json'})" if written else "(re-judged; results.json unchanged)"
    lines += wrap(f"VERDICT: {_MARK[results['verdict']]}   {where}", indent="  ")
    return "\n".join(lines)
