"""Process faults on the stack's parts, and the nemesis runner process.

`StackActions` implements chaos.nemesis.ProcessActions for the embedded
stack: parts are named as in stack.json (`pg-main`, `pg-replica`, `redis`)
or by service (`orders` for `svc-orders`).  It re-reads stack.json before
every action, since a restart changes PIDs.

`python -m harness.faults` runs one schedule as its own process, so that a
fault is healed even if the Locust process that started it dies: it heals
on SIGTERM/SIGINT, when its parent disappears, and at the end of the
schedule.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from chaos.client import ToxiproxyServer
from chaos.faults import FaultSpec, Journal
from chaos.nemesis import Nemesis

from . import procs
from .stack import Stack, load_stack
from .topology import SERVICE_BY_NAME

__all__ = ["StackActions", "part_names", "main"]

log = logging.getLogger("msdb.faults")


def part_names(info: dict) -> set[str]:
    """Targets a process fault may name (the proxy itself is not one: heals need it)."""
    names = {p["name"] for p in info["processes"] if p["name"] != "proxy"}
    return names | {n[4:] for n in names if n.startswith("svc-")}


class StackActions:
    STOP_TIMEOUT_S = 15.0

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)

    def _record(self, part: str) -> procs.ProcRecord:
        name = f"svc-{part}" if part in SERVICE_BY_NAME else part
        for p in load_stack(self.state_dir)["processes"]:
            if p["name"] == name:
                return procs.ProcRecord.from_json(p)
        raise KeyError(f"no part named {part!r} in {self.state_dir}/stack.json")

    def kill(self, part: str) -> None:
        """kill -9 of the part and every process of it (a crash, not a shutdown)."""
        rec = self._record(part)
        procs.signal_all(rec, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.members(rec) and time.monotonic() < deadline:
            time.sleep(0.05)

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
        Stack.attach(self.state_dir).start_part(rec.name)


def load_schedule(path: Path) -> list[FaultSpec]:
    return [FaultSpec(**d) for d in json.loads(Path(path).read_text())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.faults")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--schedule", required=True, help="JSON list of FaultSpec")
    p.add_argument("--journal", required=True, help="faults.jsonl to append to")
    p.add_argument("--t0", type=float, required=True, help="schedule time zero (Unix epoch)")
    p.add_argument("--parent", type=int, default=None, help="heal and exit when this PID is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    info = load_stack(Path(args.state_dir))
    nemesis = Nemesis(load_schedule(Path(args.schedule)),
                      proxies=ToxiproxyServer("127.0.0.1", info["proxy"]["port"]),
                      processes=StackActions(Path(args.state_dir)), journal=Journal(Path(args.journal)))
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: nemesis.stop())

    if args.parent:
        def watch() -> None:
            while procs.start_ticks(args.parent) is not None:
                time.sleep(0.5)
            log.warning("parent %d is gone: healing and exiting", args.parent)
            nemesis.stop()
        threading.Thread(target=watch, daemon=True).start()
    t0 = time.monotonic() - (time.time() - args.t0)
    records = nemesis.run(t0)
    bad = [r.name for r in records if r.status == "heal-failed"]
    if bad:
        log.error("faults not healed: %s", ", ".join(bad))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
