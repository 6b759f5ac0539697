"""`msdb drill migration` on real PostgreSQL under load (docs/drills.md): the
unsafe plan must fail on migration-blocked-ms, the expand/contract plan must
pass with no failed request.  Each on its own fresh stack and port block
(MSDB_TEST_MIGRATION_PORT, default 21500; 70 ports each), run one after the
other (the lock waits are timing: two drills at once on 2 cores would blur
them)."""

from __future__ import annotations

import json
import os

import pytest

from fix_cli import msdb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = int(os.environ.get("MSDB_TEST_MIGRATION_PORT", "21500"))


def _drill(tmp_path, plan: str, port: int) -> tuple[int, dict, dict, str]:
    out = tmp_path / f"run-{plan}"
    r = msdb("drill", "migration", "--plan", plan, "--state-dir", tmp_path / f"state-{plan}",
             "--base-port", port, "--out", out, "--no-pdf", timeout=400)
    res = json.loads((out / "results.json").read_text())
    drill = json.loads((out / "drill.json").read_text())
    assert not (tmp_path / f"state-{plan}" / "stack.json").exists() or \
        "running" not in (tmp_path / f"state-{plan}" / "stack.json").read_text()
    return r.returncode, res, drill, r.stdout + r.stderr


def _check(res: dict, name: str) -> dict:
    return next(c for c in res["checks"] if c["name"] == name)


def test_unsafe_plan_fails_on_blocked_ms(tmp_path):
    rc, res, drill, log = _drill(tmp_path, "unsafe", BASE)
    assert rc == 1, log
    c = _check(res, "migration-blocked-ms")
    assert c["verdict"] == "fail", c
    assert c["measured"] > c["threshold"]
    # the wait was imposed by one of the plan's steps, on order_items
    assert drill["longest_wait"]["step"] in {s["name"] for s in drill["steps"]}
    assert drill["longest_wait"]["relation"] == "order_items"
    # the workload felt it too: its slowest request during the change is at least the wait
    assert drill["metrics"]["max_during_ms"] >= 0.5 * c["measured"]
    rules = {f["rule"] for f in drill["lint"]["findings"]}
    assert {"adding-field-with-default", "require-concurrent-index-creation"} <= rules
    assert _check(res, "migration-lint")["verdict"] == "fail"


def test_expand_contract_plan_passes_with_no_failed_request(tmp_path):
    rc, res, drill, log = _drill(tmp_path, "expand-contract", BASE + 70)
    assert rc == 0, log
    m = drill["metrics"]
    assert m["failed_requests"] == 0 and m["failed_during_change"] == 0
    assert _check(res, "migration-blocked-ms")["verdict"] == "pass"
    assert m["steps_completed"] and m["serving_at_end"] == "green"
    assert m["line_total_nulls"] == 0 and "line_total" in m["order_items_columns"]
    # every SQL step went through yoyo, as a versioned migration
    assert [s["migration"] for s in drill["steps"] if s["kind"] == "sql"] == \
        [x for x in m["yoyo_applied"] if x in {s.get("migration") for s in drill["steps"]}]
    assert all(w["requests"] > 0 for w in drill["windows"].values())
