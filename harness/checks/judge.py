"""`judge(run_dir)`: a verdict from the run directory alone.

A run writes everything its checks need into its directory first (requests,
history, faults, samples, health, end states, how the load went); then
`judge` reads it back, runs the check groups its scenario declares
(`scenarios.registry`), each with the SLO keys it names, and writes
results.json.  `msdb check RUN_DIR` calls the same function, so with the
same SLO it gives the same checks and verdicts the run printed.

A check group is a callable `(Run, slo) -> (checks, metrics)` with a `keys`
attribute (the SLO keys it needs).  A group that crashes gives `unknown`
checks, never a pass.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from reports.rundata import NotARunDir, Run
from scenarios import registry

from ..errors import UsageError
from .core import Check, keys_of, results_doc
from .drill import DRILL_CHECKS
from .lag import lag_metrics
from .slo import BUILT_IN, load_slo

__all__ = ["judge", "groups_for", "open_run"]


def open_run(run_dir: str | Path) -> Run:
    try:
        return Run(run_dir)
    except NotARunDir as e:
        raise UsageError(f"RUN_DIR {e}") from None


def groups_for(run: Run) -> list:
    """The check groups of the run's kind: a scenario's declared checks (with the
    fault checks added when the run was given faults), or a drill's."""
    name = run.scenario
    if name.startswith("drill-"):
        if name not in DRILL_CHECKS:
            raise UsageError(f"RUN_DIR {str(run.path)!r}: unknown drill {name!r}")
        return list(DRILL_CHECKS[name])
    try:
        sc = registry.get(name)
    except registry.UnknownScenario as e:
        raise UsageError(f"RUN_DIR {str(run.path)!r}: {e}") from None
    return list(sc.check_groups(has_faults=bool(run.schedule)))


def _guarded(group, run: Run, slo: dict) -> tuple[list[Check], dict]:
    try:
        return group(run, slo)
    except Exception as e:  # a crashing checker must never pass
        name = type(group).__name__
        return [Check(f"{name}-judged", "unknown", None, None,
                      {"error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-2000:]})], {}


def pool_metrics(run: Run, metrics: dict) -> dict:
    """Pool sizing by Little's law: over the knee's step in a capacity run,
    over the whole run otherwise."""
    # pandas is imported here, not at the top: a usage error (exit 2) of a
    # command that judges must not wait a quarter of a second for it.
    from reports.analysis import pool_series, pool_sizing
    pools = pool_series(run.df("metrics.csv", keep_default_na=False), 0.0)
    knee = next((r for r in metrics.get("steps") or [] if r["users"] == metrics.get("knee_users")), None)
    lo, hi = (knee["start"], knee["end"]) if knee else (float("-inf"), float("inf"))
    return {"pools": pool_sizing(pools, lo, hi),
            "pools_window": f"the knee's step ({knee['users']} users)" if knee else "whole run"}


def judge(run_dir: str | Path, *, slo_path: str | None = None, write: bool = True) -> dict:
    """results.json of a run directory: its checks and verdict.  `slo_path`
    None judges against the SLO the run recorded in run.json."""
    run = open_run(run_dir)
    groups = groups_for(run)
    for topo in run.info.get("matrix") or []:   # a matrix run: its children first
        if (run.path / topo / "run.json").exists():
            run.children[topo] = judge(run.path / topo, slo_path=slo_path, write=write)
    keys = keys_of(groups)
    section = "drill" if run.scenario.startswith("drill-") else run.scenario
    # A run recorded before a built-in key existed is judged with its value.
    slo = load_slo(slo_path, section, keys) if slo_path else {**BUILT_IN, **(run.info.get("slo") or {})}
    missing = [k for k in keys if k not in slo]
    if missing:
        raise UsageError(f"RUN_DIR {str(run.path)!r}: its SLO lacks {', '.join(missing)}; "
                         f"give one with --slo FILE")
    checks: list[Check] = []
    metrics: dict = {}
    status = run.info.get("status")
    if status != "completed":
        checks.append(Check("run-completed", "unknown", status, "completed",
                            {"reason": run.info.get("error") or f"the run ended {status or 'without a status'}"}))
    scenario_run = not run.scenario.startswith("drill-") and not run.info.get("matrix")
    if status != "completed" and scenario_run and "load" not in run.info:
        groups = []     # it ended before any load: nothing was measured, so nothing is judged
    for g in groups:
        c, m = _guarded(g, run, slo)
        checks += c
        metrics.update(m)
    lagmon = (run.info.get("children") or {}).get("lagmon")
    if lagmon not in (0, None):
        checks.append(Check("lag-monitor-exited-cleanly", "fail", lagmon, 0, {"log": "lagmon.log"}))
    if scenario_run and groups:
        metrics = {**lag_metrics(run, slo), **metrics, **pool_metrics(run, metrics)}
    doc = results_doc(run.scenario, checks, metrics)
    doc["slo"] = {"source": str(slo_path) if slo_path else "run.json",
                  "applied": {k: v for k, v in slo.items() if k in keys or k == "endpoints"}}
    if write:
        tmp = run.path / "results.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        tmp.replace(run.path / "results.json")
    return doc
