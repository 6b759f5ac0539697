"""`msdb drill`: backup and restore drills that measure the achieved RPO and RTO.

    msdb drill restore [--db orders] [--wal archive|stream|stream-sync[,...]]
                       [--archive-timeout 15min] [--disaster-after 60s] [--target-time T]
    msdb drill pitr    an accidental DELETE, restored to just before it
    msdb drill masked  a restored copy of the users database with PII masked

A drill is destructive, so it never touches the user's stack: it starts its
own fresh `dedicated` stack (each service its own instance) in its own state
dir, and purges it afterwards, as `msdb suite` does.

restore, per WAL strategy (each on a fresh stack):
 1. base backup (pg_basebackup + pg_verifybackup), geo copy; for stream modes
    pg_receivewal first (stream-sync: named in synchronous_standby_names);
 2. writers drive acknowledged writes through the service API, each with a
    unique id and the client's acknowledgement time (acks.jsonl, history.jsonl);
 3. disaster: kill -9 of the instance, then its data directory is deleted;
 4. restore the latest base backup + WAL into a fresh instance (to the end of
    the WAL, or --target-time), repoint the service's `<db>-db` proxy at it;
 5. RTO = disaster -> first write acknowledged through the API, in parts
    (destroy, copy, WAL replay, promotion, service reconnection; contiguous,
    so they add up to the total); RPO = acknowledged ids missing from the
    restored database, and disaster minus the last recovered acknowledgement.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

from . import checks as C
from . import procs
from .backup import BackupSet, Retention, WalStreamer, restore, _utc
from .durations import parse_duration
from .errors import InfraError, UsageError
from .pg import PgInstance
from .rundir import RunDir, utc_now

__all__ = ["drill_command", "WAL_MODES", "DRILL_DBS", "project_rto", "parse_target",
           "DEFAULT_DRILL_PORT", "GROWTH_GB_PER_YEAR"]

WAL_MODES = ("archive", "stream", "stream-sync")
DRILL_DBS = ("orders", "users")
DEFAULT_DRILL_PORT = 15700
DEFAULT_STATE_DIR = ".msdb-drill"
RESTORED_OFFSET = 8          # base+8 is free in every topology's port block
# Seed §7 growth estimates, GB per year, per database.
GROWTH_GB_PER_YEAR = {"users": 10.0, "orders": 50.0}
MARKER = "drill-stack"
MIN_REPLAY_BYTES = 4 * 1024 * 1024    # below this a replay rate is start-up noise
CLI = [sys.executable, "-m", "harness.cli"]


# -- arguments --------------------------------------------------------------------------


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
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--target-time {text!r} is neither an ISO 8601 time "
                         f"(2026-11-27T17:00:00Z) nor -DURATION before the disaster (-10s)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return ("abs", dt.timestamp())


def _slo(path: str | None) -> dict:
    from .run import load_slo
    return load_slo(path, "drill", required=("rpo_seconds_max", "rto_seconds_max"))


# -- the drill's own stack --------------------------------------------------------------


class DrillStack:
    """A fresh dedicated stack in its own state dir; purged on exit."""

    def __init__(self, state_dir: Path, base_port: int, archive_timeout_s: int, log=print,
                 keep: bool = False):
        self.keep = keep
        self.state_dir = Path(state_dir)
        self.base_port = base_port
        self.archive_timeout_s = archive_timeout_s
        self.log = log
        self.extra: list[procs.ProcRecord] = []   # processes of ours outside stack.json

    def _guard(self) -> None:
        d = self.state_dir
        if d.exists() and (not d.is_dir() or any(d.iterdir())) and not (d / MARKER).exists():
            what = "a stack that is not a drill's" if (d / "stack.json").exists() else "files that are not a drill's"
            raise UsageError(f"--state-dir {str(d)!r} holds {what} (no {MARKER} marker); a drill "
                             f"destroys and deletes its state dir, so give it a new or empty one")

    def __enter__(self) -> "DrillStack":
        self._guard()
        st = ["--state-dir", str(self.state_dir)]
        subprocess.run([*CLI, "down", *st, "--purge"], capture_output=True, text=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / MARKER).write_text("made by msdb drill; purged when the drill ends\n")
        t0 = time.monotonic()
        r = subprocess.run([*CLI, "up", *st, "--base-port", str(self.base_port), "--topology",
                            "dedicated", "--archive-timeout", f"{self.archive_timeout_s}s"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self._down()
            msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
            raise (UsageError if r.returncode == 2 else InfraError)(
                f"the drill's stack did not start: {' '.join(msg[-3:])}")
        self.log(f"  fresh dedicated stack on ports {self.base_port}.. in {self.state_dir} "
                 f"({time.monotonic() - t0:.1f} s)")
        from .stack import Stack
        self.stack = Stack.attach(self.state_dir)
        self.info = self.stack.info
        return self

    def _down(self) -> None:
        for rec in reversed(self.extra):
            procs.stop(rec, timeout=10.0)
            procs.wait_gone(rec.pid, 5.0)
        subprocess.run([*CLI, "down", "--state-dir", str(self.state_dir), "--purge"],
                       capture_output=True, text=True)

    def __exit__(self, exc_type, *exc) -> None:
        if self.keep and exc_type is None:
            self.log(f"  stack kept running: `msdb down --state-dir {self.state_dir} --purge` stops "
                     f"it (the restored instance too) and deletes its data")
            return
        self._down()

    def adopt(self, rec: procs.ProcRecord) -> None:
        """A process of the drill's (restored instance, pg_receivewal): stopped on
        exit, and recorded in stack.json so that `msdb down` stops it too."""
        self.extra.append(rec)
        self.stack._record(rec)

    def instance(self, db: str) -> PgInstance:
        from .topology import layout
        return self.stack.pg[layout("dedicated", self.base_port).instance_of(db).name]

    def backup_set(self, inst: PgInstance) -> BackupSet:
        rt = inst.rt
        inst.ensure_replicator(self.stack.sec["replicator"])
        bs = BackupSet(inst, rt.data_root / "backups" / inst.name, rt.data_root / "geo" / inst.name,
                       replicator_password=self.stack.sec["replicator"])
        bs.prepare()
        return bs

    def restored_instance(self, inst: PgInstance, suffix: str = "restored") -> PgInstance:
        return PgInstance(inst.rt, f"{inst.name}-{suffix}", self.base_port + RESTORED_OFFSET,
                          inst.superuser_password, archive_timeout_s=self.archive_timeout_s,
                          replicator_password=self.stack.sec["replicator"])

    def repoint(self, db: str, port: int) -> None:
        api = self.info["proxy"]["api"]
        r = requests.post(f"{api}/proxies/{db}-db", json={"upstream": f"127.0.0.1:{port}"}, timeout=10)
        if r.status_code != 200 or r.json().get("upstream") != f"127.0.0.1:{port}":
            raise InfraError(f"could not repoint proxy {db}-db to port {port}: HTTP {r.status_code} "
                             f"{r.text[:200]}")

    def repoint_others(self, old_port: int, port: int, done: str) -> list[str]:
        """Every other link that reached the destroyed instance (the CDC relay's,
        the replica's streaming link) follows it too; not part of the RTO."""
        api = self.info["proxy"]["api"]
        moved = []
        for name, px in requests.get(f"{api}/proxies", timeout=10).json().items():
            if name != done and px.get("upstream") == f"127.0.0.1:{old_port}":
                requests.post(f"{api}/proxies/{name}", json={"upstream": f"127.0.0.1:{port}"}, timeout=10)
                moved.append(name)
        return moved


# -- acknowledged writes ----------------------------------------------------------------


class Writer:
    """Unique-id writes through the service API; every ack is recorded."""

    def __init__(self, db: str, url: str, rd: RunDir, *, seed: dict | None = None):
        self.db, self.url, self.seed = db, url, seed or {}
        self.history = rd.history()
        self._acks = open(rd.path / "acks.jsonl", "w")
        self._lock = threading.Lock()
        self.acks: list[dict] = []
        self.failed = 0
        self.unknown = 0

    def write_once(self, session: requests.Session, process: str, phase: str) -> dict | None:
        wid = f"drill-{uuid.uuid4().hex}"
        if self.db == "orders":
            body = {"user_id": random.choice(self.seed["users"])["id"],
                    "items": [{"product_id": random.choice(self.seed["products"]), "quantity": 1}]}
            req = dict(url=f"{self.url}/orders", json=body, headers={"Idempotency-Key": wid})
        else:
            body = {"email": f"{wid}@drill.msdb.test", "password": "drill-password",
                    "first_name": "Drill", "last_name": wid[-8:]}
            req = dict(url=f"{self.url}/users", json=body)
        invoked = time.time()
        self.history.invoke(process, "write", {"id": wid, "phase": phase})
        try:
            r = session.post(timeout=10, **req)
        except requests.RequestException as e:
            self.history.info(process, "write", {"id": wid, "phase": phase, "error": str(e)[:200]})
            with self._lock:
                self.unknown += 1
            return None
        ack = time.time()
        if r.status_code == 201:
            rec = {"id": wid, "phase": phase, "invoke_ts": invoked, "ack_ts": ack, "ack_utc": _utc(ack)}
            self.history.ok(process, "write", {"id": wid, "phase": phase, "ack_utc": rec["ack_utc"]})
            with self._lock:
                self.acks.append(rec)
                self._acks.write(json.dumps(rec) + "\n")
            return rec
        outcome = self.history.fail if r.status_code in (400, 402, 409, 422) else self.history.info
        outcome(process, "write", {"id": wid, "phase": phase, "status": r.status_code})
        with self._lock:
            if r.status_code in (400, 402, 409, 422):
                self.failed += 1
            else:
                self.unknown += 1
        return None

    def run_until(self, stop: threading.Event, n: int, phase: str) -> list[threading.Thread]:
        def loop(i: int):
            s = requests.Session()
            s.trust_env = False
            while not stop.is_set():
                self.write_once(s, f"writer-{i}", phase)
        ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n)]
        for t in ts:
            t.start()
        return ts

    def close(self) -> None:
        self.history.close()
        self._acks.close()


