"""The processes beside a run: the nemesis (faults), the lag monitor, and a
scenario's own (the security run's watcher and intruder, noisy-neighbour's
latency probe).

Each is its own process so that a heal never depends on the Locust process
staying alive, and the monitors' timing does not depend on Locust's event
loop.  Each exits when its parent run disappears.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..stack import procs

__all__ = ["Child", "serve", "start_nemesis", "start_lagmon", "start_audit_watch", "start_intruder", "start_probe"]


class Child:
    """One helper process of a run; `stop()` asks it to finish (SIGTERM: the
    nemesis heals first) and returns its exit code."""

    def __init__(self, argv: list[str], log: Path, stop_timeout_s: float):
        self.stop_timeout_s = stop_timeout_s
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def start_nemesis(run_dir: Path, state_dir: Path, schedule: list) -> Child | None:
    """The schedule's nemesis, time zero now; None when there are no faults."""
    if not schedule:
        return None
    sched = run_dir / "faults.schedule.json"
    sched.write_text(json.dumps([f.to_json() for f in schedule], indent=2) + "\n")
    return Child([sys.executable, "-m", "harness.run.nemesis", "--state-dir", str(state_dir),
                  "--schedule", str(sched), "--journal", str(run_dir / "faults.jsonl"),
                  "--t0", str(time.time()), "--parent", str(os.getpid())],
                 run_dir / "nemesis.log", stop_timeout_s=60.0)


def start_lagmon(run_dir: Path, state_dir: Path) -> Child:
    return Child([sys.executable, "-m", "harness.run.lagmon", "--state-dir", str(state_dir),
                  "--out", str(run_dir), "--parent", str(os.getpid())],
                 run_dir / "lagmon.log", stop_timeout_s=30.0)


def start_audit_watch(run_dir: Path, state_dir: Path, t0: float, duration_s: float) -> Child:
    """The audit watcher and live detector of a `security` run; it learns each
    role's normal rate over the intrusion-free first 35 % of the load."""
    return Child([sys.executable, "-m", "harness.security.watch", "--state-dir", str(state_dir),
                  "--out", str(run_dir), "--learn-until", str(t0 + 0.35 * duration_s),
                  "--parent", str(os.getpid())],
                 run_dir / "audit-watch.log", stop_timeout_s=30.0)


def start_intruder(run_dir: Path, state_dir: Path, t0: float, duration_s: float) -> Child:
    """The scripted intruder of a `security` run (harness/security/intruder.py)."""
    return Child([sys.executable, "-m", "harness.security.intruder", "--state-dir", str(state_dir),
                  "--out", str(run_dir), "--t0", str(t0), "--duration", str(duration_s),
                  "--parent", str(os.getpid())],
                 run_dir / "intruder.log", stop_timeout_s=30.0)


def start_probe(run_dir: Path, state_dir: Path, t0: float, duration_s: float) -> Child:
    """noisy-neighbour's latency probe, outside the Locust process (harness/run/probe.py)."""
    return Child([sys.executable, "-m", "harness.run.probe", "--state-dir", str(state_dir),
                  "--out", str(run_dir), "--parent", str(os.getpid())],
                 run_dir / "probe.log", stop_timeout_s=30.0)


def serve(parent: int | None, log) -> None:
    """A helper process's main loop: return on SIGTERM/SIGINT, or once its
    parent run (PID `parent`) is gone."""
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: done.set())
    while not done.wait(0.5):
        if parent and procs.start_ticks(parent) is None:
            log.warning("parent %d is gone: exiting", parent)
            return
