"""Catch-up after a bus outage: not before the changes the outage held back
reached the target.

After a broker restart the consumers' backlog reads 0 at once (the relay has
not re-published yet), while the changes committed during the outage are
still on their way.  Seen on the seed engines: "caught up 0.36 s after the
heal", and those changes' 7-s lags then counted as lag outside the fault."""

from __future__ import annotations

import csv
import json

from harness.checks.lag import cdc_metrics
from harness.utc import utc
from reports.rundata import Run

T0 = 1_800_000_000.0
FAULT = (T0 + 10, T0 + 20)          # the broker down from 10 s to 20 s


def _run(tmp_path, held_until: float):
    """Events every 0.5 s for 40 s, each applied 0.1 s after its commit,
    except those committed during the fault: applied at `held_until`.
    The backlog reads 0 from the fault's end on."""
    (tmp_path / "run.json").write_text(json.dumps({"scenario": "broker-restart"}))
    (tmp_path / "faults.jsonl").write_text(json.dumps(
        {"name": "kill-kafka-1", "kind": "kill", "target": "kafka", "params": {},
         "start": utc(FAULT[0]), "end": utc(FAULT[1]), "status": "healed"}) + "\n")
    with open(tmp_path / "cdc_lag.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["consumer", "boot", "i", "table", "lsn", "commit_ms", "applied_ms", "lag_ms"])
        for i in range(80):
            c = T0 + 0.5 * i
            a = held_until if FAULT[0] <= c <= FAULT[1] else c + 0.1
            w.writerow(["search", "b", i, "products", i, c * 1000, a * 1000, (a - c) * 1000])
    with open(tmp_path / "cdc_backlog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "consumer", "source", "published", "backlog", "pending", "up"])
        for i in range(40):
            t = T0 + i
            w.writerow([t, "search", "catalog", i, 5 if FAULT[0] <= t < FAULT[1] else 0, 0, 1])
    return Run(tmp_path)


def test_catch_up_waits_for_the_changes_the_outage_held_back(tmp_path):
    m = cdc_metrics(_run(tmp_path, held_until=FAULT[1] + 7.5), ("kafka",))["cdc_consumers"]["search"]
    # the backlog read 0 at the heal, but the held changes landed 7.5 s later
    assert m["catch_up_s"] == 8.0, m
    # and only the fault's own changes are left out of the steady lag
    assert abs(m["lag_p99_outside_fault_ms"] - 100.0) < 0.01, m


def test_a_prompt_catch_up_is_measured_as_prompt(tmp_path):
    m = cdc_metrics(_run(tmp_path, held_until=FAULT[1] + 0.2), ("kafka",))["cdc_consumers"]["search"]
    assert m["catch_up_s"] == 1.0, m
