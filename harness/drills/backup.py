"""Backups of one PostgreSQL instance of the embedded stack (seed §7).

    <root>/base/<label>/          pg_basebackup (plain, -X stream), verified by
                                  pg_verifybackup; msdb-backup.json describes it
    <instance archive dir>        archive_command's copies (harness/pg.py), every
                                  archive_timeout (seed: 15 min)
    <root>/stream/                pg_receivewal's segments (optional; async, or
                                  synchronous through synchronous_standby_names)
    <geo>/base, <geo>/wal         the second "region": a copy of both, every file
                                  encrypted (AES-256-GCM, harness/drills/geocrypt.py)
                                  when the set has a geo key

Retention keeps the newest N backups and/or those younger than N days (a
backup is kept when any rule keeps it; the newest is always kept), then
deletes the WAL no kept backup needs, in both copies.

Restoring (harness/drills/pgrestore.py) reads a `BackupSet`, or a `GeoCopy`
once the region is lost (decrypted first into a scratch directory,
`GeoCopy.decrypted`): `wal_chain` finds the segments a backup needs and
names the first one missing (an archive gap).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from ..errors import InfraError, UsageError
from ..stack import procs
from ..stack.pg import PgInstance
from ..utc import stamp, utc
from .geocrypt import decrypt_file, encrypt_file

__all__ = ["BackupInfo", "Retention", "select_retained", "BackupSet", "GeoCopy", "WalStreamer",
           "WAL_RE", "segno", "seg_name", "wal_chain", "parse_lsn", "dir_bytes", "RECEIVER_NAME"]

WAL_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
SEGS_PER_XLOGID = 0x100          # 16 MB segments (initdb default)
RECEIVER_NAME = "msdb_receivewal"


def parse_lsn(text: str) -> int:
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segno(name: str) -> tuple[int, int]:
    """(timeline, segment number) of a WAL file name."""
    m = WAL_RE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a WAL segment name")
    return int(m.group(1), 16), int(m.group(2), 16) * SEGS_PER_XLOGID + int(m.group(3), 16)


def seg_name(tli: int, no: int) -> str:
    return f"{tli:08X}{no // SEGS_PER_XLOGID:08X}{no % SEGS_PER_XLOGID:08X}"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class BackupInfo:
    label: str
    path: str
    started_at: float            # epoch seconds
    finished_at: float
    start_wal: str               # first segment this backup needs
    start_lsn: str
    bytes: int
    seconds: float
    verified: bool
    verify_seconds: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "started_utc": utc(self.started_at),
                "finished_utc": utc(self.finished_at)}

    @classmethod
    def from_json(cls, d: dict) -> "BackupInfo":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Retention:
    """Seed §7.1: daily snapshots kept 7 days.  None = that rule is off."""
    keep_last: int | None = None
    keep_days: float | None = None

    def __post_init__(self):
        if self.keep_last is None and self.keep_days is None:
            raise UsageError("retention: give keep_last (N backups) or keep_days (N days), or both")
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or self.keep_last < 1):
            raise UsageError(f"retention keep_last {self.keep_last!r} must be an integer >= 1")
        if self.keep_days is not None and not (isinstance(self.keep_days, (int, float))
                                                and self.keep_days > 0):
            raise UsageError(f"retention keep_days {self.keep_days!r} must be a number > 0")


def select_retained(backups: list[BackupInfo], policy: Retention,
                    now: float) -> tuple[list[BackupInfo], list[BackupInfo]]:
    """(kept, pruned), both newest first.  A backup is kept if it is among the
    newest `keep_last`, or finished within `keep_days` of now; the newest is
    always kept (a restore needs one)."""
    ordered = sorted(backups, key=lambda b: b.finished_at, reverse=True)
    kept, pruned = [], []
    for i, b in enumerate(ordered):
        keep = i == 0
        if policy.keep_last is not None and i < policy.keep_last:
            keep = True
        if policy.keep_days is not None and now - b.finished_at <= policy.keep_days * 86400:
            keep = True
        (kept if keep else pruned).append(b)
    return kept, pruned


def wal_chain(start_wal: str, sources: list[Path], fallback: Path | None = None) -> dict:
    """The WAL available from `start_wal` on, over every source directory,
    and then `fallback` (a base backup's own pg_wal): PostgreSQL reads a
    segment from pg_wal only when restore_command has none, so a fallback
    segment counts only where no source holds that segment at all.  (The
    backup's copy of the segment it ended in looks complete, a full-size file
    without `.partial`, but holds only the WAL up to the backup's end: it
    must not outrank the receiver's `.partial` of the same segment.)

    Returns {"segments": [names...] (contiguous from start_wal), "last": name,
    "last_partial": bool, "gap": first missing name or None, "beyond_gap": [names
    present after the gap], "newest_mtime": mtime of the last contiguous file}.
    """
    tli, first = segno(start_wal)
    have: dict[int, tuple[bool, float]] = {}   # segno -> (partial, mtime)
    for src in [*sources, fallback]:
        if src is None or not src.is_dir():
            continue
        held = set(have)
        for p in src.iterdir():
            m = WAL_RE.match(p.name)
            if not m or int(m.group(1), 16) != tli:
                continue
            _, no = segno(p.name)
            if no < first or (src is fallback and no in held):
                continue
            partial = bool(m.group(4))
            mt = p.stat().st_mtime
            old = have.get(no)
            # A complete segment beats a partial one; else the newest copy.
            if old is None or (old[0] and not partial) or (old[0] == partial and mt > old[1]):
                have[no] = (partial, mt)
    segs, no = [], first
    while no in have:
        segs.append(no)
        if have[no][0]:     # a partial segment ends the chain
            break
        no += 1
    gap = None
    beyond = sorted(n for n in have if n > (segs[-1] if segs else first - 1))
    if not segs:
        gap = seg_name(tli, first)
    elif beyond:
        gap = seg_name(tli, segs[-1] + 1)
    return {"segments": [seg_name(tli, n) for n in segs],
            "last": seg_name(tli, segs[-1]) if segs else None,
            "last_partial": bool(segs) and have[segs[-1]][0],
            "gap": gap, "beyond_gap": [seg_name(tli, n) for n in beyond],
            "newest_mtime": have[segs[-1]][1] if segs else None}


class BackupSet:
    """Base backups, the WAL archive, the optional stream and the geo copy of
    one instance."""

    def __init__(self, inst: PgInstance, root: Path, geo: Path, *, replicator_password: str,
                 geo_key: bytes | None = None):
        self.inst = inst
        self.rt = inst.rt
        self.root = Path(root)
        self.geo = Path(geo)
        self.replicator_password = replicator_password
        # With a key every file geo_sync writes is encrypted; without one the
        # copy is plaintext (as before, and as the drill's planted weakness).
        self.geo_key = geo_key

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def stream_dir(self) -> Path:
        return self.root / "stream"

    @property
    def archive_dir(self) -> Path:
        return self.inst.archive_dir

    def prepare(self) -> None:
        for d in (self.root, self.base_dir, self.stream_dir):
            self.rt.owned_dir(d)
        for d in (self.geo, self.geo / "base", self.geo / "wal"):
            d.mkdir(parents=True, exist_ok=True)

    def _repl_env(self) -> dict:
        return {"PGPASSWORD": self.replicator_password, "PGSSLMODE": "disable"}

    # -- base backups ------------------------------------------------------------

    def take(self) -> BackupInfo:
        """pg_basebackup (plain, WAL streamed in, fast checkpoint), then pg_verifybackup."""
        self.prepare()
        label = stamp(micro=True)
        dest = self.base_dir / label
        t0 = time.time()
        self.rt.owned_dir(dest)
        self.rt.run("pg_basebackup", [
            "-h", "127.0.0.1", "-p", str(self.inst.port), "-U", "replicator", "-D", str(dest),
            "-X", "stream", "-c", "fast", "-l", f"msdb {label}", "--no-password"],
            env=self._repl_env(), timeout=3600)
        t1 = time.time()
        self.rt.run("pg_verifybackup", [str(dest)], timeout=3600)
        t2 = time.time()
        label_text = (dest / "backup_label").read_text()
        m = re.search(r"START WAL LOCATION: (\S+) \(file ([0-9A-F]{24})\)", label_text)
        if not m:
            raise InfraError(f"{dest}/backup_label has no START WAL LOCATION")
        info = BackupInfo(label=label, path=str(dest), started_at=t0, finished_at=t1,
                          start_wal=m.group(2), start_lsn=m.group(1), bytes=dir_bytes(dest),
                          seconds=round(t1 - t0, 3), verified=True, verify_seconds=round(t2 - t1, 3))
        (self.base_dir / f"{label}.json").write_text(json.dumps(info.to_json(), indent=2) + "\n")
        return info

    def backups(self) -> list[BackupInfo]:
        """Verified base backups, oldest first."""
        out = []
        for j in sorted(self.base_dir.glob("*.json")) if self.base_dir.is_dir() else []:
            b = BackupInfo.from_json(json.loads(j.read_text()))
            if not Path(b.path).is_dir():
                # A copied set (the geo copy) keeps each backup beside its json.
                b = replace(b, path=str(self.base_dir / b.label))
            if b.verified and Path(b.path).is_dir():
                out.append(b)
        return out

    def latest(self, before: float | None = None) -> BackupInfo:
        cands = [b for b in self.backups() if before is None or b.finished_at <= before]
        if not cands:
            where = f" finished before {utc(before)}" if before is not None else ""
            raise InfraError(f"no verified base backup{where} in {self.base_dir}: take one first "
                             f"(nothing to restore from)")
        return cands[-1]

    # -- the second region ------------------------------------------------------

    def geo_copy(self) -> "GeoCopy":
        """The geo copy as a restore reads it once this region is gone."""
        return GeoCopy(self)

    def lose_region(self) -> dict:
        """The disaster takes this region's backups with it: base backups, the
        stream and the WAL archive are deleted; only the geo copy is left.
        Returns what was lost."""
        lost = {"base_backups": len(self.backups()),
                "archived_wal": sum(1 for p in self.archive_dir.iterdir() if p.is_file())
                if self.archive_dir.is_dir() else 0}
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.archive_dir, ignore_errors=True)
        return lost

    def geo_sync(self) -> dict:
        """Copy base backups and archived WAL the geo copy lacks (encrypted,
        file by file, with a geo key); returns counts, bytes and seconds."""
        self.geo.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        n_base = n_wal = nbytes = 0
        for b in self.backups():
            dst = self.geo / "base" / b.label
            if not dst.exists():
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                # the description first: a directory without one is ignored,
                # and copied again by the next sync
                nbytes += self._geo_file(self.base_dir / f"{b.label}.json",
                                         self.geo / "base" / f"{b.label}.json")
                nbytes += self._geo_tree(Path(b.path), tmp, dst)
                tmp.rename(dst)
                n_base += 1
        for src in (self.archive_dir,):
            if not src.is_dir():
                continue
            for p in sorted(src.iterdir()):
                dst = self.geo / "wal" / p.name
                if p.is_file() and not dst.exists():
                    nbytes += self._geo_file(p, dst)
                    n_wal += 1
        return {"base_copied": n_base, "wal_copied": n_wal, "encrypted": self.geo_key is not None,
                "bytes": nbytes, "seconds": round(time.time() - t0, 3)}

    def _geo_file(self, src: Path, dst: Path, rel_to: Path | None = None) -> int:
        """One file into the geo copy, atomically: encrypted as the path it
        will have in the copy (`rel_to`: the final place of a tree being
        written under a temporary name), with the original's times."""
        tmp = dst.with_name(dst.name + ".tmp")
        if self.geo_key is None:
            shutil.copy2(src, tmp)
        else:
            rel = (rel_to or dst).relative_to(self.geo).as_posix()
            encrypt_file(self.geo_key, src, tmp, rel)
            st = src.stat()
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
        return dst.stat().st_size

    def _geo_tree(self, src: Path, tmp: Path, final: Path) -> int:
        nbytes = 0
        for dirpath, dirnames, filenames in os.walk(src):
            d = Path(dirpath)
            out = tmp / d.relative_to(src)
            out.mkdir(parents=True, exist_ok=True)
            for name in [*dirnames, *filenames]:
                if (d / name).is_symlink():
                    raise InfraError(f"{d / name} is a symbolic link (a tablespace?): the geo copy "
                                     f"copies plain files and directories only")
            for name in filenames:
                rel = d.relative_to(src) / name
                nbytes += self._geo_file(d / name, out / name, rel_to=final / rel)
        return nbytes

    # -- retention ----------------------------------------------------------------

    def prune(self, policy: Retention, now: float | None = None) -> dict:
        """Enforce the policy in the primary copy and the geo copy."""
        now = time.time() if now is None else now
        kept, pruned = select_retained(self.backups(), policy, now)
        for b in pruned:
            for base in (self.base_dir, self.geo / "base"):
                shutil.rmtree(base / b.label, ignore_errors=True)
                (base / f"{b.label}.json").unlink(missing_ok=True)
        wal_removed = 0
        if kept:
            oldest_needed = min((segno(b.start_wal) for b in kept))
            for d in (self.archive_dir, self.stream_dir, self.geo / "wal"):
                if not d.is_dir():
                    continue
                for p in d.iterdir():
                    if WAL_RE.match(p.name) and segno(p.name) < oldest_needed:
                        p.unlink()
                        wal_removed += 1
        return {"kept": [b.label for b in kept], "pruned": [b.label for b in pruned],
                "wal_removed": wal_removed}


class WalStreamer:
    """pg_receivewal into <root>/stream through a physical slot; with
    sync=True it is named in synchronous_standby_names, so a commit returns
    only once the receiver flushed it."""

    def __init__(self, bs: BackupSet, *, sync: bool):
        self.bs = bs
        self.sync = sync
        self.rec: procs.ProcRecord | None = None

    def _conninfo(self) -> str:
        return make_conninfo(host="127.0.0.1", port=self.bs.inst.port, user="replicator",
                             application_name=RECEIVER_NAME, sslmode="disable")

    def start(self, timeout: float = 30.0) -> None:
        bs = self.bs
        bs.prepare()
        with bs.inst.connect() as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE slot_name = %s AND NOT active", (RECEIVER_NAME,))
            c.execute("SELECT pg_create_physical_replication_slot(%s, true)", (RECEIVER_NAME,))
        argv = [str(bs.rt.bin_dir / "pg_receivewal"), "-D", str(bs.stream_dir), "-d", self._conninfo(),
                "-S", RECEIVER_NAME, "-n", "--no-password"]
        if self.sync:
            argv.append("--synchronous")
        _, self.rec = procs.spawn("pg-receivewal", argv, log_path=bs.rt.state_dir / "logs" /
                                  "pg-receivewal.log", user=bs.rt.user, cwd=Path("/"),
                                  env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", **bs._repl_env()})
        want = "sync" if self.sync else "async"
        with bs.inst.connect() as c:
            if self.sync:
                c.execute(f"ALTER SYSTEM SET synchronous_standby_names = '\"{RECEIVER_NAME}\"'")
                c.execute("SELECT pg_reload_conf()")

        def probe() -> str | None:
            try:
                with bs.inst.connect() as c:
                    row = c.execute("SELECT state, sync_state FROM pg_stat_replication "
                                    "WHERE application_name = %s", (RECEIVER_NAME,)).fetchone()
            except psycopg.Error as e:
                return str(e)
            if row is None:
                return "pg_receivewal not connected"
            return None if row[0] == "streaming" and row[1] == want else f"state {row}"
        try:
            procs.wait_ready(self.rec, probe, what="pg_receivewal", timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.rec is not None:
            procs.stop(self.rec, timeout=5.0)
            procs.wait_gone(self.rec.pid, 5.0)


# -- restore --------------------------------------------------------------------------

class GeoCopy(BackupSet):
    """The second region's copy (base backups and archived WAL, as of the last
    geo_sync), read by restore() the way it reads the first region's; or, with
    `root`, a decrypted copy of it in a scratch directory."""

    def __init__(self, primary: BackupSet, root: Path | None = None):
        root = Path(root) if root is not None else primary.geo
        super().__init__(primary.inst, root, root, replicator_password=primary.replicator_password,
                         geo_key=primary.geo_key)

    @property
    def archive_dir(self) -> Path:
        return self.geo / "wal"

    def take(self) -> BackupInfo:
        raise InfraError("the geo copy is written by geo_sync, never backed up into directly")

    def geo_sync(self) -> dict:
        raise InfraError("the geo copy has no second region of its own")

    def decrypted(self, scratch: Path, key: bytes, *, before: float | None = None) -> tuple["GeoCopy", dict]:
        """Decrypt what a restore needs into `scratch` (emptied first): every
        backup's description, the latest backup finished before `before` (the
        one restore() picks) and the WAL from its start segment on.  The
        scratch files belong to the PostgreSQL user (its restore_command reads
        them) and keep the copy's times.  The first file that does not
        authenticate stops it (geocrypt.AuthFailed / NotEncrypted, naming it).
        Returns the scratch copy and {"files", "bytes", "seconds"}."""
        t0 = time.time()
        shutil.rmtree(scratch, ignore_errors=True)
        files = nbytes = 0

        def one(src: Path) -> None:
            nonlocal files, nbytes
            rel = src.relative_to(self.geo)
            dst = scratch / rel
            if not dst.parent.exists():
                self.rt.owned_dir(dst.parent)
            nbytes += decrypt_file(key, src, dst, rel.as_posix())
            st = src.stat()
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.chmod(dst, 0o600)
            self.rt.chown(dst)
            files += 1

        for d in (scratch, scratch / "base", scratch / "wal"):
            self.rt.owned_dir(d)
        base = self.geo / "base"
        for j in sorted(base.glob("*.json")) if base.is_dir() else []:
            one(j)
        out = GeoCopy(self, scratch)
        cands = [b for b in out.descriptions() if before is None or b.finished_at <= before]
        if cands:
            chosen = cands[-1]
            for dirpath, dirnames, filenames in os.walk(base / chosen.label):
                d = Path(dirpath)
                self.rt.owned_dir(scratch / d.relative_to(self.geo))
                for name in filenames:
                    one(d / name)
            _, start = segno(chosen.start_wal)
            wal = self.archive_dir
            for p in sorted(wal.iterdir()) if wal.is_dir() else []:
                if p.is_file() and not (WAL_RE.match(p.name) and segno(p.name)[1] < start) \
                        and not p.name.endswith(".tmp"):
                    one(p)
        return out, {"files": files, "bytes": nbytes, "seconds": round(time.time() - t0, 3)}

    def descriptions(self) -> list[BackupInfo]:
        """Every backup's description, oldest first, whether or not its
        directory is here (a scratch copy holds only the one restored)."""
        base = self.base_dir
        out = [BackupInfo.from_json(json.loads(j.read_text())) for j in sorted(base.glob("*.json"))] \
            if base.is_dir() else []
        return sorted((b for b in out if b.verified), key=lambda b: b.finished_at)
