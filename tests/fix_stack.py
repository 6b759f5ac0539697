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


def leftovers(info: dict) -> list[str]:
    """Every live process of the recorded parts: leaders, their process groups,
    and (PostgreSQL backends setsid) whoever works in their data dirs."""
    left = []
    for p in info.get("processes", []):
        rec = procs.ProcRecord.from_json(p)
        left += [f"{rec.name}: pid {pid}" for pid in procs.members(rec)]
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
