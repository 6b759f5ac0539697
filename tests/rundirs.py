"""Made-up run directories for the checks' unit tests: the files a run writes,
with exactly the records a test needs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from harness.utc import utc
from reports.rundata import REQUEST_COLUMNS, Request, Run

__all__ = ["make_run", "req"]


def req(t: float, ms: float, ok: bool = True, status: int = 201,
        name: str = "orders POST /orders") -> Request:
    return Request(t, name, "POST", status, ms, 10, ok, "" if ok else f"HTTP {status}")


def fault(name: str, kind: str, target: str, start: float, end: float | None, status: str = "healed",
          **params) -> dict:
    return {"name": name, "kind": kind, "target": target, "params": params, "status": status,
            "scheduled_at_s": 0, "scheduled_for_s": 0, "start": utc(start),
            "end": utc(end) if end is not None else None}


def make_run(path: Path, *, scenario: str = "smoke", requests: list[Request] = (),
             faults: list[dict] = (), schedule: list[dict] | None = None, info: dict | None = None,
             health: list[tuple] = (), files: dict | None = None) -> Run:
    """A run directory at path: run.json (completed, `info` merged in),
    requests.csv, faults.jsonl and faults.schedule.json, health.csv, and any
    other `files` (name -> JSON-able, or str for text)."""
    path.mkdir(parents=True, exist_ok=True)
    run_info = {"scenario": scenario, "parameters": {}, "slo": {}, "status": "completed",
                "start": utc(0), "end": utc(1), **(info or {})}
    (path / "run.json").write_text(json.dumps(run_info))
    with open(path / "requests.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for r in requests:
            w.writerow([r.time, r.name, r.method, r.status, r.response_ms, r.bytes, int(r.ok), r.error])
    (path / "faults.jsonl").write_text("".join(json.dumps(r) + "\n" for r in faults))
    if schedule is None:
        schedule = [{"name": r["name"]} for r in faults]
    (path / "faults.schedule.json").write_text(json.dumps(schedule))
    with open(path / "health.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "part", "kind", "healthy", "detail"])
        for row in health:
            w.writerow(row)
    for name, body in (files or {}).items():
        (path / name).write_text(body if isinstance(body, str) else json.dumps(body))
    return Run(path)
