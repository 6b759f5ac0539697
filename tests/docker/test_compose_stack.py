"""The compose stack on a Docker engine: stack.json from ComposeBackend, the
health of every part, a process fault through `docker compose`, and whole
`msdb run` scenarios (smoke, a database latency fault, a database restart)
judged pass.  Skipped where there is no Docker engine (conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.stack.info import StackInfo

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]

RUN_TIMEOUT_S = 900


def test_stack_json_describes_a_healthy_stack(compose_stack):
    info = StackInfo.load(compose_stack.state_dir)
    assert info.backend == "compose" and info.tls
    assert {e.kind for e in info.engines if not e.stand_in} >= {
        "postgresql", "redis", "mongodb", "elasticsearch", "kafka", "debezium-connect", "toxiproxy"}
    bad = [(p.name, p.detail) for p in compose_stack.status() if not p.healthy]
    assert not bad, bad


def test_a_killed_service_comes_back(compose_stack):
    actions = compose_stack.actions()
    actions.kill("search")
    assert not actions.running("search")
    actions.start("search")            # waits for its healthcheck
    assert actions.running("search")
    assert all(p.healthy for p in compose_stack.status() if p.name == "search")


@pytest.mark.parametrize("scenario", ["smoke", "db-latency", "db-restart"])
def test_msdb_run_passes_on_the_compose_stack(compose_stack, scenario, tmp_path):
    run_dir = tmp_path / scenario
    argv = [sys.executable, "-m", "harness.cli", "run", scenario,
            "--state-dir", str(compose_stack.state_dir), "--duration", "30s", "--out", str(run_dir)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["verdict"] == "pass", [c for c in results["checks"] if c["verdict"] != "pass"]
