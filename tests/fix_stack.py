"""The embedded stack, started once per test session through the same
`fresh_stack()` every run, suite and drill uses.

It runs in its own state dir under pytest's temp dir and on its own port
block (MSDB_TEST_BASE_PORT, default 25400) so that it never touches a
developer's `.msdb` stack.  Teardown stops and purges it, and fails the
session if any process it started (or any member of their process groups)
is still alive.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.stack import procs
from harness.stack.backend import fresh_stack
from harness.stack.embedded import StackOptions
from harness.stack.embedded_backend import EmbeddedBackend
from harness.stack.info import StackInfo

TEST_BASE_PORT = int(os.environ.get("MSDB_TEST_BASE_PORT", "25400"))


def leftovers(info: StackInfo) -> list[str]:
    """Every live process of the recorded parts: leaders, their process groups,
    and (PostgreSQL backends setsid) whoever works in their data dirs."""
    left = []
    for p in info.parts:
        if p.proc:
            rec = procs.ProcRecord.from_json(p.proc)
            left += [f"{rec.name}: pid {pid}" for pid in procs.members(rec)]
    return left


def wait_no_leftovers(info: StackInfo, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(info)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session")
def backend(tmp_path_factory) -> EmbeddedBackend:
    """A running single-topology stack (its backend)."""
    state = tmp_path_factory.mktemp("msdb-state")
    with fresh_stack(StackOptions(state_dir=state, base_port=TEST_BASE_PORT), log=lambda *a: None) as b:
        yield b
        final = b.info()
    left = wait_no_leftovers(final)
    assert not left, f"processes outlived the test session: {left}"


@pytest.fixture(scope="session")
def stack(backend) -> StackInfo:
    """stack.json of the session's stack as it started (parts may restart since:
    `backend.info()` reads it now)."""
    return backend.info()


@pytest.fixture(scope="session")
def state_dir(backend) -> Path:
    return Path(backend.state_dir)


@pytest.fixture(scope="session")
def urls(stack) -> dict:
    return stack.urls
