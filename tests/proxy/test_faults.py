"""Fault schedules as data, the journal, and the nemesis against a real proxy."""

from __future__ import annotations

import threading
import time

import pytest

from chaos.faults import FaultSpec, Journal, ScheduleError, parse_schedule
from chaos.nemesis import Nemesis


def test_schedule_parses_times_shares_and_toxic_attributes():
    f = parse_schedule([{"kind": "latency", "target": "orders-db", "at": "30s", "for": "1.5min",
                         "latency": 200, "jitter": 50},
                        {"kind": "down", "target": "catalog-db", "at": "25%", "for": "500ms"},
                        {"kind": "kill", "target": "pg-main", "at": 10, "for": 5, "name": "crash"}],
                       duration_s=200, proxies={"orders-db", "catalog-db"}, parts={"pg-main"})
    assert (f[0].at_s, f[0].for_s, f[0].params) == (30, 90, {"latency": 200, "jitter": 50,
                                                            "stream": "downstream", "toxicity": 1.0})
    assert (f[1].at_s, f[1].for_s, f[1].network) == (50, 0.5, True)
    assert f[2].name == "crash" and not f[2].network
    assert f[0].name == "latency-orders-db-1"


@pytest.mark.parametrize("item,needle", [
    ({"kind": "latencyy", "target": "x", "at": 1, "for": 1}, "faults[1].kind"),
    ({"kind": "latency", "at": 1, "for": 1}, "faults[1].target"),
    ({"kind": "latency", "target": "nope", "at": 1, "for": 1}, "no proxy named 'nope'"),
    ({"kind": "kill", "target": "nope", "at": 1, "for": 1}, "no part named 'nope'"),
    ({"kind": "latency", "target": "db", "for": 1}, "faults[1].at: missing"),
    ({"kind": "latency", "target": "db", "at": "soon", "for": 1}, "faults[1].at: 'soon'"),
    ({"kind": "latency", "target": "db", "at": 1, "for": 1, "latency": -5}, "faults[1].latency"),
    ({"kind": "latency", "target": "db", "at": 1, "for": 1, "latency": 1.5}, "faults[1].latency"),
    ({"kind": "latency", "target": "db", "at": 1, "for": 1, "rate": 5}, "faults[1].rate: unknown field"),
    ({"kind": "latency", "target": "db", "at": 1, "for": 1, "stream": "up"}, "faults[1].stream"),
    ({"kind": "latency", "target": "db", "at": 1, "for": 1, "toxicity": 2}, "faults[1].toxicity"),
    ({"kind": "latency", "target": "db", "at": 500, "for": 1}, "after the run's end"),
])
def test_schedule_errors_name_the_fault_and_field(item, needle):
    with pytest.raises(ScheduleError) as e:
        parse_schedule([item], duration_s=100, proxies={"db"}, parts={"pg-main"})
    assert needle in str(e.value)


def test_journal_keeps_the_last_record_of_each_fault(tmp_path):
    from chaos.faults import FaultRecord
    j = Journal(tmp_path / "faults.jsonl")
    r = FaultRecord(name="a", kind="down", target="x", params={}, scheduled_at_s=1, scheduled_for_s=2,
                    start="2026-01-01T00:00:00.000Z", status="active")
    j.write(r)
    r.end, r.status = "2026-01-01T00:00:02.000Z", "healed"
    j.write(r)
    assert [x["status"] for x in Journal.read(tmp_path / "faults.jsonl")] == ["healed"]
    assert len((tmp_path / "faults.jsonl").read_text().splitlines()) == 2


class FakeProcesses:
    """A unit-test fake of the stack's process actions (the real one is tested on the stack)."""
    def __init__(self):
        self.calls = []

    def kill(self, part): self.calls.append(("kill", part))
    def pause(self, part): self.calls.append(("pause", part))
    def resume(self, part): self.calls.append(("resume", part))
    def stop(self, part): self.calls.append(("stop", part))
    def start(self, part): self.calls.append(("start", part))


@pytest.mark.proxy
def test_nemesis_injects_and_heals_on_schedule(clean_proxies, echo, tmp_path):
    s = clean_proxies
    s.create("db", upstream=echo.address)
    procs = FakeProcesses()
    sched = [FaultSpec(name="slow", kind="latency", target="db", at_s=0.2, for_s=0.6,
                       params={"latency": 100, "stream": "downstream", "toxicity": 1.0}),
             FaultSpec(name="off", kind="down", target="db", at_s=1.0, for_s=0.4),
             FaultSpec(name="crash", kind="kill", target="pg-main", at_s=0.1, for_s=0.3)]
    nem = Nemesis(sched, proxies=s, processes=procs, journal=Journal(tmp_path / "f.jsonl"))
    seen = {}

    def observe():
        time.sleep(0.5)
        seen["during"] = set(s.toxics("db"))
        time.sleep(0.7)
        seen["down"] = not s.proxies()["db"].enabled
    t = threading.Thread(target=observe)
    t.start()
    nem.run()
    t.join()
    assert seen == {"during": {"slow"}, "down": True}
    assert s.toxics("db") == {} and s.proxies()["db"].enabled
    assert procs.calls == [("kill", "pg-main"), ("start", "pg-main")]
    final = {r["name"]: r for r in Journal.read(tmp_path / "f.jsonl")}
    assert {r["status"] for r in final.values()} == {"healed"}
    for r in final.values():
        assert r["start"] < r["end"]


@pytest.mark.proxy
def test_nemesis_heals_everything_when_stopped_early(clean_proxies, echo, tmp_path):
    s = clean_proxies
    s.create("db", upstream=echo.address)
    sched = [FaultSpec(name="long", kind="latency", target="db", at_s=0.0, for_s=60,
                       params={"latency": 100, "stream": "downstream", "toxicity": 1.0}),
             FaultSpec(name="off", kind="down", target="db", at_s=0.0, for_s=60),
             FaultSpec(name="later", kind="down", target="db", at_s=30, for_s=1)]
    nem = Nemesis(sched, proxies=s, processes=None, journal=Journal(tmp_path / "f.jsonl"))
    threading.Timer(0.5, nem.stop).start()
    t0 = time.monotonic()
    nem.run()
    assert time.monotonic() - t0 < 10
    assert s.toxics("db") == {} and s.proxies()["db"].enabled
    final = {r["name"]: r["status"] for r in Journal.read(tmp_path / "f.jsonl")}
    assert final == {"long": "healed", "off": "healed", "later": "skipped"}


@pytest.mark.proxy
def test_a_fault_that_cannot_start_is_journalled_as_failed(clean_proxies, tmp_path):
    nem = Nemesis([FaultSpec(name="ghost", kind="latency", target="no-such-proxy", at_s=0, for_s=0.1,
                             params={"latency": 1, "stream": "downstream", "toxicity": 1.0})],
                  proxies=clean_proxies, processes=None, journal=Journal(tmp_path / "f.jsonl"))
    records = nem.run()
    assert records[0].status == "failed" and "not found" in records[0].error.lower()
