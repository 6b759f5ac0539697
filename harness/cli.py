"""The `msdb` command line.

    msdb up [--backend embedded|compose] [--topology single|grouped|dedicated] [--base-port N]
            [--fresh] [--foreground]
    msdb down [--purge]
    msdb status
    msdb scenarios
    msdb proxy [--host 127.0.0.1] [--port 8474] [--config FILE]
    msdb run SCENARIO [--duration 30s] [--users 20] [--out DIR] [--target FILE] [--workers N] [--quiet]
    msdb check RUN_DIR [--slo FILE] [--json]
    msdb report RUN_DIR... [--index DIR]
    msdb suite nightly [--quick] [--out DIR] [--target FILE]
    msdb target export [--out FILE]
    msdb part kill|pause|resume|stop|start|restart|running PART
    msdb drill restore|pitr|masked|migration [--db orders] [--wal archive|stream|stream-sync|all] ...

Exit codes: 0 every check passed, 1 a check failed (or a part is
unhealthy), 2 usage or configuration error, 3 infrastructure error, 130
interrupted by Ctrl-C, 143 by SIGTERM (what was recorded is still judged
and reported).

`run` drives Locust in-process, so gevent must patch the standard library
before anything else imports sockets or ssl: that is why this module imports
each command's modules inside its function (which also keeps `--help` fast),
and nowhere else in msdb does an import wait for gevent.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

LOAD_COMMANDS = ("run",)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors, as our contract wants; keep its message.
    Help is wrapped to the terminal, at most 80 columns (harness.term)."""

    def _get_formatter(self):
        from .term import width
        return self.formatter_class(prog=self.prog, width=width())


def _add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=".msdb", metavar="DIR",
                   help="where the stack keeps its state and stack.json (default: .msdb)")


