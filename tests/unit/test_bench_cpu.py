"""Calibration of the benchmarks' per-process CPU accounting
(benchmarks/_machine.py, used by `bench_stack.py`'s stack CPU per order and
`--split`): a process that exits between the two readings, as a PostgreSQL
backend does when its pool connection is closed mid-round, burns a known
amount of CPU in between, and that amount is found."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _machine import EXITED, process_ticks, ticks_by_part  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")

CHILD = r"""
import os, sys, time
def burn(s):
    t = time.process_time()
    while time.process_time() - t < s:
        pass
d = sys.argv[1]
burn(0.3)
open(os.path.join(d, "ready"), "w").write(str(os.getpid()))
deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(d, "go")) and time.monotonic() < deadline:
    time.sleep(0.01)
burn(0.5)
"""

PARENT = r"""
import subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]])   # waits: the child is reaped
print("reaped", flush=True)
sys.stdin.read()        # until the test closes it
"""


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_a_process_that_exits_between_readings_is_counted_under_exited(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "ready")
        time.sleep(0.05)   # the pid is written before the child's stat is current
        child = int((tmp_path / "ready").read_text())
        names = {parent.pid: "parent", child: "child"}

        def ours(d: Path, f: list[str]) -> str | None:
            return names.get(int(d.name))

        before = process_ticks(ours)
        assert {p for p, _ in before} == {parent.pid, child}
        (tmp_path / "go").touch()
        assert parent.stdout.readline().strip() == "reaped"
        after = process_ticks(ours)
        assert {p for p, _ in after} == {parent.pid}
        ticks = ticks_by_part(before, after)
    finally:
        parent.stdin.close()
        parent.wait(timeout=30)

    # the child's 0.5 s after the first reading, give or take a few ticks
    assert ticks[EXITED] / TCK == pytest.approx(0.5, abs=0.12), ticks
    assert abs(ticks.get("parent", 0)) / TCK < 0.1, ticks
    # The sum over live processes, as bench_stack did before, loses all of the
    # child's CPU, its 0.3 s before the first reading included: it reads < 0.
    naive = sum(own for _, own, _ in after.values()) - sum(own for _, own, _ in before.values())
    assert naive / TCK < -0.15, naive


def test_a_reused_pid_counts_from_zero_not_from_the_old_process():
    # backend 100 (500 ticks so far) exits and the postmaster reaps it at 520;
    # a new backend gets PID 100 again (another start time) and spends 30
    before = {(1, 1): ("pg: postmaster", 7, 1000), (100, 1): ("pg: a", 500, 0)}
    after = {(1, 1): ("pg: postmaster", 7, 1520), (100, 9): ("pg: b", 30, 0)}
    ticks = ticks_by_part(before, after)
    # the new process under its own part; the old one's last 20 ticks under EXITED
    assert ticks == {"pg: b": 30, "pg: postmaster": 0, EXITED: 20}
