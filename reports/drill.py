"""The drill report: one self-contained HTML page (+ PDF via WeasyPrint) from a
drill's run directory alone.

A restore drill with several WAL strategies has a root run directory whose
results.json carries `metrics.strategies.<mode>` and one combined projection;
a single-strategy drill has the flat metrics.  Both render the same
side-by-side table against the RPO/RTO targets, the RTO parts and the
five-year projection.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import charts as Ch
from .output import write_html_pdf
from .templating import env
from .verdicts import verdict_rows

__all__ = ["build_drill_report", "drill_context"]

RTO_PARTS = (("rto_destroy_s", "disaster (kill -9, data dir deleted)"),
             ("rto_decrypt_s", "decrypt geo copy"), ("rto_copy_s", "copy base backup"),
             ("rto_wal_replay_s", "WAL replay"), ("rto_promotion_s", "promotion"),
             ("rto_reconnect_s", "service reconnection"))
PART_COLORS = ("#999999", "#8e7cc3", "#4878a8", "#e4a72e", "#6aa84f", "#a64d79")


def _rto_chart(strategies: dict) -> str | None:
    if not strategies:
        return None
    plt = Ch.plt
    fig, ax = plt.subplots(figsize=(7.5, 1.5 + 0.5 * len(strategies)))
    names = list(strategies)
    left = [0.0] * len(names)
    for (key, label), color in zip(RTO_PARTS, PART_COLORS):
        vals = [strategies[n].get(key) or 0.0 for n in names]
        ax.barh(names, vals, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds from the disaster to the first write acknowledged through the API")
    ax.invert_yaxis()
    ax.legend(fontsize=7, ncol=3, loc="lower left", bbox_to_anchor=(0.0, 1.02), frameon=False)
    return Ch.png(fig)


def _projection_chart(projections: dict, target_s: float) -> str | None:
    rows = {k: p["years"] for k, p in projections.items() if p and p.get("years")}
    if not rows:
        return None
    plt = Ch.plt
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    for name, years in rows.items():
        ax.plot([r["year"] for r in years], [r["rto_s"] / 3600 for r in years], marker="o", label=name)
    ax.axhline(target_s / 3600, color="#c0392b", ls="--", label=f"RTO target {target_s / 3600:g} h")
    ax.set_xlabel("year (seed growth)")
    ax.set_ylabel("projected RTO, hours")
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.legend(fontsize=7)
    return Ch.png(fig)


def drill_context(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() \
        else {"verdict": "unknown", "checks": [], "metrics": {}}
    m = results.get("metrics", {})
    slo = run.get("slo", {})
    strategies, projections = {}, {}
    if run["scenario"] == "drill-restore":
        if "strategies" in m:
            strategies = m["strategies"]
            projections = {f"{k} (own rates)": v.get("projection") for k, v in strategies.items()}
            projections = {"combined (slowest measured rates)": m.get("projection"), **projections}
        else:
            strategies = {m.get("wal", "restore"): m}
            projections = {m.get("wal", "restore"): m.get("projection")}
    migration = None
    if run["scenario"] == "drill-migration" and (run_dir / "drill.json").exists():
        migration = json.loads((run_dir / "drill.json").read_text())
    return {"run": run, "results": results, "verdict": results.get("verdict", "unknown"),
            "migration": migration,
            "checks": results.get("checks", []), "verdict_rows": verdict_rows(results.get("checks", [])),
            "metrics": m, "slo": slo, "name": run_dir.name,
            "strategies": strategies, "projections": projections, "rto_parts": RTO_PARTS,
            "rto_chart": _rto_chart(strategies),
            "projection_chart": _projection_chart(projections, slo.get("rto_seconds_max", 7200)),
            "plain": {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
            if run["scenario"] not in ("drill-restore", "drill-migration") else {}}


def build_drill_report(run_dir: str | Path, *, pdf: bool = True) -> tuple[Path, Path | None]:
    run_dir = Path(run_dir)
    text = env.get_template("drill.html.j2").render(**drill_context(run_dir))
    return write_html_pdf(text, run_dir / "report.html", pdf=pdf)