def _add_layout(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    from .stack.topology import DEFAULT_BASE_PORT, TOPOLOGIES
    p.add_argument("--topology", default="single" if defaults else None, choices=TOPOLOGIES,
                   help="PostgreSQL layout (seed options 1/2/3; default: single"
                        + ("" if defaults else ", or whatever stack is running") + ")")
    p.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT if defaults else None,
                   metavar="N", help=f"first port of the 70-port block (default: {DEFAULT_BASE_PORT})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="msdb", description="Load and resilience verification for microservice "
                "databases.  Exit codes: 0 pass, 1 check failed, 2 usage/config error, "
                "3 infrastructure error, 130/143 interrupted (SIGINT/SIGTERM).")
    p.add_argument("--version", action="version", version="msdb 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    s = sub.add_parser("up", help="start the stack and wait until every part is healthy")
    _add_state(s)
    _add_layout(s)
    s.add_argument("--backend", default="embedded", choices=("embedded", "compose"),
                   help="embedded (PyPI only, default) or compose (the seed's real engines in "
                        "docker-compose.yml; needs a Docker engine)")
    s.add_argument("--engines", default="embedded", choices=("embedded", "seed"),
                   help="embedded (default): PostgreSQL JSONB, PostgreSQL full-text search and "
                        "Redis Streams for the catalog, search and the bus; seed: stand-ins that "
                        "speak MongoDB, Elasticsearch and Kafka (the seed-engines extra; "
                        "docs/engines.md)")
    s.add_argument("--fresh", action="store_true", help="wipe the state dir first")
    s.add_argument("--tls", action="store_true",
                   help="TLS 1.3 on every database link, verify-full against the stack's own CA "
                        "(needs Debian's postgresql-15; docs/security.md)")
    s.add_argument("--foreground", action="store_true",
                   help="stay attached; Ctrl-C stops the stack cleanly")
    s.add_argument("--archive-timeout", default="15min", metavar="DURATION",
                   help="PostgreSQL archive_timeout (seed §7.1: 15min)")

    s = sub.add_parser("down", help="stop every process of the stack, by PID")
    _add_state(s)
    s.add_argument("--purge", action="store_true", help="also delete the state dir and all data")

    s = sub.add_parser("status", help="health of each part; exit 1 if any part is unhealthy, "
                       "3 if no stack runs")
    _add_state(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_target(s)

    sub.add_parser("scenarios", help="list the scenarios `msdb run` knows")

    s = sub.add_parser("suite", help="run a matrix of scenarios on a fresh stack (junit.xml, index, PDF)")
    s.add_argument("suite", help="suite name from scenarios/suites.yaml (nightly, quick)")
    s.add_argument("--quick", action="store_true", help="the short matrix, for pull-request CI")
    s.add_argument("--out", default=None, metavar="DIR", help="suite directory (default: runs/suite-...)")
    s.add_argument("--slo", default=None, metavar="FILE", help="SLO thresholds for every run")
    s.add_argument("--suites", default=None, metavar="FILE", help="suites file (default: scenarios/suites.yaml)")
    s.add_argument("--state-dir", default=".msdb-suite", metavar="DIR",
                   help="state dir of the suite's own fresh stack (default: .msdb-suite)")
    s.add_argument("--base-port", type=int, default=15500, metavar="N",
                   help="port block of the suite's stack (default: 15500)")
    s.add_argument("--topology", default="single", choices=("single", "grouped", "dedicated"))
    s.add_argument("--keep-stack", action="store_true", help="leave the suite's stack running")
    _add_quiet(s)
    _add_target(s)

    s = sub.add_parser("drill", help="backup/restore drills on a fresh stack of their own: achieved "
                       "RPO and RTO (restore), point-in-time recovery (pitr), masked copy (masked)")
    s.add_argument("drill", choices=("restore", "pitr", "masked", "migration"), help="which drill")
    s.add_argument("--plan", default=None, metavar="NAME|FILE",
                   help="migration: the plan to run under load (scenarios/migrations/NAME.yaml: "
                        "unsafe, expand-contract; or a file)")
    s.add_argument("--db", default=None, metavar="NAME",
                   help="database to back up and restore: orders or users (default: orders; "
                        "masked: users)")
    s.add_argument("--wal", default="archive", metavar="MODE",
                   help="WAL strategy: archive, stream, stream-sync, a comma list, or all "
                        "(default: archive)")
    s.add_argument("--archive-timeout", default="15min", metavar="DURATION",
                   help="PostgreSQL archive_timeout (seed §7.1: 15min)")
    s.add_argument("--from", dest="source", choices=("primary", "geo"), default="primary",
                   help="restore: from this region's backups (primary), or from the geo copy "
                        "after the disaster also destroyed this region's backups and WAL archive "
                        "(geo; seed §7.1's copy in another region)")
    s.add_argument("--geo-key-file", default=None, metavar="FILE",
                   help="restore: the geo copy's AES-256 key, 32 bytes in base64 (`openssl rand "
                        "-base64 32`); default: $MSDB_GEO_KEY, else one generated into the state dir")
    s.add_argument("--restore-key-file", default=None, metavar="FILE",
                   help="restore --from geo: decrypt with this key instead (drills a wrong key: exit 3)")
    s.add_argument("--disaster-after", default="60s", metavar="DURATION",
                   help="writes run this long before the disaster (default: 60s)")
    s.add_argument("--target-time", default=None, metavar="T",
                   help="recover to T (ISO 8601, UTC if no zone) or -DURATION before the disaster; "
                        "default: the latest point (write --target-time=-10s for the relative form)")
    s.add_argument("--writers", type=int, default=4, metavar="N", help="concurrent writers (default: 4)")
    s.add_argument("--keep-last", type=int, default=7, metavar="N",
                   help="retention: keep the newest N base backups (default: 7)")
    s.add_argument("--keep-days", type=float, default=7.0, metavar="DAYS",
                   help="retention: keep base backups younger than DAYS (default: 7)")
    s.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/<time>-drill-...)")
    s.add_argument("--slo", default=None, metavar="FILE", help="SLO file (rpo/rto: scenarios/slo.yaml)")
    s.add_argument("--no-pdf", action="store_true", help="HTML report only")
    s.add_argument("--keep-stack", action="store_true",
                   help="restore: leave the drill's stack and the restored instance running "
                        "(then `msdb down --state-dir DIR --purge`)")
    s.add_argument("--state-dir", default=".msdb-drill", metavar="DIR",
                   help="state dir of the drill's own fresh stack, purged afterwards (default: .msdb-drill)")
    s.add_argument("--base-port", type=int, default=15700, metavar="N",
                   help="port block of the drill's stack (default: 15700)")
    _add_quiet(s)

    s = sub.add_parser("check", help="judge a run directory again (the same checks as its run; "
                       "exit 1 if a check fails)")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of `msdb run` or `msdb drill`")
    s.add_argument("--slo", default=None, metavar="FILE",
                   help="thresholds to judge against (default: the SLO the run recorded)")
    s.add_argument("--json", action="store_true", help="print results.json instead of the table")
    s.add_argument("--write", action="store_true",
                   help="also replace the run directory's results.json (and its report)")

    s = sub.add_parser("report", help="write report.html and report.pdf for run directories")
    s.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories")
    s.add_argument("--no-pdf", action="store_true", help="HTML only")
    s.add_argument("--index", default=None, metavar="DIR",
                   help="also write DIR/index.html linking every run under DIR")

    s = sub.add_parser("proxy", help="run the Toxiproxy-compatible fault proxy in the foreground")
    s.add_argument("--host", default="127.0.0.1", help="API host (loopback only; default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8474, help="API port (default 8474)")
    s.add_argument("--config", default=None, metavar="FILE",
                   help="JSON array of proxies to create at start (Toxiproxy's -config format)")
    s.add_argument("--seed", type=int, default=None, help="seed for toxicity rolls and jitter")

    s = sub.add_parser("run", help="run a scenario against the stack and print a verdict")
    s.format_help = _with_scenarios(s.format_help)
    s.add_argument("scenario", help="scenario name (listed below, and by `msdb scenarios`)")
    _add_state(s)
    _add_layout(s, defaults=False)
    s.add_argument("--duration", default=None, metavar="DURATION", help="load duration (e.g. 30s)")
    s.add_argument("--users", type=int, default=None, metavar="N", help="concurrent Locust users")
    s.add_argument("--spawn-rate", type=float, default=None, metavar="R", help="users started per second")
    s.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/<time>-<scenario>)")
    s.add_argument("--slo", default=None, metavar="FILE", help="SLO thresholds (default: scenarios/slo.yaml)")
    s.add_argument("--steps", default=None, metavar="N,N,...",
                   help="user counts of a stepped load (capacity), e.g. 5,20,80")
    s.add_argument("--step-duration", default=None, metavar="DURATION", help="how long each step holds")
    s.add_argument("--faults", default=None, metavar="FILE",
                   help="fault schedule (YAML list: kind, target, at, for, ...) replacing the scenario's")
    s.add_argument("--seed-users", type=int, default=None, metavar="N", help="users to seed")
    s.add_argument("--seed-products", type=int, default=None, metavar="M", help="products to seed")
    s.add_argument("--keep-stack", action="store_true",
                   help="leave a stack this run started running afterwards")
    s.add_argument("--engines", default=None, choices=("embedded", "seed"),
                   help="engines of a stack this run starts (default: embedded; docs/engines.md)")
    s.add_argument("--tls", action="store_true",
                   help="a stack this run starts runs TLS 1.3 on every database link "
                        "(Debian's postgresql-15; docs/security.md)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the users in N Locust worker processes under a Locust master "
                        "(Locust's distributed mode; default: in the msdb process)")
    s.add_argument("--no-report", action="store_true",
                   help="write results.json but not report.html/report.pdf (write them later with "
                        "`msdb report RUN_DIR`; `msdb suite` does, beside its next run)")
    _add_quiet(s)
    _add_target(s)

    s = sub.add_parser("target", help="targets files: `msdb target export` writes one for the "
                       "running stack (docs/targets.md)")
    s.add_argument("action", choices=("export",), help="export: describe the running stack")
    _add_state(s)
    s.add_argument("--out", default="msdb-target.yaml", metavar="FILE",
                   help="where to write it (default: msdb-target.yaml; - for stdout)")

    s = sub.add_parser("part", help="a process action on one part of the running stack (what a "
                       "process fault does; an exported targets file calls it)")
    s.add_argument("action", choices=("kill", "pause", "resume", "stop", "start", "restart", "running"),
                   help="running: exit 0 if the part runs, 1 if not")
    s.add_argument("part", help="a part of the stack (`msdb status` lists them)")
    _add_state(s)
    return p


def _with_scenarios(format_help):
    """`msdb run --help` ends with the scenarios and their defaults.  The
    registry is imported only when help is printed: it pulls in the checks."""
    def formatted() -> str:
        from scenarios import registry
        lines = ["", "scenarios (default time, users):"]
        for sc in registry.all():
            own = f"; starts {len(sc.matrix)} stacks of its own" if sc.matrix else ""
            lines.append(f"  {sc.name:<20} {sc.default_duration_s():>4g}s  {sc.users:>3} users{own}")
        return format_help() + "\n".join(lines) + "\n"
    return formatted


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no live progress (on a terminal a line redrawn each second, "
                        "otherwise a line every 10 s)")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, metavar="FILE",
                   help="run against your own deployment, described by a targets file "
                        "(docs/targets.md); msdb starts nothing of its own")


