"""Restoring a base backup and its WAL into a fresh PostgreSQL instance, to
the end of the WAL or a target time, then promoting it; with the timings
of every step read from the server's own log (copy, redo start and done,
read-write), which the drills turn into RTO parts.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import InfraError, UsageError
from ..stack import procs
from ..stack.pg import PgInstance
from ..utc import utc
from .backup import BackupSet, dir_bytes, parse_lsn, wal_chain

__all__ = ["RestoreResult", "restore"]

_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\S+) ")


def _log_time(line: str) -> float | None:
    m = _LOG_TS.match(line)
    if not m:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


@dataclass
class RestoreResult:
    backup: str
    target_time: float | None
    wal_chain: dict
    copy_bytes: int
    t_copy_start: float
    t_copy_end: float
    t_start: float                   # postgres started on the restored data
    t_redo_start: float | None       # from the server log
    t_redo_done: float | None
    t_read_write: float              # pg_is_in_recovery() false: promoted
    redo_bytes: int | None
    last_replayed_commit: str | None  # "last completed transaction was at log time ..."
    log_lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def restore(bs: BackupSet, dest: PgInstance, *, target_time: float | None = None,
            sources: list[Path] | None = None, timeout: float = 3600) -> tuple[RestoreResult, procs.ProcRecord]:
    """Latest verified base backup (finished before the target) + WAL into a
    fresh instance `dest`, recovered to the end of the WAL or to target_time,
    then promoted.  Returns the timings and the new server's process."""
    all_backups = bs.backups()
    if target_time is not None and all_backups and all_backups[0].finished_at > target_time:
        raise UsageError(f"--target-time {utc(target_time)} is before the earliest recoverable point "
                         f"(the oldest base backup, {all_backups[0].label}, finished at "
                         f"{utc(all_backups[0].finished_at)})")
    backup = bs.latest(before=target_time)
    sources = sources if sources is not None else [bs.archive_dir, bs.stream_dir]
    chain = wal_chain(backup.start_wal, sources, fallback=Path(backup.path) / "pg_wal")
    if not chain["segments"]:
        raise InfraError(f"WAL segment {chain['gap']} (the start of base backup {backup.label}) is "
                         f"missing from {', '.join(map(str, sources))} and the backup itself")
    if chain["beyond_gap"]:
        raise InfraError(f"archive gap: WAL segment {chain['gap']} is missing from "
                         f"{', '.join(map(str, sources))}, but {len(chain['beyond_gap'])} later "
                         f"segment(s) exist (first {chain['beyond_gap'][0]}); recovery would stop "
                         f"at the gap")
    if target_time is not None:
        if target_time < backup.finished_at:
            raise UsageError(f"--target-time {utc(target_time)} is before the earliest recoverable "
                             f"point (base backup {backup.label} finished at {utc(backup.finished_at)})")
        if chain["newest_mtime"] is not None and target_time > chain["newest_mtime"]:
            raise UsageError(f"--target-time {utc(target_time)} is after the last recoverable point "
                             f"(newest WAL {chain['last']}{' (partial)' if chain['last_partial'] else ''} "
                             f"written at {utc(chain['newest_mtime'])})")
    script = bs.root / "restore_wal.sh"
    dirs = " ".join(f"'{d}'" for d in sources)
    script.write_text("#!/bin/sh\n# restore_command of msdb restores: $1 = %f, $2 = %p\n"
                      f"for d in {dirs}; do [ -f \"$d/$1\" ] && exec cp \"$d/$1\" \"$2\"; done\n"
                      f"for d in {dirs}; do [ -f \"$d/$1.partial\" ] && exec cp \"$d/$1.partial\" \"$2\"; done\n"
                      "exit 1\n")
    os.chmod(script, 0o755)
    bs.rt.chown(script)

    if dest.datadir.exists():
        shutil.rmtree(dest.datadir)
    t_copy_start = time.time()
    shutil.copytree(backup.path, dest.datadir, symlinks=True)
    if bs.rt.user is not None:
        pw = pwd.getpwnam(bs.rt.user)
        for p in [dest.datadir, *dest.datadir.rglob("*")]:
            os.lchown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(dest.datadir, 0o700)
    t_copy_end = time.time()
    copy_bytes = dir_bytes(dest.datadir)

    dest.write_config()
    auto = dest.datadir / "postgresql.auto.conf"
    lines = [ln for ln in (auto.read_text().splitlines() if auto.exists() else [])
             if not ln.startswith(("synchronous_standby_names", "restore_command", "recovery_target"))]
    lines += [f"restore_command = '{script} %f %p'",
              "recovery_target_timeline = 'latest'",
              "synchronous_standby_names = ''",
              "log_min_messages = 'log'",
              "log_timezone = 'UTC'"]
    if target_time is not None:
        lines += [f"recovery_target_time = '{utc(target_time).replace('Z', '+00')}'",
                  "recovery_target_inclusive = off", "recovery_target_action = 'promote'"]
    auto.write_text("\n".join(lines) + "\n")
    bs.rt.chown(auto)
    sig = dest.datadir / "recovery.signal"
    sig.write_text("")
    bs.rt.chown(sig)

    t_start = time.time()
    rec = dest.start()
    try:
        dest.wait_ready(rec, timeout=timeout)
    except BaseException as e:     # Ctrl-C included: the restored server is ours to stop
        procs.stop(rec)
        if not isinstance(e, InfraError):
            raise
        log = procs.tail(dest.log_path, 40)
        if "recovery ended before configured recovery target was reached" in log:
            raise InfraError(f"the WAL ends before --target-time {utc(target_time)}: recovery "
                             f"could not reach it (server log {dest.log_path})") from None
        raise InfraError(f"restore of {backup.label} into {dest.name} failed: {e}") from None
    t_rw = time.time()
    text = Path(dest.log_path).read_text(errors="replace").splitlines()
    redo_start = redo_done = None
    lsn_a = lsn_b = None
    last_commit = None
    for ln in text:
        if "redo starts at " in ln and redo_start is None:
            redo_start = _log_time(ln)
            lsn_a = parse_lsn(ln.split("redo starts at ")[1].split()[0])
        elif "redo done at " in ln:
            redo_done = _log_time(ln)
            lsn_b = parse_lsn(ln.split("redo done at ")[1].split()[0])
        elif "last completed transaction was at log time " in ln:
            last_commit = ln.split("log time ")[1].strip()
        elif "recovery stopping before" in ln and redo_done is None:
            redo_done = _log_time(ln)
    res = RestoreResult(backup=backup.label, target_time=target_time, wal_chain=chain,
                        copy_bytes=copy_bytes, t_copy_start=t_copy_start, t_copy_end=t_copy_end,
                        t_start=t_start, t_redo_start=redo_start, t_redo_done=redo_done,
                        t_read_write=t_rw,
                        redo_bytes=(lsn_b - lsn_a) if lsn_a is not None and lsn_b is not None else None,
                        last_replayed_commit=last_commit,
                        log_lines=[ln for ln in text if any(k in ln for k in (
                            "redo", "recovery", "timeline", "restored log file", "ready to accept",
                            "last completed", "FATAL", "consistent"))][-60:])
    return res, rec
