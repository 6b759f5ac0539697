"""Process actions on the embedded stack's parts, by PID.

`EmbeddedActions` is the embedded backend's `PartActions` (the nemesis's
`ProcessActions` plus what heal needs).  Parts are named as in stack.json:
`proxy`, `redis`, `pg-main`, `pg-replica`, ..., and the services (`orders`).
It re-reads stack.json before every action, since a restart changes PIDs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

from . import procs
from .info import StackInfo

__all__ = ["EmbeddedActions", "embedded_actions"]


class EmbeddedActions:
    STOP_TIMEOUT_S = 15.0
    KILL_WAIT_S = 10.0

    def __init__(self, state_dir: Path, starter: Callable[[str], object]):
        self.state_dir = Path(state_dir)
        self.starter = starter      # starts one part and waits until it is healthy
        self._info: tuple[int, StackInfo] | None = None

    def _stack(self) -> StackInfo:
        """stack.json, parsed again only when it changed (a restart rewrites it)."""
        try:
            mtime = (self.state_dir / "stack.json").stat().st_mtime_ns
        except FileNotFoundError:
            return StackInfo.load(self.state_dir)    # raises NoStackError, naming the state dir
        if self._info is None or self._info[0] != mtime:
            self._info = (mtime, StackInfo.load(self.state_dir))
        return self._info[1]

    def _record(self, part: str) -> procs.ProcRecord:
        info = self._stack()
        for p in info.parts:
            if p.name == part and p.proc:
                return procs.ProcRecord.from_json(p.proc)
        raise KeyError(f"no part named {part!r} in {self.state_dir}/stack.json "
                       f"(parts: {', '.join(p.name for p in info.parts)})")

    def names(self) -> list[str]:
        return [p.name for p in self._stack().parts if p.proc]

    def running(self, part: str) -> bool:
        return procs.is_running(self._record(part))

    def kill(self, part: str) -> None:
        """kill -9 of the part and every process of it (a crash, not a shutdown).
        Signalled again until none is left: a PostgreSQL backend forked while
        the first signals went out is killed too."""
        rec = self._record(part)
        deadline = time.monotonic() + self.KILL_WAIT_S
        while procs.signal_all(rec, signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(0.01)

    def pause(self, part: str) -> None:
        procs.signal_all(self._record(part), signal.SIGSTOP)

    def resume(self, part: str) -> None:
        procs.signal_all(self._record(part), signal.SIGCONT)

    def stop(self, part: str) -> None:
        procs.stop(self._record(part), timeout=self.STOP_TIMEOUT_S)

    def start(self, part: str) -> None:
        rec = self._record(part)
        if procs.is_running(rec):
            return
        # A killed postmaster's backends and its PID must be gone before a restart.
        for pid in procs.members(rec):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        procs.wait_gone(rec.pid, 10.0)
        self.starter(part)

    def restart(self, part: str) -> None:
        if self.running(part):
            self.stop(part)
        self.start(part)


def embedded_actions(state_dir: str | Path) -> EmbeddedActions:
    """The embedded stack's actions in state_dir.  The stack's code (what
    `start` needs) is imported only when a part is started: `msdb part running
    NAME` in a targets file's commands then takes ~0.25 s of CPU, not ~0.5
    (heal runs `running` and `resume` for every part, before and after a run)."""
    def start(part: str) -> None:
        from .embedded import EmbeddedStack
        EmbeddedStack.attach(state_dir).start_part(part)
    return EmbeddedActions(Path(state_dir), starter=start)
