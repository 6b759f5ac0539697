"""noisy-neighbour's check (harness.checks.capacity.Neighbour): it judges the
probe in a process of its own (probe.csv) and reports Locust's in-process
probe beside it; runs without a probe.csv are judged on Locust's probe."""

from __future__ import annotations

import csv

from harness.checks.capacity import PROBE, Neighbour
from reports.rundata import PROBE_FILE, REQUEST_COLUMNS, Request
from tests.rundirs import make_run

SLO = {"neighbour_p95_ratio_max": 10}
PHASES = [{"phase": "baseline", "start": 0.0, "end": 10.0}, {"phase": "noisy", "start": 10.0, "end": 20.0}]


def probes(alone_ms: float, beside_ms: float, n: int = 40) -> list[Request]:
    return ([Request(i * 10 / n, PROBE, "GET", 200, alone_ms, 100, True, "") for i in range(n)]
            + [Request(10 + i * 10 / n, PROBE, "GET", 200, beside_ms, 100, True, "") for i in range(n)])


def write_probe(path, rows: list[Request]) -> None:
    with open(path / PROBE_FILE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_COLUMNS)
        for r in rows:
            w.writerow([r.time, r.name, r.method, r.status, r.response_ms, r.bytes, int(r.ok), r.error])


def judge(tmp_path, *, locust: list[Request], own: list[Request] | None):
    run = make_run(tmp_path, scenario="noisy-neighbour-one", requests=locust,
                   files={"phases.json": PHASES})
    if own is not None:
        write_probe(tmp_path, own)
    (check,), metrics = Neighbour()(run, SLO)
    return check, metrics


def test_the_probe_in_its_own_process_is_judged_and_locusts_reported_beside_it(tmp_path):
    # Locust's probe saw 15x (its own event loop's queue); the probe process 3x.
    check, metrics = judge(tmp_path, locust=probes(2.0, 30.0), own=probes(2.0, 6.0))
    assert (check.verdict, check.measured) == ("pass", 3.0)
    assert check.details["probe"] == "own process"
    assert check.details["locust_probe_p95_ratio"] == 15.0
    assert metrics["probe_requests"] == [40, 40]


def test_the_check_fails_when_the_probe_process_sees_the_service_suffer(tmp_path):
    check, _ = judge(tmp_path, locust=probes(2.0, 4.0), own=probes(2.0, 30.0))
    assert (check.verdict, check.measured) == ("fail", 15.0)


def test_a_run_without_a_probe_process_is_judged_on_locusts_probe(tmp_path):
    check, metrics = judge(tmp_path, locust=probes(2.0, 30.0), own=None)
    assert (check.verdict, check.measured, check.details["probe"]) == ("fail", 15.0, "locust")
    assert "locust_probe_p95_ratio" not in metrics


def test_too_few_probe_samples_is_unknown(tmp_path):
    check, _ = judge(tmp_path, locust=probes(2.0, 4.0), own=probes(2.0, 4.0, n=10))
    assert check.verdict == "unknown" and "too few probe samples (10 alone, 10" in check.details["reason"]
