"""The load checks of a distributed run (`--workers N`, issue 14): a Locust
worker that died mid-run, or whose samples did not all arrive, fails
`workers-complete`."""

from __future__ import annotations

from tests.rundirs import make_run

T0 = 1_790_000_000.0


def test_a_worker_that_died_mid_run_fails_workers_complete(tmp_path):
    from harness.checks.load import LoadChecks
    from tests.rundirs import req
    slo = {"healthy_after_s": 10, "min_samples_p95": 20, "min_samples_p99": 100}
    w_ok = {"id": "w1", "pid": 11, "requests": 500, "history": 40, "complete": True, "exit": 0}
    w_dead = {"id": "w2", "pid": 12, "requests": 120, "history": 9, "complete": False, "exit": -9,
              "lost_requests": 37, "lost_history": 2}

    def verdict(workers, name):
        run = make_run(tmp_path / name, requests=[req(T0 + i, 10) for i in range(5)],
                       info={"load": {"duration_s": 5, "workers": workers}})
        checks, _ = LoadChecks(strict=False)(run, slo)
        return {c.name: c for c in checks}

    assert verdict([w_ok, {**w_ok, "id": "w2"}], "a")["workers-complete"].verdict == "pass"
    bad = verdict([w_ok, w_dead], "b")["workers-complete"]
    assert bad.verdict == "fail" and bad.measured == 1
    assert "37 request sample(s)" in next(iter(bad.details["incomplete"].values()))
    assert "workers-complete" not in verdict([], "c")      # not a distributed run


_WIRE = r"""
import locust  # first: gevent patches before anything imports ssl
from types import SimpleNamespace
from harness.run.locust_driver import WorkerSink, raw_sample, to_request
from harness.run.worker import WorkerShipper
from scenarios.workload import WorkloadContext

class Hook:
    def __init__(self):
        self.fns = []
    def add_listener(self, fn):
        self.fns.append(fn)

T0 = 1790000000.0
events = SimpleNamespace(request=Hook(), report_to_master=Hook(), test_start=Hook(),
                         test_stop=Hook(), worker_report=Hook())
runner = SimpleNamespace(register_message=lambda *a: None, get_worker_index=lambda cid: 0)
env = SimpleNamespace(events=events, runner=runner)
ship = WorkerShipper(env)
got = []
sink = WorkerSink(env, WorkloadContext(), got.append)
calls = [dict(request_type="GET", name="GET /x", response_time=1.5, response_length=2,
              response=SimpleNamespace(status_code=200), exception=None, start_time=T0),
         dict(request_type="POST", name="POST /y", response_time=30.25, response_length=None,
              response=None, exception=ValueError("boom"), start_time=T0 + 1, context={})]
for kw in calls:
    ship.on_request(**kw)
data = {}
ship.on_report("c1", data)
sink.on_report("c1", data)
assert got == [to_request(raw_sample(**kw)) for kw in calls], got
assert got[1].error == "ValueError: boom" and got[1].status == 0 and not got[1].ok, got
row = sink.summary()[0]
assert row["requests"] == 2 and "lost_requests" not in row, row
# Every field survives the packing, for many requests and names, and the
# buffer starts afresh after a report.
import random
rnd = random.Random(7)
many = [dict(request_type=rnd.choice(["GET", "POST"]), name=f"/n{rnd.randrange(40)}",
             response_time=rnd.random() * 900, response_length=rnd.randrange(10**9),
             response=SimpleNamespace(status_code=rnd.choice([200, 201, 409, 503])),
             exception=None if rnd.random() < 0.9 else RuntimeError(f"e{rnd.random()}"),
             start_time=T0 + rnd.random() * 100) for _ in range(500)]
for kw in many:
    ship.on_request(**kw)
del got[:]
data = {}
ship.on_report("c1", data)
assert len(ship.samples) == 0
sink.on_report("c1", data)
assert got == [to_request(raw_sample(**kw)) for kw in many]
assert sink.summary()[0]["requests"] == 502
# A worker of another msdb (another wire format) is named, and its samples counted as lost.
data["msdb"]["samples"]["format"] = "msdb-samples/1"
data["msdb"]["sent_requests"] += 500
sink.on_report("c1", data)
row = sink.summary()[0]
assert row["lost_requests"] == 500 and "msdb-samples/1" in row["problem"], row
print("ok")
"""


def test_samples_travel_from_worker_to_master_field_for_field():
    """The worker's flat wire format (issue 14's hook cost) read back by the
    master: every sample, in order, counted once.  In a subprocess: Locust
    must patch with gevent before anything imports ssl."""
    import subprocess
    import sys
    from pathlib import Path
    r = subprocess.run([sys.executable, "-c", _WIRE], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]

