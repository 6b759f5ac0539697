"""`msdb drill`: backup and restore drills that measure the achieved RPO and RTO.

    msdb drill restore [--db orders] [--wal archive|stream|stream-sync[,...]]
                       [--archive-timeout 15min] [--disaster-after 60s] [--target-time T]
                       [--from primary|geo] [--geo-key-file FILE] [--restore-key-file FILE]
    msdb drill pitr    an accidental DELETE, restored to just before it
    msdb drill masked  a restored copy of the users database with PII masked
    msdb drill migration --plan NAME|FILE   a schema change under load (seed §10.1)

Each drill runs on a fresh stack of its own (harness.drills.stack), records
what happened in its run directory, and is judged from it
(harness.checks.judge), as a scenario run is: `msdb check` re-judges it.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..checks.core import exit_code
from ..checks.slo import load_slo
from ..durations import parse_duration
from ..errors import UsageError
from ..run.progress import Snapshot, Ticker
from ..run.rundir import RunDir
from ..utc import epoch, utc_now
from ..stack.pg import ROOT_DATA_BASE
from .backup import Retention
from .geocrypt import KeySpec, load_key, read_key_file, refuse_inside
from .masked import masked_drill
from ..checks.drill import MIGRATION_KEYS
from .migration import load_plan, migration_drill
from .pitr import pitr_drill
from .restore import RestoreParams, restore_drill

__all__ = ["drill_command", "parse_modes", "parse_target", "WAL_MODES", "DRILL_DBS",
           "DEFAULT_DRILL_PORT"]

WAL_MODES = ("archive", "stream", "stream-sync")
DRILL_DBS = ("orders", "users")
DEFAULT_DRILL_PORT = 15700
# Test-only: the planted weakness of the encrypted geo copy (docs/drills.md).
PLANT_PLAINTEXT_GEO = "MSDB_DRILL_PLANT_PLAINTEXT_GEO"
RECOVERY_KEYS = ("rpo_seconds_max", "rto_seconds_max")


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    if modes == ["all"]:
        return list(WAL_MODES)
    bad = [m for m in modes if m not in WAL_MODES]
    if not modes or bad:
        raise UsageError(f"--wal {text!r}: expected one or more of {', '.join(WAL_MODES)} "
                         f"(comma-separated) or all")
    return list(dict.fromkeys(modes))


def parse_target(text: str | None) -> tuple[str, float] | None:
    """--target-time: an ISO 8601 time (UTC if no zone) -> ("abs", epoch), or
    `-DURATION` before the disaster -> ("rel", seconds)."""
    if text is None:
        return None
    t = str(text).strip()
    if t.startswith("-"):
        return ("rel", parse_duration(t[1:], "--target-time"))
    try:
        return ("abs", epoch(t))
    except ValueError:
        raise UsageError(f"--target-time {text!r} is neither an ISO 8601 time "
                         f"(2026-11-27T17:00:00Z) nor -DURATION before the disaster (-10s)") from None


@contextmanager
def _recorded(rd: RunDir, info: dict):
    """run.json says how the drill ended (completed, error, interrupted), whatever happens."""
    try:
        yield
        info["status"] = "completed"
    except BaseException as e:
        info["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "error"
        info["error"] = str(e)
        raise
    finally:
        info["end"] = utc_now()
        rd.write_json("run.json", info)


def _start(rd: RunDir, scenario: str, params: dict, slo: dict, **extra) -> dict:
    info = {"scenario": scenario, "parameters": params, "slo": slo, "topology": "dedicated",
            "start": utc_now(), "end": None, "status": "running", **extra}
    rd.write_json("run.json", info)
    return info


def _conclude(rd: RunDir, args) -> int:
    """Judge the run directory, print the checks, write the report; the exit code."""
    from ..checks.judge import judge   # the scenarios and their checks: not before the input is checked
    doc = judge(rd.path)
    for c in doc["checks"]:
        print(f"  {c['verdict'].upper():7} {c['name']}: measured {c['measured']}, threshold {c['threshold']}")
    print(f"  verdict: {doc['verdict'].upper()}")
    # Imported here, not at the top: matplotlib and WeasyPrint take seconds to
    # import, and a usage error must not wait for them.
    from reports.build import build_report
    try:
        html, pdf = build_report(rd.path, pdf=not getattr(args, "no_pdf", False))
        print(f"report: {html}" + (f", {pdf}" if pdf else ""))
    except Exception as e:   # the report is a view; the verdict is in results.json
        print(f"warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)
    return exit_code(doc["verdict"])


def _common(args) -> tuple[float, int]:
    if args.db not in DRILL_DBS:
        raise UsageError(f"--db {args.db!r} is not one of {', '.join(DRILL_DBS)}")
    at = parse_duration(args.archive_timeout, "--archive-timeout")
    if at < 1 or at != int(at):
        raise UsageError(f"--archive-timeout {args.archive_timeout!r} must be a whole number of seconds >= 1")
    after = parse_duration(args.disaster_after, "--disaster-after")
    if args.writers < 1 or args.writers > 64:
        raise UsageError(f"--writers {args.writers!r} must be between 1 and 64")
    return after, int(at)


def drill_command(args) -> int:
    if args.base_port is None:
        args.base_port = DEFAULT_DRILL_PORT
    if args.db is None:
        args.db = "users" if args.drill == "masked" else "orders"
    if args.drill != "restore" and getattr(args, "source", "primary") != "primary":
        raise UsageError(f"--from {args.source} applies to `msdb drill restore` only "
                         f"({args.drill} restores from this region's backups)")
    for opt, dest in (("--geo-key-file", "geo_key_file"), ("--restore-key-file", "restore_key_file")):
        if args.drill != "restore" and getattr(args, dest, None) is not None:
            raise UsageError(f"{opt} applies to `msdb drill restore` only (its geo copy is the "
                             f"one encrypted)")
    if args.drill != "migration" and getattr(args, "plan", None) is not None:
        raise UsageError(f"--plan applies to `msdb drill migration` only")
    keys = {"restore": RECOVERY_KEYS, "migration": MIGRATION_KEYS}.get(args.drill, ())
    slo = load_slo(args.slo, "drill", keys, endpoints=False)
    with _progress(args):
        return {"restore": cmd_restore, "pitr": cmd_pitr, "masked": cmd_masked,
                "migration": cmd_migration}[args.drill](args, slo)


def _progress(args) -> Ticker:
    """The drill's live progress: elapsed time and its phase, which is the
    last line the drill printed (each step prints one as it starts or ends)."""
    t0 = time.monotonic()
    ticker = Ticker(lambda: Snapshot(label=f"drill {args.drill}", elapsed_s=time.monotonic() - t0,
                                     phase=ticker.last_line), quiet=getattr(args, "quiet", False))
    return ticker


def cmd_pitr(args, slo: dict) -> int:
    after, at = _common(args)
    if args.target_time is not None:
        raise UsageError(f"--target-time {args.target_time!r}: the pitr drill chooses its target "
                         f"(just before its own accident)")
    rd = RunDir.create(args.out, "drill-pitr")
    info = _start(rd, "drill-pitr", {"db": args.db, "accident_after_s": after, "archive_timeout_s": at,
                                     "writers": args.writers, "base_port": args.base_port}, slo)
    print(f"drill pitr db={args.db}: writes for {after:g} s, an accidental DELETE, writes after it; "
          f"restore to just before it -> {rd.path}", flush=True)
    with _recorded(rd, info):
        pitr_drill(db=args.db, after_s=after, archive_timeout_s=at, writers=args.writers,
                   state_dir=Path(args.state_dir), base_port=args.base_port, rd=rd)
    return _conclude(rd, args)


def cmd_masked(args, slo: dict) -> int:
    after, at = _common(args)
    if args.db != "users":
        raise UsageError(f"--db {args.db!r}: the masked drill masks the users database (emails, names)")
    rd = RunDir.create(args.out, "drill-masked")
    info = _start(rd, "drill-masked", {"db": "users", "writes_s": after, "base_port": args.base_port}, slo)
    print(f"drill masked: users written for {after:g} s, restored aside, masked, dumped -> {rd.path}",
          flush=True)
    with _recorded(rd, info):
        masked_drill(after_s=after, archive_timeout_s=at, writers=args.writers,
                     state_dir=Path(args.state_dir), base_port=args.base_port, rd=rd)
    return _conclude(rd, args)


def cmd_migration(args, slo: dict) -> int:
    if getattr(args, "plan", None) is None:
        raise UsageError("msdb drill migration needs --plan NAME|FILE (scenarios/migrations/: "
                         "unsafe, expand-contract)")
    plan = load_plan(args.plan)           # bad plan: exit 2 naming the key or step
    if args.writers < 1 or args.writers > 64:
        raise UsageError(f"--writers {args.writers!r} must be between 1 and 64")
    rd = RunDir.create(args.out, "drill-migration")
    info = _start(rd, "drill-migration", {"plan": plan.name, "plan_file": str(plan.path),
                                          "db": "orders", "writers": args.writers,
                                          "base_port": args.base_port}, slo)
    rd.write_json("plan.json", plan.raw)
    print(f"drill migration --plan {plan.name}: {len(plan.steps)} steps under load on a fresh stack "
          f"-> {rd.path}", flush=True)
    with _recorded(rd, info):
        m = migration_drill(plan=plan, threads=args.writers, state_dir=Path(args.state_dir),
                            base_port=args.base_port, rd=rd)
    print(f"  longest lock wait imposed on the workload: {m['blocked_ms_max']:.1f} ms; failed requests "
          f"during the change: {m['failed_during_change']} of {m['requests']}; p99 before/during/after: "
          f"{_f(m['p99_before_ms'])}/{_f(m['p99_during_ms'])}/{_f(m['p99_after_ms'])} ms")
    return _conclude(rd, args)


def _f(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def geo_keys(args, env=os.environ) -> tuple[KeySpec | None, KeySpec | None, bool]:
    """(the geo copy's key or None to generate one, the key to restore with
    if another, the planted weakness on?), all checked before any stack
    starts: a bad key or a key kept where the copy lives is exit 2."""
    key_file = getattr(args, "geo_key_file", None)
    restore_file = getattr(args, "restore_key_file", None)
    if restore_file is not None and args.source != "geo":
        raise UsageError(f"--restore-key-file {restore_file}: applies to --from geo only (a restore "
                         f"from this region's backups never reads the geo copy)")
    state = Path(args.state_dir)
    for opt, path in (("--geo-key-file", key_file), ("--restore-key-file", restore_file)):
        if path is None:
            continue
        refuse_inside(path, state, opt, "the drill's state dir: it holds the geo copy and is deleted "
                                        "after the drill")
        refuse_inside(path, ROOT_DATA_BASE, opt, "msdb's PostgreSQL data, geo copies included, "
                                                 "when run as root")
        try:
            mode = Path(path).expanduser().stat().st_mode
        except OSError:
            mode = 0                       # read_key_file names the error
        if mode & 0o077:
            print(f"warning: {opt} {path} can be read by others (mode {mode & 0o777:o}); "
                  f"chmod 600 it", file=sys.stderr)
    key = load_key(key_file, env)
    restore_key = read_key_file(restore_file, "--restore-key-file") if restore_file is not None else None
    planted = env.get(PLANT_PLAINTEXT_GEO, "")
    if planted not in ("", "0", "1"):
        raise UsageError(f"{PLANT_PLAINTEXT_GEO}={planted!r}: expected 1 (plant the weakness) or 0")
    return key, restore_key, planted == "1"


def cmd_restore(args, slo: dict) -> int:
    modes = parse_modes(args.wal)
    after, at = _common(args)
    target = parse_target(args.target_time)
    if target and target[0] == "abs" and target[1] < time.time():
        raise UsageError(f"--target-time {args.target_time!r} is in the past: the drill's first base "
                         f"backup is taken after it starts, so nothing before now is recoverable "
                         f"(use -DURATION, e.g. --target-time=-10s, for a point before the disaster)")
    if target and target[0] == "rel" and target[1] >= after:
        raise UsageError(f"--target-time {args.target_time!r} is before the drill's first write "
                         f"(--disaster-after is {args.disaster_after})")
    if args.keep_stack and len(modes) > 1:
        raise UsageError(f"--keep-stack needs a single --wal strategy, not {args.wal!r}")
    Retention(keep_last=args.keep_last, keep_days=args.keep_days)   # validates both
    geo_key, restore_key, planted = geo_keys(args)
    root = RunDir.create(args.out, "drill-restore")
    # Where the keys come from, never the keys.
    params = {"db": args.db, "wal": modes, "archive_timeout_s": at, "disaster_after_s": after,
              "target_time": args.target_time, "writers": args.writers, "base_port": args.base_port,
              "from": args.source,
              "geo_key": geo_key.source if geo_key else "generated into the state dir",
              "restore_key": restore_key.source if restore_key else None,
              **({"planted": "plaintext geo copy"} if planted else {})}
    parent = _start(root, "drill-restore", params, slo, matrix=modes) if len(modes) > 1 else None
    try:
        for mode in modes:
            rd = root if len(modes) == 1 else RunDir.create(str(root.path / mode), "drill-restore")
            info = _start(rd, "drill-restore", {**params, "wal": mode}, slo)
            print(f"drill restore [{mode}] db={args.db} archive_timeout={at} s disaster after "
                  f"{after:g} s{' from the geo copy' if args.source == 'geo' else ''} -> {rd.path}",
                  flush=True)
            p = RestoreParams(db=args.db, wal=mode, archive_timeout_s=at, disaster_after_s=after,
                              target=target, writers=args.writers, state_dir=Path(args.state_dir),
                              base_port=args.base_port, keep_days=args.keep_days,
                              keep_last=args.keep_last, keep_stack=args.keep_stack, source=args.source,
                              geo_key=geo_key, restore_key=restore_key, plant_plaintext_geo=planted)
            with _recorded(rd, info):
                m = restore_drill(p, rd)
            from ..checks.judge import judge
            doc = judge(rd.path) if len(modes) > 1 else None
            print(f"  RPO: {m['rpo_lost_writes']} of {m['acked_writes']} acknowledged writes lost, "
                  f"{m['rpo_seconds']:.2f} s (target <= {slo['rpo_seconds_max']:g} s)")
            decrypt = f" + decrypt {m['rto_decrypt_s']:.2f}" if m.get("rto_decrypt_s") is not None else ""
            print(f"  RTO: {m['rto_seconds']:.2f} s (target <= {slo['rto_seconds_max']:g} s) = destroy "
                  f"{m['rto_destroy_s']:.2f}{decrypt} + copy {m['rto_copy_s']:.2f} + WAL replay "
                  f"{m['rto_wal_replay_s']:.2f} + promotion {_f(m['rto_promotion_s'])} + reconnection "
                  f"{m['rto_reconnect_s']:.2f}")
            if doc is not None:
                print(f"  verdict [{mode}]: {doc['verdict'].upper()}")
        if parent is not None:
            parent["status"] = "completed"
    except BaseException as e:
        if parent is not None:
            parent.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "error", error=str(e))
        raise
    finally:
        if parent is not None:
            parent["end"] = utc_now()
            root.write_json("run.json", parent)
    return _conclude(root, args)
