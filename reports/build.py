"""`msdb report`: the report of any run directory, and the index of runs."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .drill import build_drill_report
from .render import build_scenario_report
from .rundata import Run
from .templating import env

__all__ = ["build_report", "build_index"]


def build_report(run_dir: str | Path, *, pdf: bool = True) -> tuple[Path, Path | None]:
    """report.html (and report.pdf) in the run directory; drills have their own page."""
    run = Run(run_dir)
    if run.scenario.startswith("drill-"):
        return build_drill_report(run.path, pdf=pdf)
    return build_scenario_report(run.path, pdf=pdf)


def build_index(root: str | Path, *, title: str = "msdb runs") -> Path:
    """index.html linking every run directory under root (newest first)."""
    root = Path(root)
    rows = []
    for rj in root.glob("*/run.json"):
        try:    # a directory beside the runs that only looks like one is left out
            run = json.loads(rj.read_text())
            res_p = rj.parent / "results.json"
            res = json.loads(res_p.read_text()) if res_p.exists() else {}
        except (OSError, ValueError):
            continue
        if not isinstance(run, dict) or not isinstance(res, dict):
            continue
        checks = res.get("checks", [])
        rows.append({"dir": rj.parent.name, "scenario": run.get("scenario"), "start": run.get("start"),
                     "topology": run.get("topology"), "verdict": res.get("verdict", "unknown"),
                     "failed": [c["name"] for c in checks if c["verdict"] != "pass"],
                     "has_report": (rj.parent / "report.html").exists(),
                     "has_pdf": (rj.parent / "report.pdf").exists()})
    # newest first, by when the run started (UTC, one format: it sorts as text);
    # a run without a start time goes last
    rows.sort(key=lambda r: (str(r["start"] or ""), r["dir"]), reverse=True)
    out = root / "index.html"
    out.write_text(env.get_template("index.html.j2").render(rows=rows, title=html.escape(title)))
    return out
