"""Locust in library mode: one `Environment` per run, configured through it.

The Environment gets its own `Events` (so listeners that a module registered
on Locust's global events, e.g. locustfile.py's, do not fire inside a
harness run), the workload's `WorkloadContext` (service URLs, seeded data,
the history recorder), the host, and the load shape as an instance.

With `workers=N` the run is Locust's own master/worker mode: this process
is the master (`create_master_runner`, the shape runs here), and N
`python -m harness.run.worker` processes on 127.0.0.1 run the users.  The
workers ship their samples and history in Locust's worker reports
(`report_to_master` / `worker_report`); `WorkerSink` writes them through the
same callbacks a local run uses, so the run directory is the same either way.
"""

from __future__ import annotations

import importlib
import os
import logging
import random
import socket
import sys
import time
from array import array
from pathlib import Path
from typing import Callable

import gevent
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_STOPPED, STATE_STOPPING

from reports.rundata import Request
from scenarios.workload import WorkloadContext

from ..errors import InfraError
from .children import Child

__all__ = ["run_locust", "user_classes", "raw_sample", "SampleBuffer",
           "unpack_samples", "SAMPLE_FORMAT", "to_request", "WorkerSink", "free_port", "CONTEXT_MESSAGE",
           "HELLO_MESSAGE"]

log = logging.getLogger("msdb.locust")

CONTEXT_MESSAGE = "msdb_context"      # master -> worker: the WorkloadContext and a process prefix
HELLO_MESSAGE = "msdb_hello"          # worker -> master: ready for the context


def user_classes(specs: tuple[str, ...]) -> list:
    """`module:Class` names -> the classes."""
    out = []
    for spec in specs:
        mod, _, name = spec.partition(":")
        out.append(getattr(importlib.import_module(mod), name))
    return out


# The wire format of a worker's samples (SampleBuffer.take); a master refuses
# any other, and names the mismatch.
SAMPLE_FORMAT = "msdb-samples/2"


class SampleBuffer:
    """A worker's request samples until its next report, packed as they come:
    four doubles per request (start time, response ms, status, bytes) in one
    array, the index of its (name, method) in another, and the error text of
    the requests that failed, by position.

    This is the load generator's per-request cost (benchmarks/bench_loadgen.py):
    a flat list of eight Python objects per request kept every float alive
    until the report and cost msgpack 0.21 us per request to ship; the arrays
    ship as two byte strings (0.05 us).  The listener takes Locust's request
    event's fields by name, so no dict of them is built again per request."""

    __slots__ = ("nums", "keys", "names", "_index", "errors")

    def __init__(self) -> None:
        self.nums = array("d")
        self.keys = array("I")
        self.names: list[tuple[str, str]] = []
        self._index: dict[tuple[str, str], int] = {}
        self.errors: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, request_type=None, name=None, response_time=None, response_length=None,
            response=None, exception=None, start_time=None, **_) -> None:
        key = (name, request_type)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.names)
            self.names.append(key)
        self.nums.extend((start_time or time.time(), response_time or 0.0,
                          getattr(response, "status_code", 0) or 0, response_length or 0))
        if exception is not None:
            self.errors.append((len(self.keys), error_text(exception)))
        self.keys.append(i)

    def take(self) -> tuple[dict, int]:
        """The samples so far as a report's payload, and how many; the buffer
        starts afresh."""
        n = len(self.keys)
        packed = {"format": SAMPLE_FORMAT, "nums": self.nums.tobytes(), "keys": self.keys.tobytes(),
                  "names": [list(k) for k in self.names], "errors": [list(e) for e in self.errors]}
        self.__init__()
        return packed, n


