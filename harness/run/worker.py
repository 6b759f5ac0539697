"""`python -m harness.run.worker`: one Locust worker of a distributed `msdb run`.

Locust's own worker (`Environment.create_worker_runner`), with msdb's two
additions, both carried by Locust's own messaging:

- once connected and listening, the worker asks (`msdb_hello`) and the
  master answers with the `WorkloadContext` (service URLs, seeded products
  and users, and this worker's history process prefix) in the custom
  message `msdb_context`, before any spawn;
- every request sample and history entry is buffered here and shipped to
  the master in Locust's periodic worker report (`report_to_master`), where
  `WorkerSink` writes them to the one run directory.  Each report carries
  this worker's cumulative counts, and `stopped` once its users are gone, so
  the master knows when it holds everything and can count what is missing.

`WorkerShipper` here and `WorkerSink` on the master use only Locust's
messaging, so they work across machines too (docs/distributed.md).  The
worker exits when the master says quit, on SIGTERM, and when its --parent
process disappears (Locust's own check waits 60 s without a master
heartbeat).  With --parent (started by `msdb run`) SIGINT is ignored: on
Ctrl-C the terminal signals the whole process group, and the master, not
the worker, decides how the run ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import gevent
import locust.runners
from locust.env import Environment
from locust.event import Events

from scenarios.workload import WorkloadContext

from .locust_driver import CONTEXT_MESSAGE, HELLO_MESSAGE, SampleBuffer, user_classes
from .nemesis import parent_gone

__all__ = ["main", "WorkerShipper"]

log = logging.getLogger("msdb.worker")


class _BatchHistory:
    """The workload's history recorder on a worker: entries wait for the next report."""

    def __init__(self, shipper: "WorkerShipper"):
        self._shipper = shipper

    def invoke(self, process, f, value=None):
        self._shipper.history.append(("invoke", process, f, value))

    def ok(self, process, f, value=None):
        self._shipper.history.append(("ok", process, f, value))

    def fail(self, process, f, value=None):
        self._shipper.history.append(("fail", process, f, value))

    def info(self, process, f, value=None):
        self._shipper.history.append(("info", process, f, value))


class WorkerShipper:
    """Buffers a worker's samples and history and hands them to Locust's
    report to the master (data["msdb"]).

    No lock: Locust's users, its reporter and these listeners are greenlets
    of one thread, and nothing here yields, so an append and the swap in
    `on_report` never interleave."""

    def __init__(self, environment: Environment):
        self.env = environment
        self.samples = SampleBuffer()
        self.history: list[tuple] = []
        self.sent_requests = 0
        self.sent_history = 0
        self.stopped = False
        self.started = False
        ev = environment.events
        # Locust's request event goes straight to the buffer: one call per request.
        self.on_request = self.samples.add
        ev.request.add_listener(self.on_request)
        ev.report_to_master.add_listener(self.on_report)
        ev.test_start.add_listener(lambda **kw: setattr(self, "started", True))
        # test_stop fires on a worker after its users are stopped: nothing is
        # recorded after it, so the next report is the last one with data.
        ev.test_stop.add_listener(lambda **kw: setattr(self, "stopped", self.started))

    def on_report(self, client_id, data, **kw):
        packed, n = self.samples.take()
        history, self.history = self.history, []
        self.sent_requests += n
        self.sent_history += len(history)
        data["msdb"] = {"samples": packed, "history": history,
                        "sent_requests": self.sent_requests, "sent_history": self.sent_history,
                        "started": self.started, "stopped": self.stopped, "pid": os.getpid()}

    def on_context(self, environment, msg, **kw):
        d = msg.data
        if getattr(environment.msdb, "process_prefix", ""):
            return    # sent again after a reconnect: keep the counter of process ids
        environment.msdb = WorkloadContext(urls=d["urls"], products=list(d["products"]),
                                           seeded_users=d["seeded_users"],
                                           history=_BatchHistory(self),
                                           process_prefix=d["process_prefix"])
        log.info("context received: %d products, %d users, prefix %s", len(d["products"]),
                 d["seeded_users"], d["process_prefix"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.run.worker")
    p.add_argument("--master-host", default="127.0.0.1")
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--classes", required=True, help="comma list of module:Class user classes")
    p.add_argument("--parent", type=int, default=None, help="exit when this PID is gone")
    p.add_argument("--report-interval", type=float, default=1.0,
                   help="seconds between reports to the master (Locust's default: 3)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Locust reads this module constant at every report: samples reach the
    # run directory (and the live shape judge, and the progress line) within 1 s.
    locust.runners.WORKER_REPORT_INTERVAL = args.report_interval
    env = Environment(user_classes=user_classes(tuple(args.classes.split(","))), events=Events())
    shipper = WorkerShipper(env)
    env.msdb = WorkloadContext()      # replaced by the master's before any user starts
    runner = env.create_worker_runner(args.master_host, args.master_port)
    runner.register_message(CONTEXT_MESSAGE, shipper.on_context)
    runner.send_message(HELLO_MESSAGE)

    def shutdown(why: str) -> None:
        log.warning("%s: exiting", why)
        runner.greenlet.kill(block=False)

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(shutdown, "SIGTERM"))
    if args.parent:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(shutdown, "SIGINT"))
    if args.parent:
        our_parent = os.getppid()     # re-parenting says "gone" at once, also for a zombie

        def watch() -> None:
            while not parent_gone(args.parent, our_parent):
                gevent.sleep(0.5)
            shutdown(f"parent {args.parent} is gone")
        gevent.spawn(watch)
    runner.greenlet.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