def present_ids(inst: PgInstance, db: str, ids: list[str]) -> set[str]:
    """Which acknowledged ids the (restored) database holds, queried directly."""
    from .topology import SERVICE_BY_NAME
    with inst.connect(SERVICE_BY_NAME[db].database) as c:
        if db == "orders":
            rows = c.execute("SELECT s.idempotency_key FROM sagas s JOIN orders o ON o.id = s.order_id "
                             "WHERE s.idempotency_key = ANY(%s) AND s.state = 'COMPLETED' "
                             "AND o.status = 'CONFIRMED'", (ids,)).fetchall()
        else:
            rows = c.execute("SELECT split_part(email, '@', 1) FROM users WHERE email = ANY(%s)",
                             ([f"{i}@drill.msdb.test" for i in ids],)).fetchall()
    return {r[0] for r in rows}


# -- projection ---------------------------------------------------------------------------


def project_rto(*, copy_mb_s: float | None, replay_mb_s: float | None, wal_per_data_byte: float,
                growth_gb_per_year: float, fixed_s: float, target_s: float,
                backup_interval_days: float = 1.0, years: int = 5) -> dict:
    """RTO in years 1..N: copy the database at its size then + replay one backup
    interval's WAL + the measured fixed parts (promotion, reconnection)."""
    if not copy_mb_s or not replay_mb_s or copy_mb_s <= 0 or replay_mb_s <= 0:
        return {"years": [], "breaks_in_year": None,
                "note": "not projected: " + ("copy" if not copy_mb_s else "WAL replay") +
                        " throughput was not measured (a replay rate needs at least "
                        f"{MIN_REPLAY_BYTES // 2**20} MB of WAL replayed)"}
    rows = []
    wal_mb = growth_gb_per_year * 1024 / 365 * backup_interval_days * wal_per_data_byte
    replay_s = wal_mb / replay_mb_s
    for y in range(1, years + 1):
        size_mb = growth_gb_per_year * 1024 * y
        copy_s = size_mb / copy_mb_s
        rto = copy_s + replay_s + fixed_s
        rows.append({"year": y, "size_gb": round(size_mb / 1024, 1), "copy_s": round(copy_s, 1),
                     "wal_replay_s": round(replay_s, 1), "fixed_s": round(fixed_s, 2),
                     "rto_s": round(rto, 1), "meets_target": rto <= target_s})
    breaks = next((r["year"] for r in rows if not r["meets_target"]), None)
    # Beyond the horizon: the year (size grows linearly) copying alone would break it.
    per_year = growth_gb_per_year * 1024 / copy_mb_s
    beyond = math.floor((target_s - replay_s - fixed_s) / per_year) + 1 if per_year > 0 else None
    if beyond is not None and beyond < 1:
        beyond = 1
    return {"years": rows, "breaks_in_year": breaks,
            "breaks_in_year_extrapolated": beyond if breaks is None else breaks,
            "assumptions": {"growth_gb_per_year": growth_gb_per_year, "copy_mb_s": round(copy_mb_s, 1),
                            "wal_replay_mb_s": round(replay_mb_s, 1),
                            "wal_bytes_per_data_byte": round(wal_per_data_byte, 2),
                            "wal_replayed_per_restore_mb": round(wal_mb, 1),
                            "backup_interval_days": backup_interval_days,
                            "fixed_s": round(fixed_s, 2), "target_s": target_s}}


