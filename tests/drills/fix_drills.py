"""The drills of tests/drills, run once per module: six `msdb drill` processes
at once, each on its own fresh stack and port block (MSDB_TEST_DRILL_PORT,
default 20900; 70 ports each).  The four restore drills keep their stacks so
that the tests can query the restored instances themselves; teardown purges
them and fails if any process of theirs is left."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from fix_cli import MSDB
from harness.stack import procs
from harness.stack.info import StackInfo

__all__ = ["drills", "DRILLS", "BASE"]

BASE = int(os.environ.get("MSDB_TEST_DRILL_PORT", "20900"))
DRILLS = {
    "archive": ["restore", "--wal", "archive", "--archive-timeout", "15min", "--disaster-after", "6s",
                "--writers", "3", "--keep-stack"],
    "sync": ["restore", "--wal", "stream-sync", "--disaster-after", "5s", "--writers", "3", "--keep-stack"],
    "stream": ["restore", "--wal", "stream", "--disaster-after", "5s", "--writers", "3", "--keep-stack"],
    "geo": ["restore", "--from", "geo", "--disaster-after", "4s", "--writers", "2", "--keep-stack"],
    "pitr": ["pitr", "--disaster-after", "3s", "--writers", "2"],
    "masked": ["masked", "--disaster-after", "3s", "--writers", "2"],
}


@pytest.fixture(scope="module")
def drills(tmp_path_factory):
    root = tmp_path_factory.mktemp("drills")
    running = {}
    for i, (name, argv) in enumerate(DRILLS.items()):
        st, out = root / f"state-{name}", root / f"run-{name}"
        cmd = [*MSDB, "drill", *argv, "--state-dir", str(st),
               "--base-port", str(BASE + 70 * i), "--out", str(out), "--no-pdf"]
        running[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                         st, out)
    done = {}
    try:
        for name, (proc, st, out) in running.items():
            text, _ = proc.communicate(timeout=400)
            done[name] = {"rc": proc.returncode, "log": text, "state": st, "out": out,
                          "results": json.loads((out / "results.json").read_text())
                          if (out / "results.json").exists() else None}
        yield done
    finally:
        infos, downs = {}, []
        for name, (proc, st, out) in running.items():
            if proc.poll() is None:
                proc.terminate()      # the drill cleans up on SIGTERM
                proc.wait(timeout=60)
            try:
                infos[name] = StackInfo.load(st)
            except Exception:  # no stack left to look at: nothing can be left over
                pass
            downs.append(subprocess.Popen([*MSDB, "down", "--state-dir", str(st), "--purge"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for d in downs:
            d.wait(timeout=120)
        for name, info in infos.items():
            left = [f"{p.name}: {pid}" for p in info.parts if p.proc
                    for pid in procs.members(procs.ProcRecord.from_json(p.proc))]
            assert not left, f"drill {name} left processes: {left}"