def unpack_samples(packed: dict) -> list[tuple]:
    """A SampleBuffer.take() payload -> raw samples (the fields of `raw_sample`).
    A payload of another format raises ValueError naming it."""
    if not isinstance(packed, dict) or packed.get("format") != SAMPLE_FORMAT:
        got = packed.get("format") if isinstance(packed, dict) else type(packed).__name__
        raise ValueError(f"samples in format {got!r}, this master reads {SAMPLE_FORMAT!r}")
    nums, keys = array("d"), array("I")
    nums.frombytes(packed["nums"])
    keys.frombytes(packed["keys"])
    names = [tuple(k) for k in packed["names"]]
    errors = dict(packed["errors"])
    out = []
    for j, k in enumerate(keys):
        t, ms, status, size = nums[4 * j:4 * j + 4]
        name, method = names[k]
        err = errors.get(j)
        out.append((t, name, method, int(status), ms, int(size), err is None, err or ""))
    return out


def raw_sample(request_type, name, response_time, response_length, response=None, exception=None,
               start_time=None, **kw) -> tuple:
    """Locust's request event -> the fields of one requests.csv row, as cheaply
    as possible (it runs once per request on the load generator's core;
    `to_request` rounds them where they are written)."""
    return (start_time or time.time(), name, request_type, getattr(response, "status_code", 0) or 0,
            response_time, response_length or 0, exception is None,
            "" if exception is None else error_text(exception))


def error_text(exception: BaseException) -> str:
    """A failed request's error, as requests.csv keeps it."""
    return f"{type(exception).__name__}: {exception}"[:200]


def to_request(raw) -> Request:
    """A raw sample (from this process or a worker's report) -> a requests.csv row."""
    t, name, method, status, ms, size, ok, error = raw
    return Request(round(t, 4), name, method, status, round(ms, 3), size, ok, error)