def _print_table(rows: list[list], headers: list[str], right: tuple[int, ...] = ()) -> None:
    from .term import table
    print("\n".join(table(rows, headers, right=right)))


def _short(url: str) -> str:
    return url.removeprefix("http://")


def print_endpoints(info) -> None:
    rows = []
    for part in info.parts:
        pid = (part.proc or {}).get("pid", "-")
        if part.kind == "postgres" or part.kind == "postgres-replica":
            inst = info.instance(part.name)
            what = f"postgres {inst.role}"
            endpoint = f"{part.endpoint} ({', '.join(inst.services)})"
        elif part.kind == "proxy":
            px = info.proxy.proxies
            what = "fault proxy API"
            endpoint = (f"{_short(info.proxy.api)} ({len(px)} links: {px[0].listen}.."
                        f"{px[-1].listen.rsplit(':', 1)[1]})")
        else:
            what, endpoint = part.kind, _short(part.endpoint)
        rows.append([part.name, what, pid, endpoint])
    _print_table(rows, ["part", "kind", "pid", "endpoint"], right=(2,))
    print(f"\nstack.json: {Path(info.state_dir) / 'stack.json'}  (topology {info.topology})")


def cmd_up(args) -> int:
    from .durations import parse_duration
    from .stack import procs
    from .stack.embedded import StackOptions
    from .stack.embedded_backend import EmbeddedBackend
    from .stack.info import StackInfo
    if args.backend == "compose":
        return _up_compose(args)
    opts = StackOptions(state_dir=Path(args.state_dir), topology=args.topology,
                        base_port=args.base_port, engines=args.engines, tls=args.tls,
                        archive_timeout_s=max(1, int(parse_duration(args.archive_timeout,
                                                                    "--archive-timeout"))))
    print(f"msdb up: {args.topology} topology, ports from {args.base_port}, state in {args.state_dir}"
          + (", engines: seed stand-ins" if args.engines == "seed" else "")
          + (", TLS 1.3 to PostgreSQL" if args.tls else ""))
    backend = EmbeddedBackend(opts)
    info, started = backend.start(fresh=args.fresh, log=print)
    if not started:
        print("stack already running and healthy")
    print_endpoints(info)
    if started and info.up_seconds is not None:
        print(f"up in {info.up_seconds:.1f} s")
    if not args.foreground:
        return 0
    print("\nforeground: press Ctrl-C to stop the stack")
    stop = {"sig": None}

    def handler(signum, frame):
        stop["sig"] = signum
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        # We are the parent of every part: reap the ones a fault kills, or
        # they stay zombies and block their own restart.
        while stop["sig"] is None:
            for p in StackInfo.load(args.state_dir).parts:
                if p.proc:
                    procs.is_running(procs.ProcRecord.from_json(p.proc))   # reaps if it exited
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\nstopping the stack ...")
        backend.down(log=print)
    return 0