def combined_projection(ms: list[dict], db: str, target_s: float) -> dict:
    """One projection over several strategies' runs, from the slowest measured
    rates (copy; replay where enough WAL was replayed) and the largest fixed
    parts and WAL volume: a planning figure should not flatter."""
    copies = [m for m in ms if m.get("copy_mb_s")]
    replays = [m for m in ms if m.get("wal_replay_mb_s")]
    slow_copy = min(copies, key=lambda m: m["copy_mb_s"], default=None)
    slow_replay = min(replays, key=lambda m: m["wal_replay_mb_s"], default=None)
    fixed = max((m["rto_promotion_s"] or 0) + m["rto_reconnect_s"] + m["rto_destroy_s"] for m in ms)
    out = project_rto(copy_mb_s=slow_copy and slow_copy["copy_mb_s"],
                      replay_mb_s=slow_replay and slow_replay["wal_replay_mb_s"],
                      wal_per_data_byte=max(m["wal_bytes_per_data_byte"] for m in ms),
                      growth_gb_per_year=GROWTH_GB_PER_YEAR[db], fixed_s=fixed, target_s=target_s)
    out["from"] = {"copy": slow_copy and slow_copy["wal"], "wal_replay": slow_replay and slow_replay["wal"]}
    return out


# -- restore drill ----------------------------------------------------------------------------


@dataclass
class RestoreParams:
    db: str
    wal: str
    archive_timeout_s: int
    disaster_after_s: float
    target: tuple[str, float] | None
    writers: int
    state_dir: Path
    base_port: int
    keep_days: float
    keep_last: int
    keep_stack: bool = False
    source: str = "primary"      # restore from: primary (this region's backups) or geo


def _dbname(db: str) -> str:
    from .topology import SERVICE_BY_NAME
    return SERVICE_BY_NAME[db].database


def _db_stats(inst: PgInstance, db: str) -> dict:
    from .topology import SERVICE_BY_NAME
    with inst.connect() as c:
        lsn = c.execute("SELECT pg_current_wal_lsn()::text, pg_database_size(%s)",
                        (SERVICE_BY_NAME[db].database,)).fetchone()
    from .backup import parse_lsn
    return {"lsn": parse_lsn(lsn[0]), "db_bytes": lsn[1], "t": time.time()}


def _newest_archived(d: Path) -> dict | None:
    from .backup import WAL_RE
    files = [p for p in d.iterdir() if WAL_RE.match(p.name)] if d.is_dir() else []
    if not files:
        return None
    p = max(files, key=lambda p: p.name)
    return {"segment": p.name, "archived_ts": p.stat().st_mtime, "archived_utc": _utc(p.stat().st_mtime)}


