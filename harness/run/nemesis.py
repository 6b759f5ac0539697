"""`python -m harness.run.nemesis`: one run's fault schedule, in a process of
its own, so that a fault is healed even if the Locust process that started
it dies.  It heals on SIGTERM/SIGINT, when its parent disappears, and at the
end of the schedule.  Process faults go through the stack backend's part
actions, network faults through its Toxiproxy API.
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

from ..stack.backend import open_backend

__all__ = ["main", "load_schedule", "parent_gone"]

log = logging.getLogger("msdb.nemesis")


def load_schedule(path: Path) -> list[FaultSpec]:
    return [FaultSpec(**d) for d in json.loads(Path(path).read_text())]


def parent_gone(parent: int, our_parent: int) -> bool:
    """Whether the run process `parent` has died.

    A dead parent that nobody has reaped yet is a zombie whose /proc entry is
    still there (a Locust killed with SIGKILL under a shell or a test that
    waits later); but its children are given to another parent the moment it
    dies, so when `parent` was ours, a changed parent PID says it at once."""
    if parent == our_parent and os.getppid() != our_parent:
        return True
    try:
        stat = Path(f"/proc/{parent}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].split()[0] in ("Z", "X")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run.nemesis")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--schedule", required=True, help="JSON list of FaultSpec")
    p.add_argument("--journal", required=True, help="faults.jsonl to append to")
    p.add_argument("--t0", type=float, required=True, help="schedule time zero (Unix epoch)")
    p.add_argument("--parent", type=int, default=None, help="heal and exit when this PID is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    backend = open_backend(args.state_dir)
    nemesis = Nemesis(load_schedule(Path(args.schedule)),
                      proxies=ToxiproxyServer.at(backend.info().proxy.api),
                      processes=backend.actions(), journal=Journal(Path(args.journal)))
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: nemesis.stop())

    if args.parent:
        our_parent = os.getppid()

        def watch() -> None:
            while not parent_gone(args.parent, our_parent):
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