def _up_compose(args) -> int:
    from .errors import UsageError
    from .stack.compose import ComposeBackend
    from .stack.topology import DEFAULT_BASE_PORT
    if args.base_port != DEFAULT_BASE_PORT or args.foreground or args.fresh:
        raise UsageError("--backend compose: the compose stack publishes the default port block "
                         f"({DEFAULT_BASE_PORT}) and runs detached; drop --base-port, --fresh "
                         "and --foreground (`msdb down --purge` removes its volumes)")
    print(f"msdb up: compose, {args.topology} topology, state in {args.state_dir}")
    # The first start builds the image and waits for Elasticsearch: minutes, not seconds.
    info = ComposeBackend(Path(args.state_dir), topology=args.topology).up(timeout_s=900)
    print_endpoints(info)
    return 0


def cmd_down(args) -> int:
    from .errors import InfraError, NoStackError, UsageError
    from .stack.embedded import StackOptions
    from .stack.embedded_backend import EmbeddedBackend
    from .stack.info import StackInfo
    try:
        backend_kind = StackInfo.load(args.state_dir).backend
    except (NoStackError, InfraError, UsageError):
        backend_kind = "embedded"     # nothing readable: the embedded cleanup still purges
    if backend_kind == "compose":
        from .stack.compose import ComposeBackend
        left = ComposeBackend(Path(args.state_dir)).down(purge=args.purge)
    else:
        left = EmbeddedBackend(StackOptions(state_dir=Path(args.state_dir))).down(purge=args.purge,
                                                                                  log=print)
    return 3 if left else 0