def restore_drill(p: RestoreParams, rd: RunDir, slo: dict, log=print) -> dict:
    """One WAL strategy on a fresh stack; returns results.json's document."""
    from scenarios.seed import seed
    metrics: dict = {"wal": p.wal, "db": p.db, "archive_timeout_s": p.archive_timeout_s,
                     "restored_from": p.source}
    events: dict = {}
    with DrillStack(p.state_dir, p.base_port, p.archive_timeout_s, log=log, keep=p.keep_stack) as ds:
        inst = ds.instance(p.db)
        url = ds.info["services"][p.db]["url"]
        data = seed(ds.info["services"], users=4, products=4, stock=10_000_000) if p.db == "orders" else {}
        bs = ds.backup_set(inst)
        streamer = None
        if p.wal != "archive":
            streamer = WalStreamer(bs, sync=p.wal == "stream-sync")
            streamer.start()
            ds.adopt(streamer.rec)
            log(f"  pg_receivewal streaming ({'synchronous' if streamer.sync else 'asynchronous'})")
        backup = bs.take()
        geo = bs.geo_sync()
        pruned = bs.prune(Retention(keep_last=p.keep_last, keep_days=p.keep_days))
        log(f"  base backup {backup.label}: {backup.bytes / 1e6:.1f} MB in {backup.seconds:.2f} s, "
            f"verified in {backup.verify_seconds:.2f} s; geo copy {geo}")
        writer = Writer(p.db, url, rd, seed=data)
        before = _db_stats(inst, p.db)
        stop = threading.Event()
        threads = writer.run_until(stop, p.writers, "load")
        target_abs = None
        try:
            time.sleep(p.disaster_after_s)
            after = _db_stats(inst, p.db)
            archived = _newest_archived(bs.archive_dir)
            # -- the disaster: kill -9, then the data directory is gone --
            rec = next(procs.ProcRecord.from_json(x) for x in ds.info["processes"] if x["name"] == inst.name)
            t_disaster = time.time()
            procs.signal_all(rec, signal.SIGKILL)
            stop.set()     # no new writes; those in flight end on their own
            deadline = time.monotonic() + 10
            # A backend forked while the first signals went out is killed too.
            while procs.signal_all(rec, signal.SIGKILL) and time.monotonic() < deadline:
                time.sleep(0.01)
            shutil.rmtree(inst.datadir)
            t_destroyed = time.time()
        finally:
            stop.set()
        log(f"  disaster at {_utc(t_disaster)}: {len(writer.acks)} writes acknowledged before it; "
            f"{inst.name} killed and its data directory deleted")
        if streamer is not None:
            streamer.stop()
        if p.source == "geo":
            # The region is lost with the server: no last copy to the geo
            # region; restore from what it already held.
            region = bs.lose_region()
            metrics["region_lost"] = region
            source = bs.geo_copy()
            archived = _newest_archived(source.archive_dir)
            log(f"  region lost: {region['base_backups']} base backup(s) and {region['archived_wal']} "
                f"archived WAL file(s) gone; restoring from the geo copy")
        else:
            bs.geo_sync()
            source = bs
        if p.target is not None:
            target_abs = p.target[1] if p.target[0] == "abs" else t_disaster - p.target[1]
        dest = ds.restored_instance(inst)
        res, new_rec = restore(source, dest, target_time=target_abs)
        ds.adopt(new_rec)
        log(f"  restored {res.backup} + WAL to {res.wal_chain['last']}"
            f"{' (partial)' if res.wal_chain['last_partial'] else ''}; read-write after "
            f"{res.t_read_write - t_disaster:.2f} s")
        ds.repoint(p.db, dest.port)
        t_repointed = time.time()
        probe = requests.Session()
        probe.trust_env = False
        first = None
        deadline = time.monotonic() + 600
        while first is None and time.monotonic() < deadline:
            first = writer.write_once(probe, "probe", "after-restore")
            if first is None:
                time.sleep(0.05)
        for t in threads:
            t.join(timeout=15)
        writer.close()
        if first is not None:
            ds.repoint_others(inst.port, dest.port, done=f"{p.db}-db")
        if first is None:
            raise InfraError(f"no write through the {p.db} API succeeded within 600 s of the restore "
                             f"(proxy {p.db}-db -> 127.0.0.1:{dest.port})")
        # Until the proxy was repointed the service reached no database but the
        # dead one: an ack before that was committed there (even if it arrived
        # just after the kill).  The first ack after it is the first write the
        # restored instance served (a writer that waited for a connection may
        # beat the probe).
        t_first = min(a["ack_ts"] for a in writer.acks if a["ack_ts"] > t_repointed)
        acked = [a for a in writer.acks if a["ack_ts"] <= t_repointed]
        present = present_ids(dest, p.db, [a["id"] for a in acked])
        lost = [a for a in acked if a["id"] not in present]
        recovered = [a for a in acked if a["id"] in present]
        rd.write_json("lost.json", lost)
        last_rec = max((a["ack_ts"] for a in recovered), default=None)
        if lost:
            ref = last_rec if last_rec is not None else backup.finished_at
            rpo_s = max(0.0, t_disaster - ref)
        else:
            rpo_s = 0.0
        # RTO, in contiguous parts that add up to the total.
        redo_start = res.t_redo_start or res.t_start
        redo_done = res.t_redo_done
        parts = {
            "rto_destroy_s": t_destroyed - t_disaster,
            "rto_copy_s": res.t_copy_end - t_destroyed,
            "rto_wal_replay_s": (redo_done if redo_done else res.t_read_write) - res.t_copy_end,
            "rto_promotion_s": (res.t_read_write - redo_done) if redo_done else None,
            "rto_reconnect_s": t_first - res.t_read_write,
        }
        rto_s = t_first - t_disaster
        copy_mb_s = (res.copy_bytes / 1e6) / (res.t_copy_end - res.t_copy_start) \
            if res.t_copy_end > res.t_copy_start else None
        replay_s = (redo_done - redo_start) if redo_done else None
        # Too little WAL replayed says nothing about throughput (start-up dominates).
        replay_mb_s = (res.redo_bytes / 1e6) / replay_s if res.redo_bytes and \
            res.redo_bytes >= MIN_REPLAY_BYTES and replay_s and replay_s > 0 else None
        wal_bytes = after["lsn"] - before["lsn"]
        data_growth = max(1, after["db_bytes"] - before["db_bytes"])
        metrics.update({
            "rpo_lost_writes": len(lost), "rpo_seconds": round(rpo_s, 3), "rto_seconds": round(rto_s, 3),
            **{k: (round(v, 3) if v is not None else None) for k, v in parts.items()},
            "acked_writes": len(acked), "recovered_acked_writes": len(recovered),
            "failed_writes": writer.failed, "unknown_writes": writer.unknown,
            "write_rate_per_s": round(len(acked) / p.disaster_after_s, 1),
            "disaster_utc": _utc(t_disaster),
            "last_recovered_ack_utc": _utc(last_rec) if last_rec else None,
            "first_lost_ack_utc": _utc(min(a["ack_ts"] for a in lost)) if lost else None,
            "last_archived_segment": archived["segment"] if archived else None,
            "last_archived_utc": archived["archived_utc"] if archived else None,
            "seconds_since_last_archive": round(t_disaster - archived["archived_ts"], 3) if archived else None,
            "base_backup": backup.to_json(), "geo_copy": geo, "retention": pruned,
            "wal_chain_last": res.wal_chain["last"], "wal_chain_last_partial": res.wal_chain["last_partial"],
            "last_replayed_commit": res.last_replayed_commit,
            "copy_mb": round(res.copy_bytes / 1e6, 2), "copy_mb_s": round(copy_mb_s, 1) if copy_mb_s else None,
            "wal_replayed_mb": round(res.redo_bytes / 1e6, 3) if res.redo_bytes else None,
            "wal_replay_mb_s": round(replay_mb_s, 1) if replay_mb_s else None,
            "wal_bytes_per_data_byte": round(wal_bytes / data_growth, 2),
            "target_time_utc": _utc(target_abs) if target_abs else None,
        })
        fixed = (parts["rto_promotion_s"] or 0) + parts["rto_reconnect_s"] + parts["rto_destroy_s"]
        metrics["projection"] = project_rto(
            copy_mb_s=copy_mb_s, replay_mb_s=replay_mb_s, wal_per_data_byte=wal_bytes / data_growth,
            growth_gb_per_year=GROWTH_GB_PER_YEAR[p.db], fixed_s=fixed,
            target_s=slo["rto_seconds_max"])
        rd.write_json("restored.json", {"instance": dest.name, "port": dest.port,
                                        "database": _dbname(p.db), "pid": new_rec.pid,
                                        "state_dir": str(p.state_dir), "running": p.keep_stack})
        rd.write_json("restore.json", {**res.to_json(), "events": {
            "disaster": t_disaster, "destroyed": t_destroyed, "repointed": t_repointed,
            "first_write": t_first, **events}})
        checks = [
            C.at_most("rpo-seconds", metrics["rpo_seconds"], slo["rpo_seconds_max"],
                      lost_writes=len(lost), wal=p.wal),
            C.at_most("rto-seconds", metrics["rto_seconds"], slo["rto_seconds_max"],
                      **{k: metrics[k] for k in parts}),
        ]
        if p.wal == "stream-sync" and target_abs is None:
            checks.append(C.at_most("sync-no-acked-write-lost", len(lost), 0,
                                    lost=[a["id"] for a in lost][:20]))
        if target_abs is not None:
            early_missing = [a["id"] for a in lost if a["ack_ts"] < target_abs]
            late_present = [a["id"] for a in recovered if a["invoke_ts"] > target_abs]
            checks.append(C.at_most("target-before-present", len(early_missing), 0,
                                    missing=early_missing[:20]))
            checks.append(C.at_most("target-after-absent", len(late_present), 0,
                                    present=late_present[:20]))
    return C.results_doc("drill-restore", checks, metrics)


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


