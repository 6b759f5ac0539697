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