def cmd_status(args) -> int:
    import json
    from .stack.backend import open_backend
    if args.target:
        from .stack.target import TargetBackend
        backend = TargetBackend.open(args.target)
        try:
            parts = backend.status()
        finally:
            backend.down()      # its scratch dir only
    else:
        from .errors import NoStackError
        try:
            parts = open_backend(args.state_dir).status()
        except NoStackError as e:
            # Not an error of the command: the answer is "nothing runs" (exit 3).
            if args.json:
                print(json.dumps({"stack": None, "state_dir": args.state_dir, "message": str(e)}))
            else:
                print(f"no stack is running in {args.state_dir}: start one with `msdb up`, or "
                      f"give --state-dir DIR or --target FILE")
            return 3
    if args.json:
        print(json.dumps([p.__dict__ for p in parts], indent=2))
    else:
        _print_table([[p.name, _short(p.endpoint), p.pid or "-", "healthy" if p.healthy else "UNHEALTHY",
                       p.detail] for p in parts], ["part", "endpoint", "pid", "health", "detail"],
                     right=(2,))
    bad = [p.name for p in parts if not p.healthy]
    if bad:
        print(f"\nunhealthy: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def cmd_scenarios(args) -> int:
    from scenarios import registry
    _print_table([[s.name, f"{s.default_duration_s():g}s", s.users, s.summary + (
        f" [starts {len(s.matrix)} stacks of its own]" if s.matrix else "")]
        for s in registry.all()], ["scenario", "time", "users", "what it does"], right=(1, 2))
    from .term import wrap
    print("\n" + "\n".join(wrap("time and users are the defaults (--duration, --users). A run uses "
                                "the running stack, or starts one for itself and removes it "
                                "afterwards.")))
    return 0


def cmd_suite(args) -> int:
    from .run.suite import run_suite
    return run_suite(args)


def cmd_check(args) -> int:
    import json
    from reports.summary import format_results
    from .checks.core import exit_code
    from .checks.judge import judge, open_run
    doc = judge(args.run_dir, slo_path=args.slo, write=args.write)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(format_results(open_run(args.run_dir), doc, written=args.write))
    if args.write:
        from reports.build import build_report
        build_report(args.run_dir)
    return exit_code(doc["verdict"])


def cmd_report(args) -> int:
    from .errors import UsageError
    if not args.run_dirs and not args.index:
        raise UsageError("give at least one RUN_DIR, or --index DIR")
    from reports.build import build_index, build_report
    from .checks.judge import open_run
    for d in args.run_dirs:
        open_run(d)     # exit 2 naming the directory if it is not a run's
        html, pdf = build_report(d, pdf=not args.no_pdf)
        print(f"{html}" + (f"\n{pdf}" if pdf else ""))
    if args.index:
        if not Path(args.index).is_dir():
            raise UsageError(f"--index {args.index!r} is not a directory")
        print(build_index(Path(args.index)))
    return 0


def cmd_proxy(args) -> int:
    from chaos.server import main as proxy_main
    argv = ["--host", args.host, "--port", str(args.port)]
    if args.config:
        argv += ["--config", args.config]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    return proxy_main(argv)


def cmd_drill(args) -> int:
    from .drills.command import drill_command
    return drill_command(args)


def cmd_run(args) -> int:
    from .run.command import run_command
    return run_command(args)


def cmd_target(args) -> int:
    import os
    from .stack.backend import open_backend
    from .stack.target import dump_target, export_target
    text = dump_target(export_target(open_backend(args.state_dir).info()))
    if args.out == "-":
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.is_dir():
        from .errors import UsageError
        raise UsageError(f"--out {args.out!r} is a directory; give a file name")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it holds passwords
    except OSError as e:
        from .errors import UsageError
        raise UsageError(f"--out {args.out!r}: cannot be written ({e.strerror})") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
    print(f"wrote {out}: run `msdb run SCENARIO --target {out}` from anywhere")
    return 0


def cmd_part(args) -> int:
    from .errors import UsageError
    from .stack.info import StackInfo
    if StackInfo.load(args.state_dir).backend == "embedded":   # the common case, kept light
        from .stack.actions import embedded_actions
        actions = embedded_actions(args.state_dir)
    else:
        from .stack.backend import open_backend
        actions = open_backend(args.state_dir).actions()
    names = actions.names()
    if args.part not in names:
        raise UsageError(f"unknown part {args.part!r} (parts: {', '.join(names)})")
    if args.action == "running":
        return 0 if actions.running(args.part) else 1
    getattr(actions, args.action)(args.part)
    return 0


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "scenarios": cmd_scenarios,
            "target": cmd_target, "part": cmd_part, "run": cmd_run, "check": cmd_check, "proxy": cmd_proxy, "report": cmd_report,
            "suite": cmd_suite, "drill": cmd_drill}