def _conclude(rd: RunDir, doc: dict, args) -> int:
    """results.json, the checks on the terminal, the report; the exit code."""
    rd.write_json("results.json", doc)
    for c in doc["checks"]:
        print(f"  {c['verdict'].upper():7} {c['name']}: measured {c['measured']}, threshold {c['threshold']}")
    print(f"  verdict: {doc['verdict'].upper()}")
    _report(rd, args)
    return C.exit_code(doc["verdict"])


def _write_run(rd: RunDir, scenario: str, params: dict, slo: dict, start: str) -> dict:
    info = {"scenario": scenario, "parameters": params, "slo": slo, "topology": "dedicated",
            "start": start, "end": None, "status": "running"}
    rd.write_json("run.json", info)
    return info


def cmd_restore(args, slo: dict) -> int:
    modes = parse_modes(args.wal)
    if args.db not in DRILL_DBS:
        raise UsageError(f"--db {args.db!r} is not one of {', '.join(DRILL_DBS)}")
    at = parse_duration(args.archive_timeout, "--archive-timeout")
    if at < 1 or at != int(at):
        raise UsageError(f"--archive-timeout {args.archive_timeout!r} must be a whole number of seconds >= 1")
    after = parse_duration(args.disaster_after, "--disaster-after")
    target = parse_target(args.target_time)
    if target and target[0] == "abs" and target[1] < time.time():
        raise UsageError(f"--target-time {args.target_time!r} is in the past: the drill's first base "
                         f"backup is taken after it starts, so nothing before now is recoverable "
                         f"(use -DURATION, e.g. --target-time=-10s, for a point before the disaster)")
    if target and target[0] == "rel" and target[1] >= after:
        raise UsageError(f"--target-time {args.target_time!r} is before the drill's first write "
                         f"(--disaster-after is {args.disaster_after})")
    if args.writers < 1 or args.writers > 64:
        raise UsageError(f"--writers {args.writers!r} must be between 1 and 64")
    if args.keep_stack and len(modes) > 1:
        raise UsageError(f"--keep-stack needs a single --wal strategy, not {args.wal!r}")
    Retention(keep_last=args.keep_last, keep_days=args.keep_days)   # validates both
    root = RunDir.create(args.out, "drill-restore")
    start = utc_now()
    params = {"db": args.db, "wal": modes, "archive_timeout_s": int(at), "disaster_after_s": after,
              "target_time": args.target_time, "writers": args.writers, "base_port": args.base_port,
              "from": args.source}
    runs = []
    for i, mode in enumerate(modes):
        rd = root if len(modes) == 1 else RunDir.create(str(root.path / mode), "drill-restore")
        info = _write_run(rd, "drill-restore", {**params, "wal": mode}, slo, utc_now())
        print(f"drill restore [{mode}] db={args.db} archive_timeout={int(at)} s disaster after "
              f"{after:g} s{' from the geo copy' if args.source == 'geo' else ''} -> {rd.path}",
              flush=True)
        p = RestoreParams(db=args.db, wal=mode, archive_timeout_s=int(at), disaster_after_s=after,
                          target=target, writers=args.writers, state_dir=Path(args.state_dir),
                          base_port=args.base_port, keep_days=args.keep_days, keep_last=args.keep_last,
                          keep_stack=args.keep_stack, source=args.source)
        with _recorded(rd, info):
            doc = restore_drill(p, rd, slo)
        rd.write_json("results.json", doc)
        runs.append((mode, rd, doc))
        m = doc["metrics"]
        print(f"  RPO: {m['rpo_lost_writes']} of {m['acked_writes']} acknowledged writes lost, "
              f"{m['rpo_seconds']:.2f} s (target <= {slo['rpo_seconds_max']:g} s)")
        print(f"  RTO: {m['rto_seconds']:.2f} s (target <= {slo['rto_seconds_max']:g} s) = destroy "
              f"{m['rto_destroy_s']:.2f} + copy {m['rto_copy_s']:.2f} + WAL replay "
              f"{m['rto_wal_replay_s']:.2f} + promotion {_f(m['rto_promotion_s'])} + reconnection "
              f"{m['rto_reconnect_s']:.2f}")
        pr = m["projection"]
        if pr["years"]:
            print(f"  projection: RTO year 5 {pr['years'][-1]['rto_s']:.0f} s; 2 h target breaks in "
                  f"year {pr['breaks_in_year_extrapolated']}")
        print(f"  verdict: {doc['verdict'].upper()}")
    if len(modes) > 1:
        checks = [{**c, "name": f"{mode}: {c['name']}"} for mode, _, d in runs for c in d["checks"]]
        ms = [d["metrics"] for _, _, d in runs]
        combined = combined_projection(ms, args.db, slo["rto_seconds_max"])
        doc = {"scenario": "drill-restore", "verdict": C.worst(c["verdict"] for c in checks),
               "checks": checks, "metrics": {"strategies": {mode: d["metrics"] for mode, _, d in runs},
                                             "projection": combined}}
        root.write_json("results.json", doc)
        _write_run(root, "drill-restore", params, slo, start)
        info = root.read_json("run.json")
        info.update({"end": utc_now(), "status": "completed", "runs": [str(r.path) for _, r, _ in runs]})
        root.write_json("run.json", info)
    else:
        doc = runs[0][2]
    _report(root, args)
    return C.exit_code(doc["verdict"])


