"""The Locust web UI as msdb's cockpit (`locust -f locustfile.py`).

    install(environment)   from the locustfile's `init` listener: point at the
                           stack, add the panels, the fault desk and /msdb/
    web.Cockpit            routes under /msdb/, Locust's extended tabs, the
                           events that open and close a UI test's run
    uirun.UiRun            a run directory per UI test, judged and reported
    desk.FaultDesk         faults on demand, one nemesis process each
    live.Live              the samplers behind the live panels

Which stack: MSDB_TARGET=FILE (a targets file), else the stack in
MSDB_STATE_DIR (default `.msdb`).  Run directories go to MSDB_RUNS_DIR
(default `runs`).  The API is described in docs/cockpit.md.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["install", "open_stack"]


def open_stack():
    """The backend the cockpit drives (MSDB_TARGET, else MSDB_STATE_DIR)."""
    from ..stack.backend import open_backend
    target = os.environ.get("MSDB_TARGET")
    if target:
        from ..stack.target import TargetBackend
        return TargetBackend.open(target)
    return open_backend(os.environ.get("MSDB_STATE_DIR", ".msdb"))


def install(environment, backend=None):
    """msdb's cockpit on this Locust Environment (the master or a local runner
    with a web UI; nothing on a worker).  Returns the Cockpit."""
    from .web import Cockpit
    backend = backend or open_stack()
    cockpit = Cockpit(environment, backend, runs_root=Path(os.environ.get("MSDB_RUNS_DIR", "runs")))
    environment.msdb_cockpit = cockpit
    return cockpit