def _values_like_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--duration -5s` as `--duration=-5s`: argparse takes a value that starts
    with '-' for an option and says only "expected one argument"; joined,
    the value reaches its own check, whose message names it."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    cmd = sub.choices.get(argv[0]) if sub and argv else None
    if cmd is None:
        return argv
    takes_value = {o for a in cmd._actions if isinstance(a, argparse._StoreAction) and a.nargs is None
                   for o in a.option_strings}
    known = {o for a in cmd._actions for o in a.option_strings}
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok in takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and argv[i + 1].split("=")[0] not in known:
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LOAD_COMMANDS:
        from gevent import monkey
        monkey.patch_all()
    parser = build_parser()
    args = parser.parse_args(_values_like_options(parser, argv))
    from .errors import Interrupted, MsdbError

    def on_sigterm(signum, frame):
        raise Interrupted(signum)     # like Ctrl-C: every finally runs, then exit 143
    signal.signal(signal.SIGTERM, on_sigterm)   # `run` and `up --foreground` install their own
    try:
        return COMMANDS[args.command](args)
    except MsdbError as e:
        print(f"msdb {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:     # `msdb scenarios | head`: the reader left; so do we, quietly
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)
        print(f"msdb {args.command}: interrupted ({'SIGTERM' if code == 143 else 'Ctrl-C'}); "
              f"exit {code}", file=sys.stderr)
        return code
    except Exception:  # a bug of ours: report it, but never as "a check failed" (1)
        import traceback
        traceback.print_exc()
        print(f"msdb {args.command}: internal error (the traceback above is a bug in msdb)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
