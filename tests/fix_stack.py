"""The embedded stack, started once per test session.

It runs in its own state dir under pytest's temp dir and on its own port
block (MSDB_TEST_BASE_PORT, default 25400) so that it never touches a
developer's `.msdb` stack.  Teardown stops it and fails the session if any
process it started (or any member of their process groups) is still alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import procs
from harness.stack import down, load_stack

TEST_BASE_PORT = int(os.environ.get("MSDB_TEST_BASE_PORT", "25400"))


def group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) whose process group is pgid."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out


def leftovers(info: dict) -> list[str]:
    left = []
    for p in info.get("processes", []):
        rec = procs.ProcRecord.from_json(p)
        if procs.is_running(rec):
            left.append(f"{rec.name} pid {rec.pid}")
        for pid in group_members(rec.pid):
            left.append(f"{rec.name} group member pid {pid}")
        if rec.workdir:   # PostgreSQL backends leave the group (setsid) but keep the data dir
            for pid in procs.pids_in(rec.workdir):
                left.append(f"{rec.name} child pid {pid} in {rec.workdir}")
    return left


def wait_no_leftovers(info: dict, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(info)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """stack.json of a running single-topology stack."""
    state = tmp_path_factory.mktemp("msdb-state")
    # Started as users start it, by a separate `msdb up` process: its parts are
    # then children of PID 1, which reaps a part killed by a fault (were they
    # children of pytest, a killed postmaster would stay a zombie and block
    # its own restart).
    r = subprocess.run([sys.executable, "-m", "harness.cli", "up", "--state-dir", str(state),
                        "--base-port", str(TEST_BASE_PORT)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        down(state, purge=True, log=lambda *a: None)
        raise RuntimeError(f"msdb up failed: {r.stdout}{r.stderr}")
    info = load_stack(state)
    yield info
    final = load_stack(state)
    left = down(state, purge=True, log=lambda *a: None)
    assert not left, f"down left processes running: {left}"
    left = wait_no_leftovers(final)
    assert not left, f"processes outlived the test session: {left}"


@pytest.fixture(scope="session")
def state_dir(stack) -> Path:
    return Path(stack["state_dir"])


@pytest.fixture(scope="session")
def urls(stack) -> dict:
    return {k: v["url"] for k, v in stack["services"].items()}
