"""The one way tests call the `msdb` command line: a child process, as a user
would run it, with a timeout so a hang fails the test instead of the session."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

__all__ = ["msdb", "msdb_many", "MSDB"]

MSDB = [sys.executable, "-m", "harness.cli"]


def msdb(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*MSDB, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def msdb_many(calls: list[tuple[list, dict]], *, at_once: int = 4) -> list[subprocess.CompletedProcess]:
    """Several `msdb` commands at once, each (args, keyword arguments of msdb):
    a command that only rejects its arguments spends ~1 s importing, and a
    table of them one after another was ~15 s of the fast loop."""
    with ThreadPoolExecutor(at_once) as pool:
        return list(pool.map(lambda c: msdb(*c[0], **c[1]), calls))
