"""Migration plans (scenarios/migrations, docs/drills.md): the shipped ones
load, and a bad plan is exit 2 naming the key or the step, before any stack."""

from __future__ import annotations

import pytest

from fix_cli import msdb
from harness.drills.migration import load_plan
from harness.errors import ConfigError


def test_shipped_plans_load():
    u = load_plan("unsafe")
    assert [s.kind for s in u.steps] == ["sql", "sql"]
    ec = load_plan("expand-contract")
    kinds = [s.kind for s in ec.steps]
    assert "start" in kinds and "switch" in kinds and "wait" in kinds
    assert any(s.batch for s in ec.steps) and any(not s.transactional for s in ec.steps)


@pytest.mark.parametrize("body, named", [
    ("steps:\n  - name: a\n    sql: SELECT 1\n    colour: red\n", "colour"),
    ("stepz: []\n", "stepz"),
    ("steps:\n  - name: a\n    sql: SELECT 1\n    batch: 10\n", "batch"),
    ("steps:\n  - name: a\n    switch: green\n", "switch"),
    ("steps:\n  - name: a\n    sql: SELECT 1\n    wait: 1s\n", "steps[0] (a)"),
    ("steps:\n  - name: a\n    sql: SELECT 1\n  - name: a\n    wait: 1s\n", "appears twice"),
    ("steps:\n  - name: a\n    start: blue\n", "start"),
])
def test_bad_plan_is_refused_naming_it(tmp_path, body, named):
    f = tmp_path / "plan.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_plan(str(f))
    assert named in str(e.value)


def test_bad_plan_file_exits_2_naming_the_key(tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text("steps:\n  - name: add\n    sql: SELECT 1\n    trasactional: false\n")
    r = msdb("drill", "migration", "--plan", f, "--state-dir", tmp_path / "st", "--base-port", 21640,
             timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "trasactional" in r.stderr and "steps[0]" in r.stderr
    assert not (tmp_path / "st").exists()


def test_plan_needs_the_migration_drill(tmp_path):
    r = msdb("drill", "migration", "--state-dir", tmp_path / "st", timeout=60)
    assert r.returncode == 2 and "--plan" in r.stderr
    r = msdb("drill", "pitr", "--plan", "unsafe", "--state-dir", tmp_path / "st", timeout=60)
    assert r.returncode == 2 and "--plan" in r.stderr
