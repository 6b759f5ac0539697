"""The audit watcher beside a `security` run: tails every instance's audit
log, writes the trail to `audit.jsonl` and the detector's alerts, live, to
`alerts.jsonl` (each with the wall-clock time it was raised, so the time to
detect is measured, not reconstructed).

    python -m harness.security.watch --state-dir DIR --out RUN_DIR
                                     --learn-until EPOCH [--parent PID]

Its own process, like the lag monitor: its timing does not depend on
Locust's event loop, and it exits when its parent run disappears.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from ..stack import procs
from ..stack.info import StackInfo
from .auditlog import LogTail
from .detector import Detector, DetectorConfig

__all__ = ["own_databases", "main"]

log = logging.getLogger("msdb.security.watch")
POLL_S = 0.5


def own_databases(info: StackInfo) -> dict[str, str]:
    """Each service role's own database."""
    return {db.role: db.database for db in info.databases.values()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.security.watch")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--learn-until", type=float, required=True,
                   help="epoch seconds: the detector learns each role's rate until then")
    p.add_argument("--parent", type=int, default=None, help="exit when this PID is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    info = StackInfo.load(args.state_dir)
    out = Path(args.out)
    tails = [LogTail(i.audit_log, i.name, from_end=True) for i in info.instances if i.audit_log]
    cfg = DetectorConfig()
    det = Detector(own_databases(info), learn_until=args.learn_until, cfg=cfg)
    (out / "audit.watch.json").write_text(json.dumps(
        {"logs": {t.instance: str(t.path) for t in tails}, "detector": cfg.to_json(),
         "learn_until": args.learn_until, "started": time.time()}, indent=2) + "\n")
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: done.set())
    with open(out / "audit.jsonl", "a") as trail, open(out / "alerts.jsonl", "a") as alerts:
        def poll() -> None:
            for t in tails:
                recs = t.read()
                now = time.time()
                for r in recs:
                    trail.write(json.dumps(r.to_json()) + "\n")
                    for a in det.feed(r, now):
                        alerts.write(json.dumps(a.to_json()) + "\n")
                        alerts.flush()
                        log.info("alert %s: %s", a.kind, a.evidence)
            trail.flush()
        while not done.wait(POLL_S):
            poll()
            if args.parent and procs.start_ticks(args.parent) is None:
                log.warning("parent %d is gone: exiting", args.parent)
                break
        time.sleep(POLL_S)     # the server's last lines
        poll()
    return 0


if __name__ == "__main__":
    sys.exit(main())
