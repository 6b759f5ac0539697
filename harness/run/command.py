"""`msdb run SCENARIO`: parameters, SLO and fault schedule checked first (exit 2
naming the bad value), then the run on a stack: the running one in
--state-dir, or a fresh one started for this run and removed afterwards.

Locust runs in library mode in this process (cli.main patched the standard
library with gevent before anything imported sockets).  Faults run in a
separate nemesis process and the stack in processes of its own, so neither
PostgreSQL nor a heal ever depends on the Locust process staying alive.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gevent

from chaos.faults import ScheduleError, parse_schedule
from scenarios import registry
from scenarios.registry import Scenario, StepLoad

from ..checks.faults import check_schedule
from ..checks.slo import load_slo
from ..durations import parse_duration
from ..errors import ConfigError, Interrupted, NoStackError, UsageError
from ..files import read_yaml
from ..stack.backend import StackBackend, fresh_stack, open_backend
from ..stack.embedded import StackOptions
from ..stack.info import StackInfo
from ..stack.target import TargetBackend, missing_for
from ..stack.topology import DEFAULT_BASE_PORT, SEED_ENGINE_PORTS
from .execute import RunParams, execute
from .matrix import run_matrix
from .rundir import RunDir

__all__ = ["run_command", "run_params", "stack_for_run", "MAX_WORKERS"]

MAX_WORKERS = 64     # Locust workers on this machine; more belong on other machines (docs/distributed.md)


def run_params(args, sc: Scenario) -> tuple[RunParams, Scenario]:
    stepped = isinstance(sc.shape, StepLoad)
    default = len(sc.shape.steps) * sc.shape.step_s if stepped else sc.duration_s
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
        steps = list(sc.shape.steps)
        if args.steps:
            try:
                steps = [int(x) for x in args.steps.split(",")]
            except ValueError:
                raise UsageError(f"--steps {args.steps!r} is not a list of user counts (5,20,80)") from None
            if not steps or any(n < 1 for n in steps):
                raise UsageError(f"--steps {args.steps!r}: every step needs at least 1 user")
        step_s = parse_duration(args.step_duration, "--step-duration") if args.step_duration \
            else sc.shape.step_s
        sc = sc.with_(shape=StepLoad(steps=tuple(steps), step_s=step_s,
                                     settle_s=min(sc.shape.settle_s, step_s / 3)))
        if not args.duration:
            duration = len(steps) * step_s
    su = sc.seed_users if args.seed_users is None else args.seed_users
    sp = sc.seed_products if args.seed_products is None else args.seed_products
    if su < 1:
        raise UsageError(f"--seed-users {su} must be at least 1")
    if sp < 3:
        raise UsageError(f"--seed-products {sp} must be at least 3 (orders take up to 3 products)")
    workers = getattr(args, "workers", None)
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers {workers} must be between 1 and {MAX_WORKERS} (omit it to run "
                         f"the users in the msdb process)")
    if getattr(args, "no_report", False) and sc.judge_reports:
        raise UsageError(f"--no-report: a check of {sc.name!r} reads its reports (the secret scan), "
                         f"so they are written before it is judged")
    if workers and sc.matrix:
        raise UsageError(f"--workers: scenario {sc.name!r} runs one child run per topology; run "
                         f"{sc.matrix_of!r} with --workers instead")
    return RunParams(scenario=sc.name, duration_s=duration, users=users, spawn_rate=rate,
                     seed_users=su, seed_products=sp, state_dir=args.state_dir,
                     topology=args.topology, base_port=args.base_port,
                     faults_file=getattr(args, "faults", None),
                     target_file=getattr(args, "target", None), workers=workers or 0,
                     quiet=bool(getattr(args, "quiet", False)),
                     report=not getattr(args, "no_report", False)), sc


def raw_schedule(p: RunParams, sc: Scenario) -> list:
    if not p.faults_file:
        return [dict(f) for f in sc.faults]
    raw = read_yaml(p.faults_file, "--faults")
    if isinstance(raw, dict) and "faults" in raw:
        raw = raw["faults"]
    if not isinstance(raw, list):
        raise ConfigError(f"--faults {p.faults_file!r}: expected a list of faults")
    return raw


def schedule_for(raw: list, backend: StackBackend, duration_s: float, where: str) -> list:
    """The schedule against this stack: targets must be its proxies and parts
    (`@orders-instance` names the instance holding order_service_db)."""
    info = backend.info()
    orders_instance = info.databases["orders"].instance if "orders" in info.databases \
        else "@orders-instance"    # a targets file without databases: named as unknown below
    items = [{**item, "target": orders_instance} if isinstance(item, dict)
             and item.get("target") == "@orders-instance" else item for item in raw]
    # The proxy is not a process fault's target: every heal needs it.
    parts = {n for n in backend.actions().names() if n != "proxy"}
    try:
        return parse_schedule(items, duration_s=duration_s, proxies=info.proxy.names, parts=parts)
    except ScheduleError as e:
        seed_only = {*SEED_ENGINE_PORTS, "catalog-mongo", "search-es", "bus-kafka"}
        wanted = {i.get("target") for i in items if isinstance(i, dict)}
        hint = "; it is part of a stack started with --engines seed (msdb up --engines seed; " \
               "with no stack running, msdb run starts one itself for the scenarios that need it)" \
            if wanted & seed_only - info.proxy.names - parts else ""
        raise ConfigError(f"{where}: {e}{hint}") from None


@contextmanager
def stack_for_run(p: RunParams, *, keep: bool, engines: str | None = None,
                  tls: bool = False, fresh_tls: bool = False,
                  fresh_engines: str | None = None) -> Iterator[StackBackend]:
    """The deployment of a targets file, the stack running in the state dir,
    or a fresh one for this run alone (stopped and removed afterwards unless
    `keep`).  `tls`: the stack must run with TLS; `fresh_tls`: a fresh one is
    started with TLS (the scenario's wish), a running one is used as it is;
    `fresh_engines` likewise for the engines."""
    if p.target_file:
        backend = TargetBackend.open(p.target_file)   # its StackInfo in a scratch dir
        try:
            yield backend
        finally:
            backend.down()      # removes the scratch dir; the deployment is not ours to stop
        return
    state = Path(p.state_dir)
    try:
        info = StackInfo.load(state)
    except NoStackError:
        info = None
    if info is not None:
        backend = open_backend(state)
        if p.topology and info.topology != p.topology:
            raise UsageError(f"--topology {p.topology!r}: the running stack in {p.state_dir} is "
                             f"{info.topology!r}; run `msdb down` first or omit --topology")
        if engines and info.backend == "embedded" and StackOptions.of(info).engines != engines:
            raise UsageError(f"--engines {engines!r}: the running stack in {p.state_dir} runs the "
                             f"{StackOptions.of(info).engines!r} engines; run `msdb down` first "
                             f"or omit --engines")
        if tls and not info.tls:
            raise UsageError(f"--tls: the running stack in {p.state_dir} runs without TLS; run "
                             f"`msdb down` first, or omit --tls")
        actions = backend.actions()
        if any(actions.running(n) for n in actions.names()):
            yield backend     # a run heals it first: a part that died is started again
            return
    opts = StackOptions(state_dir=state, topology=p.topology or "single",
                        base_port=p.base_port or DEFAULT_BASE_PORT,
                        engines=engines or fresh_engines or "embedded", tls=tls or fresh_tls)
    print(f"starting a fresh embedded stack{' with the seed engines' if opts.engines == 'seed' else ''}"
          f"{' with TLS' if opts.tls else ''} "
          f"in {state} (removed after the run"
          f"{'' if not keep else '; --keep-stack keeps it'}) ...", flush=True)
    with fresh_stack(opts, keep=keep) as backend:
        yield backend


def _target_args(args, sc: Scenario) -> None:
    """--target runs against a deployment msdb does not start: the options
    that choose or start a stack of msdb's own make no sense with it."""
    for flag, value in (("--topology", args.topology), ("--base-port", args.base_port),
                        ("--keep-stack", args.keep_stack or None),
                        ("--engines", getattr(args, "engines", None)),
                        ("--tls", getattr(args, "tls", False) or None)):
        if value is not None:
            raise UsageError(f"{flag}: --target runs against your deployment, which msdb neither "
                             f"chooses nor starts; drop {flag}")
    if sc.matrix:
        raise UsageError(f"--target: scenario {sc.name!r} compares topologies on fresh stacks of "
                         f"msdb's own; run {sc.matrix_of!r} against your deployment instead")


def _interrupts() -> list:
    """SIGINT/SIGTERM as a KeyboardInterrupt in the main greenlet.

    A plain Python signal handler raises in whichever greenlet happens to run
    (a Locust user, the sampler), which kills that greenlet and leaves the run
    waiting forever.  gevent runs these callbacks in the hub; throwing into
    the hub's parent (the main greenlet) is how gevent itself delivers Ctrl-C.
    """
    def interrupt(signum: int) -> None:
        gevent.get_hub().parent.throw(Interrupted(signum))
    return [gevent.signal_handler(s, interrupt, s) for s in (signal.SIGINT, signal.SIGTERM)]


def run_command(args) -> int:
    try:
        sc = registry.get(args.scenario)
    except registry.UnknownScenario as e:
        raise UsageError(str(e)) from None
    p, sc = run_params(args, sc)
    if p.target_file:
        _target_args(args, sc)
    if sc.matrix:
        if p.faults_file:
            raise UsageError(f"--faults: scenario {sc.name!r} compares topologies on fresh stacks; "
                             f"run {sc.matrix_of!r} with --faults instead")
        slo = load_slo(args.slo, sc.name, sc.slo_keys(has_faults=False))
        return run_matrix(p, sc, slo, RunDir.create(args.out, sc.name), slo_path=args.slo)
    raw = raw_schedule(p, sc)
    slo = load_slo(args.slo, sc.name, sc.slo_keys(has_faults=bool(raw)))
    check_schedule(raw, p.duration_s, slo, p.faults_file or f"scenario {sc.name}")
    RunDir.check_out(args.out)
    handlers = _interrupts()
    try:
        with stack_for_run(p, keep=args.keep_stack, engines=getattr(args, "engines", None),
                           tls=getattr(args, "tls", False), fresh_tls=sc.tls,
                           fresh_engines=sc.engines) as backend:
            if p.target_file:
                why = missing_for(backend.info(), raw, sc.stack_needs(), sc.service_env)
                if why:
                    raise ConfigError(f"--target {p.target_file!r}: scenario {sc.name!r} {why}")
            schedule = schedule_for(raw, backend, p.duration_s, p.faults_file or f"scenario {sc.name}")
            # Only now, with the stack reached and the schedule valid: a run that
            # never started leaves no empty run directory behind.
            return execute(p, sc, slo, RunDir.create(args.out, sc.name), schedule, backend)
    finally:
        for h in handlers:
            h.cancel()
