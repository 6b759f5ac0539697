"""The nemesis: runs a fault schedule against a Toxiproxy API and a stack's
processes, journals every fault, and always heals.

Faults come in pairs of operations (`start_latency` / `stop_latency`, ...,
`start_kill` / `stop_kill`).  `run()` heals whatever is still active in a
`finally`, so an exception, `stop()` from another thread (the runner's
SIGTERM/SIGINT handler) or the end of the schedule all leave every proxy
enabled and toxic-free and every process running.

Process faults go through a `ProcessActions` object (the harness supplies
one that knows the stack); the nemesis knows nothing of scenarios.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

from .client import ToxiproxyServer
from .faults import FaultRecord, FaultSpec, Journal, utc_now

__all__ = ["Nemesis", "ProcessActions"]

log = logging.getLogger("msdb.nemesis")


class ProcessActions(Protocol):
    def kill(self, part: str) -> None: ...      # SIGKILL (and its children)
    def pause(self, part: str) -> None: ...     # SIGSTOP
    def resume(self, part: str) -> None: ...    # SIGCONT
    def stop(self, part: str) -> None: ...      # clean stop
    def start(self, part: str) -> None: ...     # start again, wait until healthy


class Nemesis:
    HEAL_ATTEMPTS = 5
    HEAL_BACKOFF_S = 0.5

    def __init__(self, schedule: list[FaultSpec], *, proxies: ToxiproxyServer | None,
                 processes: ProcessActions | None, journal: Journal,
                 clock: Callable[[], float] = time.monotonic):
        self.schedule = sorted(schedule, key=lambda f: f.at_s)
        self.proxies = proxies
        self.processes = processes
        self.journal = journal
        self.clock = clock
        self._stop = threading.Event()
        self.active: dict[str, tuple[FaultSpec, FaultRecord]] = {}
        self.records: list[FaultRecord] = []

    def stop(self) -> None:
        """Ask run() to heal everything and return (thread-safe)."""
        self._stop.set()

    # -- the pairs ---------------------------------------------------------------------

    def _start(self, f: FaultSpec) -> None:
        if f.network:
            if f.kind == "down":
                self.proxies.set_enabled(f.target, False)
            else:
                attrs = {k: v for k, v in f.params.items() if k not in ("stream", "toxicity")}
                self.proxies.add_toxic(f.target, f.kind, stream=f.params.get("stream", "downstream"),
                                       toxicity=f.params.get("toxicity", 1.0), attributes=attrs,
                                       name=f.name)
        elif f.kind == "kill":
            self.processes.kill(f.target)
        elif f.kind == "pause":
            self.processes.pause(f.target)
        elif f.kind == "stop":
            self.processes.stop(f.target)

    def _heal(self, f: FaultSpec) -> None:
        if f.network:
            if f.kind == "down":
                self.proxies.set_enabled(f.target, True)
            else:
                try:
                    self.proxies.remove_toxic(f.target, f.name)
                except Exception as e:  # already gone (a /reset elsewhere) is healed
                    if "not found" not in str(e).lower():
                        raise
        elif f.kind == "pause":
            self.processes.resume(f.target)
        else:   # kill, stop
            self.processes.start(f.target)

    # -- the schedule ------------------------------------------------------------------

    def run(self, t0: float | None = None) -> list[FaultRecord]:
        t0 = self.clock() if t0 is None else t0
        pending = list(self.schedule)
        try:
            while (pending or self.active) and not self._stop.is_set():
                now = self.clock() - t0
                # heal what is due, then start what is due
                for name, (f, rec) in list(self.active.items()):
                    if now >= f.at_s + f.for_s:
                        self._heal_one(name)
                while pending and now >= pending[0].at_s:
                    self._start_one(pending.pop(0))
                nxt = [f.at_s for f in pending] + [f.at_s + f.for_s for f, _ in self.active.values()]
                if nxt:
                    self._stop.wait(max(0.0, min(min(nxt) - (self.clock() - t0), 0.5)))
        finally:
            self.heal_all()
            for f in pending:   # never started: say so
                rec = self._record(f)
                rec.status, rec.error = "skipped", "run ended before the fault was due"
                self.journal.write(rec)
        return self.records

    def heal_all(self) -> None:
        for name in reversed(list(self.active)):
            self._heal_one(name)

    def _record(self, f: FaultSpec) -> FaultRecord:
        rec = FaultRecord(name=f.name, kind=f.kind, target=f.target, params=dict(f.params),
                          scheduled_at_s=f.at_s, scheduled_for_s=f.for_s)
        self.records.append(rec)
        return rec

    def _start_one(self, f: FaultSpec) -> None:
        rec = self._record(f)
        try:
            self._start(f)
        except Exception as e:  # a fault that could not be injected is journalled, not fatal
            rec.status, rec.error = "failed", f"{type(e).__name__}: {e}"
            rec.start = rec.end = utc_now()
            log.error("fault %s could not start: %s", f.name, e)
            self.journal.write(rec)
            return
        rec.start, rec.status = utc_now(), "active"
        self.active[f.name] = (f, rec)
        self.journal.write(rec)
        log.info("fault %s started (%s on %s)", f.name, f.kind, f.target)

    def _heal_one(self, name: str) -> None:
        f, rec = self.active.pop(name)
        error = None
        for attempt in range(self.HEAL_ATTEMPTS):
            try:
                self._heal(f)
                error = None
                break
            except Exception as e:  # keep trying: a heal must not be given up lightly
                error = f"{type(e).__name__}: {e}"
                log.warning("healing %s failed (attempt %d): %s", name, attempt + 1, e)
                time.sleep(self.HEAL_BACKOFF_S * (attempt + 1))
        rec.end = utc_now()
        rec.status = "healed" if error is None else "heal-failed"
        rec.error = error
        self.journal.write(rec)
        log.info("fault %s %s", name, rec.status)