def _f(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def _report(root: RunDir, args) -> None:
    from reports.drill import build_drill_report
    try:
        html, pdf = build_drill_report(root.path, pdf=not getattr(args, "no_pdf", False))
        print(f"report: {html}" + (f", {pdf}" if pdf else ""))
    except Exception as e:   # the report is a view; the verdict is in results.json
        print(f"warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)


def _sigterm(signum, frame):
    raise KeyboardInterrupt   # the same clean-up path as Ctrl-C: every finally runs


def drill_command(args) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    slo = _slo(args.slo)
    if args.base_port is None:
        args.base_port = DEFAULT_DRILL_PORT
    if args.db is None:
        args.db = "users" if args.drill == "masked" else "orders"
    if args.drill != "restore" and getattr(args, "source", "primary") != "primary":
        raise UsageError(f"--from {args.source} applies to `msdb drill restore` only "
                         f"({args.drill} restores from this region's backups)")
    if args.drill == "restore":
        return cmd_restore(args, slo)
    if args.drill == "pitr":
        return cmd_pitr(args, slo)
    if args.drill == "masked":
        return cmd_masked(args, slo)
    raise UsageError(f"unknown drill {args.drill!r} (known: restore, pitr, masked)")


def _archive_now(inst: PgInstance, bs: BackupSet, timeout: float = 30.0) -> str:
    """pg_switch_wal() and wait until the closed segment is in the archive (the
    operator's first move after an accident: make the WAL up to now recoverable)."""
    with inst.connect() as c:
        seg = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + timeout
    while not (bs.archive_dir / seg).exists():
        if time.monotonic() > deadline:
            raise InfraError(f"WAL segment {seg} was not archived into {bs.archive_dir} within "
                             f"{timeout:.0f} s (archive_command failing? see the server log)")
        time.sleep(0.05)
    return seg


def _common_checks(args) -> tuple[float, int]:
    if args.db not in DRILL_DBS:
        raise UsageError(f"--db {args.db!r} is not one of {', '.join(DRILL_DBS)}")
    at = parse_duration(args.archive_timeout, "--archive-timeout")
    if at < 1 or at != int(at):
        raise UsageError(f"--archive-timeout {args.archive_timeout!r} must be a whole number of seconds >= 1")
    after = parse_duration(args.disaster_after, "--disaster-after")
    if args.writers < 1 or args.writers > 64:
        raise UsageError(f"--writers {args.writers!r} must be between 1 and 64")
    return after, int(at)


def cmd_pitr(args, slo) -> int:
    """An accidental `DELETE` (no WHERE), restored aside to just before it."""
    from scenarios.seed import seed
    from .topology import SERVICE_BY_NAME
    after, at = _common_checks(args)
    if args.target_time is not None:
        raise UsageError(f"--target-time {args.target_time!r}: the pitr drill chooses its target "
                         f"(just before its own accident)")
    rd = RunDir.create(args.out, "drill-pitr")
    info = _write_run(rd, "drill-pitr", {"db": args.db, "accident_after_s": after, "archive_timeout_s": at,
                                         "writers": args.writers, "base_port": args.base_port}, slo, utc_now())
    print(f"drill pitr db={args.db}: writes for {after:g} s, an accidental DELETE, writes after it; "
          f"restore to just before it -> {rd.path}", flush=True)
    dbname = SERVICE_BY_NAME[args.db].database
    with _recorded(rd, info):
        with DrillStack(Path(args.state_dir), args.base_port, at) as ds:
            inst = ds.instance(args.db)
            data = seed(ds.info["services"], users=4, products=4, stock=10_000_000) \
                if args.db == "orders" else {}
            bs = ds.backup_set(inst)
            backup = bs.take()
            writer = Writer(args.db, ds.info["services"][args.db]["url"], rd, seed=data)
            stop = threading.Event()
            threads = writer.run_until(stop, args.writers, "load")
            try:
                time.sleep(after)
                # Writers quiesce so that every row the DELETE hits existed at the target.
                stop.set()
                for t in threads:
                    t.join(timeout=15)
                stop = threading.Event()
                threads = []
                target = time.time()
                time.sleep(0.05)
                with inst.connect(dbname) as c:
                    with c.transaction():
                        if args.db == "orders":
                            c.execute("DELETE FROM order_items")
                            deleted = [r[0] for r in c.execute("DELETE FROM orders RETURNING id::text")]
                        else:
                            c.execute("DELETE FROM user_profiles")
                            deleted = [r[0] for r in c.execute("DELETE FROM users RETURNING id::text")]
                t_accident = time.time()
                threads = writer.run_until(stop, args.writers, "after-accident")
                time.sleep(min(2.0, after))   # life goes on after the accident
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=15)
            writer.close()
            print(f"  accident at {_utc(t_accident)}: DELETE removed {len(deleted)} rows; target "
                  f"{_utc(target)}")
            seg = _archive_now(inst, bs)
            dest = ds.restored_instance(inst, "pitr")
            res, rec = restore(bs, dest, target_time=target, sources=[bs.archive_dir])
            ds.adopt(rec)
            with dest.connect(dbname) as c:
                table = "orders" if args.db == "orders" else "users"
                back = {r[0] for r in c.execute(f"SELECT id::text FROM {table} WHERE id::text = ANY(%s)",
                                                (deleted,))}
                after_target = c.execute(f"SELECT count(*) FROM {table} WHERE created_at > %s",
                                         (datetime.fromtimestamp(target, timezone.utc),)).fetchone()[0]
            acked = writer.acks
            present = present_ids(dest, args.db, [a["id"] for a in acked])
            early_missing = [a["id"] for a in acked if a["ack_ts"] < target and a["id"] not in present]
            late_present = [a["id"] for a in acked if a["invoke_ts"] > target and a["id"] in present]
            late = [a for a in acked if a["invoke_ts"] > target]
            metrics = {
                "db": args.db, "deleted_rows": len(deleted), "deleted_rows_back": len(back),
                "rows_created_after_target": after_target,
                "acked_before_target": sum(a["ack_ts"] < target for a in acked),
                "acked_before_target_missing": len(early_missing),
                "acked_after_target": len(late), "acked_after_target_present": len(late_present),
                "target_utc": _utc(target), "accident_utc": _utc(t_accident),
                "restore_seconds": round(res.t_read_write - res.t_copy_start, 3),
                "base_backup": backup.label, "switched_segment": seg,
                "recovery_stopped": next((ln.split("LOG:", 1)[-1].strip() for ln in res.log_lines
                                          if "recovery stopping before" in ln), None),
            }
            checks = [
                C.at_least("deleted-rows-back", len(back), len(deleted), missing=sorted(set(deleted) - back)[:20]),
                C.at_least("accident-deleted-rows", len(deleted), 1,
                           reason="an accident that deleted nothing proves nothing"),
                C.at_most("nothing-after-target", after_target + len(late_present), 0,
                          rows_created_after_target=after_target, acked_after_target_present=late_present[:20]),
                C.at_least("writes-after-accident", len(late), 1,
                           reason="without writes after the target, 'nothing after it' proves nothing"),
                C.at_most("acked-before-target-present", len(early_missing), 0, missing=early_missing[:20]),
            ]
            doc = C.results_doc("drill-pitr", checks, metrics)
            rd.write_json("restore.json", res.to_json())
    return _conclude(rd, doc, args)


MASK_SQL = (
    "UPDATE users SET email = 'user-' || substr(md5(id::text), 1, 20) || '@masked.invalid', "
    "first_name = CASE WHEN first_name IS NULL THEN NULL ELSE 'first-' || substr(md5('f' || id::text), 1, 8) END, "
    "last_name = CASE WHEN last_name IS NULL THEN NULL ELSE 'last-' || substr(md5('l' || id::text), 1, 8) END, "
    "password_hash = 'masked'",
    "UPDATE user_profiles SET avatar_url = NULL, preferences = NULL",
)


def leaked(text: str, needles: list[str]) -> list[str]:
    """Which needles occur in text (case-insensitive)."""
    low = text.lower()
    return [n for n in needles if n.lower() in low]


def cmd_masked(args, slo) -> int:
    """A restored copy of the users database with emails and names masked, for
    non-production (seed §8.1); delivered as a pg_dump of the masked copy."""
    from .topology import SERVICE_BY_NAME
    after, at = _common_checks(args)
    if args.db != "users":
        raise UsageError(f"--db {args.db!r}: the masked drill masks the users database (emails, names)")
    rd = RunDir.create(args.out, "drill-masked")
    info = _write_run(rd, "drill-masked", {"db": "users", "writes_s": after, "base_port": args.base_port},
                      slo, utc_now())
    print(f"drill masked: users written for {after:g} s, restored aside, masked, dumped -> {rd.path}",
          flush=True)
    dbname = SERVICE_BY_NAME["users"].database
    with _recorded(rd, info):
        with DrillStack(Path(args.state_dir), args.base_port, at) as ds:
            inst = ds.instance("users")
            bs = ds.backup_set(inst)
            writer = Writer("users", ds.info["services"]["users"]["url"], rd)
            stop = threading.Event()
            threads = writer.run_until(stop, args.writers, "load")
            time.sleep(after / 2)
            bs.take()
            time.sleep(after / 2)
            stop.set()
            for t in threads:
                t.join(timeout=15)
            writer.close()
            _archive_now(inst, bs)
            with inst.connect(dbname) as c:
                originals = [r[0] for r in c.execute("SELECT email FROM users")]
                names = [r[0] for r in c.execute("SELECT last_name FROM users WHERE last_name IS NOT NULL "
                                                 "AND length(last_name) >= 6")]
            dest = ds.restored_instance(inst, "masked")
            res, rec = restore(bs, dest, sources=[bs.archive_dir])
            ds.adopt(rec)

            def dump() -> str:
                return dest.rt.run("pg_dump", ["-h", "127.0.0.1", "-p", str(dest.port), "-U", "postgres",
                                               "-d", dbname, "--no-password"],
                                   env={"PGPASSWORD": dest.superuser_password}).stdout
            before = dump()
            seen_before = leaked(before, originals)
            with dest.connect(dbname) as c:
                restored_rows = c.execute("SELECT count(*) FROM users").fetchone()[0]
                with c.transaction():
                    for q in MASK_SQL:
                        c.execute(q)
                c.execute("VACUUM FULL users")
                c.execute("VACUUM FULL user_profiles")
                masked_rows = c.execute("SELECT count(*) FROM users").fetchone()[0]
                direct = c.execute("SELECT count(*) FROM users WHERE email = ANY(%s)", (originals,)).fetchone()[0]
            text = dump()
            (rd.path / "masked-users.sql").write_text(text)
            in_dump = leaked(text, originals)
            names_left = leaked(text, names)
            metrics = {"original_emails": len(originals), "restored_rows": restored_rows,
                       "masked_rows": masked_rows, "emails_in_unmasked_dump": len(seen_before),
                       "original_emails_in_masked_table": direct, "original_emails_in_masked_dump": len(in_dump),
                       "original_names_checked": len(names), "original_names_in_masked_dump": len(names_left),
                       "masked_dump": "masked-users.sql", "masked_dump_bytes": len(text)}
            checks = [
                C.at_least("check-sees-originals", len(seen_before), len(originals),
                           reason="the scan must find every original email in the unmasked restore, "
                                  "or finding none after masking proves nothing"),
                C.at_least("masked-copy-complete", masked_rows, len(originals)),
                C.at_most("no-original-email-in-table", direct, 0),
                C.at_most("no-original-email-in-dump", len(in_dump), 0, leaked=in_dump[:20]),
                C.at_most("no-original-name-in-dump", len(names_left), 0, leaked=names_left[:20]),
            ]
            doc = C.results_doc("drill-masked", checks, metrics)
    return _conclude(rd, doc, args)