def free_port(lo: int = 21000, hi: int = 24000) -> int:
    """A free TCP port on 127.0.0.1 below 32768 (the ephemeral range is not
    ours), away from the port blocks msdb's stacks and tests default to."""
    for _ in range(200):
        port = random.randrange(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise InfraError(f"no free port for the Locust master between {lo} and {hi}")


class WorkerSink:
    """The master's side of the workers' reports.

    A worker asks for the WorkloadContext once it listens for it (a message
    sent on Locust's connect could arrive before the worker registered its
    handler); the answer carries its history prefix (`w1-`, `w2-`: process
    ids stay unique across workers).  The load starts only when every worker
    was answered.

    Every report carries a batch of samples and history entries, which go
    to `on_sample` and to the context's history recorder, plus the worker's
    cumulative counts; `complete()` is true once every worker reported
    after its users stopped, and `summary()` says per worker what arrived
    and what was sent."""

    def __init__(self, env: Environment, ctx: WorkloadContext, on_sample: Callable[[Request], None]):
        self.env, self.ctx, self.on_sample = env, ctx, on_sample
        self.workers: dict[str, dict] = {}
        env.runner.register_message(HELLO_MESSAGE, self.on_hello)
        env.events.worker_report.add_listener(self.on_report)

    def _worker(self, client_id: str) -> dict:
        if client_id not in self.workers:
            wid = f"w{self.env.runner.get_worker_index(client_id) + 1}"
            self.workers[client_id] = {"id": wid, "client_id": client_id, "pid": None, "requests": 0,
                                       "history": 0, "sent_requests": 0, "sent_history": 0,
                                       "started": False, "stopped": False}
        return self.workers[client_id]

    def on_hello(self, environment, msg, **kw) -> None:
        w = self._worker(msg.node_id)
        # Sent before the master's first spawn message to this worker, and
        # ZeroMQ keeps one peer's messages in order: no user starts without it.
        environment.runner.send_message(CONTEXT_MESSAGE, {**self.ctx.shareable(),
                                                          "process_prefix": f"{w['id']}-"},
                                        client_id=msg.node_id)
        w["context"] = True

    def ready(self) -> int:
        """Workers that have their context."""
        return sum(1 for w in self.workers.values() if w.get("context"))

    def on_report(self, client_id, data, **kw) -> None:
        m = data.get("msdb")
        if not m:
            return
        w = self._worker(client_id)
        try:
            raws = unpack_samples(m["samples"])
        except (ValueError, KeyError, TypeError) as e:
            # Not raised: Locust only logs a listener's exception.  Counted as lost instead.
            w["problem"] = f"sends {e}: run the same msdb on every machine"
            log.error("worker %s %s", w["id"], w["problem"])
            raws = []
        for raw in raws:
            self.on_sample(to_request(raw))
        w["requests"] += len(raws)
        history = self.ctx.history
        for kind, process, f, value in m["history"]:
            getattr(history, kind)(process, f, value)
        w["history"] += len(m["history"])
        w.update(pid=m["pid"], sent_requests=m["sent_requests"], sent_history=m["sent_history"],
                 started=m["started"], stopped=m["stopped"])

    def complete(self, *, started_only: bool = False) -> bool:
        """Every worker reported after its users stopped (started_only: or it
        never started any, which only an interrupted run can see)."""
        ws = self.workers.values()
        if started_only:
            return all(w["stopped"] or not w["started"] for w in ws)
        return bool(ws) and all(w["stopped"] for w in ws)

    def summary(self) -> list[dict]:
        out = []
        for w in sorted(self.workers.values(), key=lambda w: int(w["id"][1:])):
            row = {"id": w["id"], "pid": w["pid"], "requests": w["requests"], "history": w["history"],
                   "complete": w["stopped"]}
            lost = (w["sent_requests"] - w["requests"], w["sent_history"] - w["history"])
            if any(lost):
                row.update(lost_requests=lost[0], lost_history=lost[1])
            if w.get("problem"):
                row["problem"] = w["problem"]
            out.append(row)
        return out


class _Workers:
    """N worker processes of this run, known by PID; stopped on every way out."""

    START_TIMEOUT_S = 60.0
    STOP_TIMEOUT_S = 15.0

    def __init__(self, log_dir: Path):
        self.children: list = []
        self.log_dir = log_dir

    def start(self, n: int, classes: tuple[str, ...], port: int) -> None:
        for i in range(1, n + 1):       # each one known at once: stop() reaches all that started
            self.children.append(Child(
                [sys.executable, "-m", "harness.run.worker", "--master-port", str(port),
                 "--classes", ",".join(classes), "--parent", str(os.getpid())],
                self.log_dir / f"worker-{i}.log", stop_timeout_s=self.STOP_TIMEOUT_S))

    def wait_connected(self, runner, sink: WorkerSink, n: int) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while runner.worker_count < n or sink.ready() < n:
            dead = [i for i, c in enumerate(self.children, start=1) if not c.running()]
            if dead or time.monotonic() > deadline:
                why = (f"worker(s) {', '.join(map(str, dead))} exited" if dead
                       else f"only {runner.worker_count} of {n} connected in {self.START_TIMEOUT_S:g} s")
                raise InfraError(f"Locust workers did not start: {why} (see "
                                 f"{self.log_dir}/worker-N.log)")
            gevent.sleep(0.1)

    def stop(self) -> dict[int, int]:
        """Stop every worker by PID (SIGTERM, then SIGKILL); PID -> exit code."""
        return {c.proc.pid: c.stop() for c in self.children}


def _drive(runner, *, users, spawn_rate, duration_s, shape, enough, max_extra_s) -> float:
    """Start the load, hold it for duration_s (or until the shape stops), stop it."""
    if shape is not None:
        runner.start_shape()
    else:
        runner.start(users, spawn_rate=spawn_rate)
    t0 = time.monotonic()
    deadline = t0 + duration_s
    while time.monotonic() < deadline:
        gevent.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if shape is not None and runner.state in (STATE_STOPPING, STATE_STOPPED) \
                and time.monotonic() > t0 + 1:
            break
    end = deadline + max_extra_s
    while enough is not None and not enough() and time.monotonic() < end:
        gevent.sleep(0.25)
    extended_s = max(0.0, time.monotonic() - deadline)
    runner.stop()
    return extended_s


def run_locust(*, classes: tuple[str, ...], ctx: WorkloadContext, host: str, users: int,
               spawn_rate: float, duration_s: float, on_sample: Callable[[Request], None], shape=None,
               enough: Callable[[], bool] | None = None, max_extra_s: float = 0.0, workers: int = 0,
               log_dir: Path | None = None, on_runner: Callable | None = None,
               into: dict | None = None) -> dict:
    """Run the load for duration_s (or until the shape stops); returns Locust's
    own totals.

    enough: whether the load has done what the scenario needs (e.g. 2,000
    sagas).  If it is still False at duration_s, the load goes on until it is
    True, for at most max_extra_s more; `extended_s` says how long that took.
    A count that depends on the machine's speed thus never turns a slow
    machine into a failed run, while a system that really cannot reach the
    count still fails its check.

    workers: 0 runs the users in this process; N > 0 runs a Locust master
    here and N worker processes (their logs in log_dir/worker-N.log).
    on_runner(runner) is called once the runner exists (the progress line
    reads its user count).  into: gets `workers` (what each worker sent)
    on every way out, also when the load is interrupted."""
    env = Environment(user_classes=user_classes(classes), events=Events(), host=host, stop_timeout=10,
                      shape_class=shape)
    env.msdb = ctx
    extended_s = 0.0
    sink = procs = None
    if not workers:
        runner = env.create_local_runner()
        env.events.request.add_listener(lambda **kw: on_sample(to_request(raw_sample(**kw))))
    else:
        runner = env.create_master_runner(master_bind_host="127.0.0.1", master_bind_port=free_port())
        sink = WorkerSink(env, ctx, on_sample)
    if on_runner is not None:
        on_runner(runner)
    stopped = False
    try:
        if workers:
            procs = _Workers(Path(log_dir or "."))
            procs.start(workers, classes, runner.master_bind_port)
            procs.wait_connected(runner, sink, workers)
        extended_s = _drive(runner, users=users, spawn_rate=spawn_rate, duration_s=duration_s,
                            shape=shape, enough=enough, max_extra_s=max_extra_s)
        stopped = True
    finally:
        try:
            if sink is not None:
                _drain(runner, sink, graceful=stopped)
        finally:
            try:
                runner.quit()
            finally:
                exits = procs.stop() if procs is not None else {}
                if sink is not None and into is not None:
                    into["workers"] = [{**w, "exit": exits.get(w["pid"])} for w in sink.summary()]
    total = env.stats.total
    out = {"locust_requests": total.num_requests, "locust_failures": total.num_failures,
           "extended_s": round(extended_s, 2) if enough is not None else 0.0,
           "user_errors": {e["msg"][:200]: e["count"] for e in runner.exceptions.values()}}
    if sink is not None:
        out["workers"] = [{**w, "exit": exits.get(w["pid"])} for w in sink.summary()]
    return out


DRAIN_TIMEOUT_S = 30.0


def _drain(runner, sink: WorkerSink, *, graceful: bool) -> None:
    """Wait until every worker's last report (sent after its users stopped)
    is in: the run directory then holds every sample the workers took.
    On an interrupted run, stop the workers' users first (bounded: a second
    Ctrl-C or a hung worker must not keep the run from being judged)."""
    try:
        with gevent.Timeout(DRAIN_TIMEOUT_S):
            if not graceful and runner.state not in (STATE_STOPPED,):
                runner.stop()
            # Locust's own stats ride in the same reports as the samples: once
            # these are in, env.stats is final too.
            while not sink.complete(started_only=not graceful):
                gevent.sleep(0.1)
    except gevent.Timeout:
        pass   # summary() says which worker did not report its end
