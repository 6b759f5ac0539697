"""A run directory per UI test: opened when a test starts in the Locust UI,
closed, healed, judged and reported when it stops.

It writes what `msdb run` writes (harness/run/execute.py, whose pieces it
imports): run.json, requests.csv, history.jsonl, the samplers' tables, the
lag monitor's tables, faults.jsonl and faults.schedule.json (the desk's),
and, after the stop, results.json and the report.  A UI test is judged as
`smoke` (the shop mix's checks; the fault checks too when faults were
applied) and says `"ui": true` in run.json.

Judging and the report run in a separate process
(`python -m harness.cockpit.finish RUN_DIR`): pandas, matplotlib and
WeasyPrint take seconds of CPU, which would stall the Locust process's
users and its web UI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from reports.rundata import HEALTH_COLUMNS, METRICS_COLUMNS, PG_COLUMNS, REDIS_COLUMNS, REQUEST_COLUMNS
from scenarios import registry
from scenarios.workload import context

from ..checks.slo import load_slo
from ..errors import MsdbError
from ..run.children import start_lagmon
from ..run.execute import machine, pool_config, versions
from ..run.rundir import RunDir
from ..stack.backend import StackBackend, heal
from ..utc import utc_now
from .desk import FaultDesk
from .live import Live

__all__ = ["UiRun", "SCENARIO"]

SCENARIO = "smoke"      # the registry's checks a UI test is judged by


class UiRun:
    FINISH_TIMEOUT_S = 300.0

    def __init__(self, environment, backend: StackBackend, live: Live, root: Path):
        self.environment = environment
        self.backend = backend
        self.live = live
        self.rd = RunDir.create(None, "ui", Path(root))
        self.path = self.rd.path
        self.state = "running"          # running | stopping | judging | judged
        self.finisher: subprocess.Popen | None = None
        self.t0 = time.time()
        info = backend.info()
        opts = environment.parsed_options
        ctx = context(environment)
        self.info = {
            "scenario": SCENARIO, "ui": True,
            "parameters": {"users": getattr(opts, "num_users", None),
                           "spawn_rate": getattr(opts, "spawn_rate", None),
                           "run_time": getattr(opts, "run_time", None),
                           "user_classes": sorted(u.__name__ for u in environment.user_classes),
                           "host": environment.host, "seed_users": ctx.seeded_users,
                           "seed_products": len(ctx.products), "state_dir": str(backend.state_dir),
                           "target_file": info.target_file},
            "topology": info.topology,
            "stack": {"backend": info.backend, "base_port": info.base_port,
                      "target_file": info.target_file, "services": info.urls,
                      "proxy_api": info.proxy.api, "pool": pool_config(),
                      "databases": {svc: db.instance for svc, db in info.databases.items()},
                      "engines": [asdict(e) for e in info.engines]},
            "faults": [], "overrides": info.overrides,
            "versions": versions(info), "machine": machine(),
            "start": utc_now(), "end": None, "status": "running"}
        self.rd.write_json("run.json", self.info)
        self.tables = {name: self.rd.table(name, cols) for name, cols in (
            ("requests.csv", REQUEST_COLUMNS), ("metrics.csv", METRICS_COLUMNS),
            ("health.csv", HEALTH_COLUMNS), ("postgres.csv", PG_COLUMNS), ("redis.csv", REDIS_COLUMNS))}
        self.history = self.rd.history()
        self._ctx = ctx
        self._no_history = ctx.history
        ctx.history = self.history
        environment.events.request.add_listener(self._on_request)
        self.desk = FaultDesk(self.path, backend, t0=self.t0)
        live.attach(self.tables)
        self.lagmon = start_lagmon(self.path, Path(backend.state_dir))
        self.load = {"start": utc_now()}
        self._t_load = time.monotonic()

    def _on_request(self, request_type, name, response_time, response_length, response=None,
                    exception=None, start_time=None, **kw):
        self.tables["requests.csv"].row(
            round(start_time or time.time(), 4), name, request_type,
            getattr(response, "status_code", 0) or 0, round(response_time, 3), response_length or 0,
            int(exception is None), "" if exception is None else f"{type(exception).__name__}: {exception}"[:200])

    # -- the stop ----------------------------------------------------------------------

    def close(self) -> None:
        """The test stopped: heal, record, then judge and report in a process of its own."""
        if self.state != "running":
            return
        self.state = "stopping"
        env, info = self.environment, self.info
        try:
            self.environment.events.request.remove_listener(self._on_request)
            total = env.stats.total
            runner = env.runner
            self.load.update(end=utc_now(), duration_s=round(time.monotonic() - self._t_load, 2),
                             locust_requests=total.num_requests, locust_failures=total.num_failures,
                             extended_s=0.0, user_errors={e["msg"][:200]: e["count"]
                                                          for e in (runner.exceptions.values()
                                                                    if runner else [])})
            info["load"] = self.load
            self._ctx.history = self._no_history
            self.history.close()
            codes = self.desk.close()
            worst = next((c for c in codes.values() if c != 0), 0)
            info["children"] = {"nemesis": worst if codes else None, "faults": codes}
            try:
                info["healed_after_run"] = heal(self.backend, keep_overrides=True)
            except MsdbError as e:
                info["heal_error"] = str(e)
            info["children"]["lagmon"] = self.lagmon.stop()
            has_faults = bool(self.desk.specs)
            slo = load_slo(None, SCENARIO, registry.get(SCENARIO).slo_keys(has_faults=has_faults))
            info["slo"] = slo
            info["faults"] = [s.to_json() for s in self.desk.specs.values()]
            deadline = time.monotonic() + slo["healthy_after_s"]
            health = self.live.samplers["health"]
            while not health.sample_once() and time.monotonic() < deadline:
                time.sleep(0.5)
            self.live.samplers["metrics"].sample_once()
            info["status"] = "completed"
        except Exception as e:  # recorded, then judged: an error is never a silent pass
            info.update(status="error", error=f"{type(e).__name__}: {e}")
            traceback.print_exc()
        finally:
            self.live.attach(None)
            if self.lagmon.running():
                info.setdefault("children", {})["lagmon"] = self.lagmon.stop()
            self.history.close()
            for t in self.tables.values():
                t.close()
            info["end"] = utc_now()
            self.rd.write_json("run.json", info)
            self.state = "judging"
            log = open(self.path / "finish.log", "ab")
            self.finisher = subprocess.Popen(
                [sys.executable, "-m", "harness.cockpit.finish", str(self.path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
            log.close()

    def wait_finished(self, timeout: float | None = None) -> int | None:
        if self.finisher is None:
            return None
        try:
            return self.finisher.wait(timeout or self.FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    # -- reading -----------------------------------------------------------------------

    def summary(self) -> dict:
        if self.state == "judging" and self.finisher is not None and self.finisher.poll() is not None:
            self.state = "judged"
        out = {"run_dir": str(self.path), "name": self.path.name, "state": self.state,
               "start": self.info["start"], "end": self.info.get("end"),
               "status": self.info.get("status"), "verdict": None, "report": None, "checks": []}
        if self.state == "judged":
            results = self.rd.read_json("results.json") if (self.path / "results.json").exists() else None
            if results:
                out["verdict"] = results["verdict"]
                out["checks"] = [{k: c.get(k) for k in ("name", "verdict", "measured", "threshold")}
                                 for c in results["checks"]]
            if (self.path / "report.html").exists():
                out["report"] = f"/msdb/runs/{self.path.name}/report.html"
        return out
