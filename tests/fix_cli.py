"""The one way tests call the `msdb` command line: a child process, as a user
would run it, with a timeout so a hang fails the test instead of the session."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["msdb", "MSDB"]

MSDB = [sys.executable, "-m", "harness.cli"]


def msdb(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*MSDB, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)
