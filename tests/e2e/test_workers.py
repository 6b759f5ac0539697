"""`msdb run --workers N`: Locust's master/worker mode against the session stack.

Every worker's samples and history reach the one run directory, the totals
add up (no sample lost or counted twice), history process ids are unique
across workers, the checks work unchanged, and no worker outlives its run:
not after a normal end, not after Ctrl-C, not after the master is killed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from fix_cli import MSDB, msdb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ("--seed-users", "20", "--seed-products", "30")


def worker_pids_of(pid: int) -> list[int]:
    """The `harness.run.worker` children of a process."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            try:
                cmd = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"harness.run.worker" in cmd:
                out.append(k)
    return out


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def assert_adds_up(out: Path, workers: int) -> dict:
    """requests.csv and history.jsonl hold exactly what the workers sent, and
    Locust's own total agrees; returns run.json."""
    run = json.loads((out / "run.json").read_text())
    load = run["load"]
    assert run["parameters"]["workers"] == workers and len(load["workers"]) == workers
    ws = load["workers"]
    assert sorted(w["id"] for w in ws) == [f"w{i}" for i in range(1, workers + 1)]
    for w in ws:
        assert w["complete"] and w["exit"] == 0, w
        assert "lost_requests" not in w and "lost_history" not in w, w
        assert w["requests"] > 0, w                      # every worker carried load
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(w["requests"] for w in ws) == load["locust_requests"]
    # No row twice: a request's start time, name and duration identify it.
    dupes = [k for k, n in Counter((r["time"], r["name"], r["response_ms"]) for r in rows).items() if n > 1]
    assert len(dupes) <= len(rows) // 1000, dupes[:5]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == sum(w["history"] for w in ws)
    by_worker = Counter(h["process"].split("-")[0] for h in history)
    assert set(by_worker) == {w["id"] for w in ws if w["history"]}
    assert all(by_worker[w["id"]] == w["history"] for w in ws)
    # Each process is one client: its operations alternate invoke, completion.
    last: dict[str, str] = {}
    for h in history:
        prev = last.get(h["process"])
        assert (h["type"] == "invoke") == (prev in (None, "ok", "fail", "info")), (h, prev)
        last[h["process"]] = h["type"]
    assert all(t != "invoke" for t in last.values())
    return run


def test_smoke_on_two_workers_adds_up(stack, tmp_path):
    out = tmp_path / "run"
    # 20 users for 20 s: enough orders (>= min_samples_p99) for every check to reach a verdict.
    r = msdb("run", "smoke", "--workers", "2", "--no-report", "--duration", "20s", "--users", "20",
             "--state-dir", stack.state_dir, "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "VERDICT: PASS" in r.stdout and "on 2 Locust workers" in r.stdout
    run = assert_adds_up(out, 2)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["requests_total"] == run["load"]["locust_requests"]
    assert all(c["verdict"] == "pass" for c in results["checks"])
    assert (out / "worker-1.log").exists() and (out / "worker-2.log").exists()
    assert not wait_gone([w["pid"] for w in run["load"]["workers"]], 5)
    # Off a terminal the progress is a plain line every 10 s: one here.
    assert r.stdout.count("smoke | 0:1") >= 1 and r.stdout.count("smoke | 0:2") <= 1


def test_saga_on_two_workers_passes_the_checker(stack, tmp_path):
    out = tmp_path / "run"
    r = msdb("run", "saga", "--workers", "2", "--no-report", "--duration", "40s", "--state-dir", stack.state_dir,
             "--out", str(out), "--seed-users", "20", "--quiet", timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "saga | 0:" not in r.stdout                  # --quiet
    results = json.loads((out / "results.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in results["checks"]}
    for name in ("stock-conservation", "no-oversell", "orders-end", "payments-match-orders",
                 "outcomes-match-history", "idempotency"):
        assert verdicts[name] == "pass", name
    assert results["metrics"]["sagas_total"] >= 2000
    assert_adds_up(out, 2)


def _start(stack, out: Path, duration: str) -> subprocess.Popen:
    # A session of its own: Ctrl-C in a terminal signals the whole process group.
    return subprocess.Popen([*MSDB, "run", "smoke", "--workers", "2", "--no-report", "--duration", duration,
                             "--users", "6", "--state-dir", stack.state_dir, "--out", str(out), *SMALL],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_load(proc: subprocess.Popen, out: Path) -> list[int]:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the workers never started"
        pids = worker_pids_of(proc.pid)
        rows = (out / "requests.csv").read_text().count("\n") if (out / "requests.csv").exists() else 0
        if len(pids) == 2 and rows > 20:
            return pids
        time.sleep(0.3)


def test_ctrl_c_stops_the_workers_and_keeps_what_they_sent(stack, tmp_path):
    out = tmp_path / "run"
    proc = _start(stack, out, "120s")
    try:
        pids = _wait_for_load(proc, out)
        os.killpg(proc.pid, signal.SIGINT)          # what a terminal's Ctrl-C does
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, proc.stdout.read()[-3000:]
    assert not wait_gone(pids, 5)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted"
    # What the workers took before Ctrl-C reached the run directory, all of it.
    ws = run["load"]["workers"]
    assert len(ws) == 2 and all(w["complete"] and "lost_requests" not in w for w in ws), ws
    with open(out / "requests.csv") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    assert rows > 20 and rows == sum(w["requests"] for w in ws)


def test_workers_exit_when_the_master_is_killed(stack, tmp_path):
    out = tmp_path / "run"
    proc = _start(stack, out, "120s")
    try:
        pids = _wait_for_load(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Locust's own check gives up on a silent master after 60 s; the
        # workers' parent watch ends them within a second or two.
        assert not wait_gone(pids, 10), "a worker outlived its master"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # whatever is left of that session
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.parametrize("value", ["-1", "0", "65"])
def test_workers_out_of_range_is_a_usage_error(value):
    r = msdb("run", "smoke", "--workers", value, "--state-dir", "/nonexistent-msdb-state")
    assert r.returncode == 2 and f"--workers {value}" in r.stderr, r.stderr
