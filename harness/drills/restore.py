"""`msdb drill restore`, one WAL strategy on a fresh stack:

 1. a marker write (known plaintext for the leak scan), base backup
    (pg_basebackup + pg_verifybackup), geo copy (AES-256-GCM, file by file:
    harness/drills/geocrypt.py) and its leak scan (geo_scan.json); for stream
    modes pg_receivewal first (stream-sync: named in synchronous_standby_names);
 2. writers drive acknowledged writes through the service API, each with a
    unique id and the client's acknowledgement time (acks.jsonl, history.jsonl);
 3. disaster: kill -9 of the instance, then its data directory is deleted
    (with --from geo, this region's backups and WAL archive too);
 4. (--from geo: decrypt the geo copy into a scratch directory, an RTO part of
    its own), restore the latest base backup + WAL into a fresh instance (to the end of
    the WAL, or --target-time), repoint the service's `<db>-db` proxy at it;
 5. record what happened (drill.json, restore.json, lost.json): the RPO and
    RTO arithmetic and the checks are harness.drills.rpo_rto and
    harness.checks.drill, from those files.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from scenarios.seed import seed

from ..errors import InfraError
from ..run.rundir import RunDir
from ..stack.topology import SERVICE_BY_NAME
from ..utc import utc
from .backup import BackupInfo, BackupSet, Retention, WalStreamer
from .geocrypt import GeoCryptError, KeySpec, generate_key_file, inspect_copy, scan_for
from .pgrestore import restore
from .rpo_rto import MIN_REPLAY_BYTES, rpo, rto_parts
from .stack import DrillStack, db_stats, newest_archived
from .writer import Writer, present_ids

__all__ = ["RestoreParams", "restore_drill", "GEO_KEY_FILE", "MARKER_PREFIX"]

GEO_KEY_FILE = "geo.key"                 # a generated key: in the state dir, outside the geo copy
MARKER_PREFIX = "msdb-geo-marker-"


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
    geo_key: KeySpec | None = None       # the geo copy's key; None: generated into the state dir
    restore_key: KeySpec | None = None   # --from geo: decrypt with this key instead (wrong-key drill)
    plant_plaintext_geo: bool = False    # the planted weakness: the geo copy written unencrypted


def write_marker(db: str, url: str, seed_data: dict) -> str:
    """One write through the API carrying a random marker string: known
    plaintext that lands in the database's heap pages and its WAL, so the
    leak scan has something to look for."""
    marker = f"{MARKER_PREFIX}{secrets.token_hex(12)}"
    s = requests.Session()
    s.trust_env = False
    if db == "orders":
        r = s.post(f"{url}/orders", headers={"Idempotency-Key": marker}, timeout=30,
                   json={"user_id": seed_data["users"][0]["id"],
                         "items": [{"product_id": seed_data["products"][0], "quantity": 1}]})
    else:
        r = s.post(f"{url}/users", timeout=30, json={"email": f"{marker}@drill.msdb.test",
                                                     "password": "drill-password",
                                                     "first_name": "Marker", "last_name": marker[-8:]})
    if r.status_code != 201:
        raise InfraError(f"the leak scan's marker write (POST {r.url}) got HTTP {r.status_code}: "
                         f"{r.text[:200]}")
    return marker


def geo_scan(bs: BackupSet, backup: BackupInfo, key: KeySpec, marker: str, planted: bool) -> dict:
    """After a geo sync: every byte of the geo copy searched for the marker,
    and the same search of this region's unencrypted backup and archive (the
    control: it must find it, or finding nothing in the copy proves nothing);
    every file of the copy checked for the header and authenticated.  What
    geo_scan.json holds, and the checks geo-leak-scan and geo-copy-encrypted
    judge (harness.checks.drill)."""
    t0 = time.time()
    needle = marker.encode()
    geo = scan_for([bs.geo], needle)
    roots = [Path(backup.path), bs.archive_dir]
    control = scan_for(roots, needle)
    enc = inspect_copy(bs.geo, key.key)
    return {"marker": marker, "planted_plaintext": planted, "key_source": key.source,
            "geo": {"root": str(bs.geo), **geo},
            "control": {"roots": [str(r) for r in roots], **control},
            "encryption": enc, "seconds": round(time.time() - t0, 3), "scanned_utc": utc(time.time())}


def restore_drill(p: RestoreParams, rd: RunDir, log=print) -> dict:
    """One WAL strategy on a fresh stack; writes drill.json and returns its metrics."""
    metrics: dict = {"wal": p.wal, "db": p.db, "archive_timeout_s": p.archive_timeout_s,
                     "restored_from": p.source}
    with DrillStack(p.state_dir, p.base_port, p.archive_timeout_s, log=log, keep=p.keep_stack) as ds:
        inst = ds.instance(p.db)
        url = ds.info.urls[p.db]
        data = seed(ds.info.urls, users=4, products=4, stock=10_000_000) if p.db == "orders" else {}
        bs = ds.backup_set(inst)
        key = p.geo_key
        if key is None:
            (p.state_dir / GEO_KEY_FILE).unlink(missing_ok=True)    # the state dir is the drill's own
            key = generate_key_file(p.state_dir / GEO_KEY_FILE)
            log(f"  geo copy key: generated into {p.state_dir / GEO_KEY_FILE} (mode 0600, outside the "
                f"geo copy; deleted with the state dir)")
        else:
            log(f"  geo copy key: from {key.source}")
        bs.geo_key = None if p.plant_plaintext_geo else key.key
        if p.plant_plaintext_geo:
            log("  PLANTED WEAKNESS: the geo copy is written unencrypted (MSDB_DRILL_PLANT_PLAINTEXT_GEO)")
        marker = write_marker(p.db, url, data)
        streamer = None
        if p.wal != "archive":
            streamer = WalStreamer(bs, sync=p.wal == "stream-sync")
            streamer.start()
            ds.adopt(streamer.rec, "process")
            log(f"  pg_receivewal streaming ({'synchronous' if streamer.sync else 'asynchronous'})")
        backup = bs.take()
        geo = bs.geo_sync()
        pruned = bs.prune(Retention(keep_last=p.keep_last, keep_days=p.keep_days))
        log(f"  base backup {backup.label}: {backup.bytes / 1e6:.1f} MB in {backup.seconds:.2f} s, "
            f"verified in {backup.verify_seconds:.2f} s; geo copy: {geo['base_copied']} base backup(s), "
            f"{geo['wal_copied']} WAL file(s), {geo['bytes'] / 1e6:.1f} MB "
            f"{'encrypted' if geo['encrypted'] else 'UNENCRYPTED'} in {geo['seconds']:.2f} s")
        scan = geo_scan(bs, backup, key, marker, p.plant_plaintext_geo)
        rd.write_json("geo_scan.json", scan)
        log(f"  leak scan: {scan['geo']['matches']} marker match(es) in {scan['geo']['files']} geo file(s) "
            f"({scan['geo']['bytes'] / 1e6:.1f} MB); control: {scan['control']['matches']} in this "
            f"region's backup and archive; {scan['encryption']['encrypted']} of "
            f"{scan['encryption']['files']} geo file(s) authenticate")
        writer = Writer(p.db, url, rd, seed=data)
        before = db_stats(inst, p.db)
        stop = threading.Event()
        threads = writer.run_until(stop, p.writers, "load")
        target_abs = None
        try:
            time.sleep(p.disaster_after_s)
            after = db_stats(inst, p.db)
            archived = newest_archived(bs.archive_dir)
            # -- the disaster: kill -9, then the data directory is gone --
            t_disaster = time.time()
            ds.destroy(inst)
            stop.set()     # no new writes; those in flight end on their own
            t_destroyed = time.time()
        finally:
            stop.set()
        log(f"  disaster at {utc(t_disaster)}: {len(writer.acks)} writes acknowledged before it; "
            f"{inst.name} killed and its data directory deleted")
        if streamer is not None:
            streamer.stop()
        if p.target is not None:
            target_abs = p.target[1] if p.target[0] == "abs" else t_disaster - p.target[1]
        dec = None
        if p.source == "geo":
            # The region is lost with the server: no last copy to the geo
            # region; restore from what it already held, decrypted first.
            region = bs.lose_region()
            metrics["region_lost"] = region
            geo_src = bs.geo_copy()
            archived = newest_archived(geo_src.archive_dir)
            log(f"  region lost: {region['base_backups']} base backup(s) and {region['archived_wal']} "
                f"archived WAL file(s) gone; restoring from the geo copy")
            rkey = p.restore_key or key
            t_dec0 = time.time()
            try:
                source, dec = geo_src.decrypted(inst.rt.data_root / "geo-restore" / inst.name, rkey.key,
                                                before=target_abs)
            except GeoCryptError as e:
                raise InfraError(f"the geo copy does not decrypt with the key from {rkey.source}: "
                                 f"{e.relpath}: {e.reason}; nothing was restored") from None
            dec.update(start=t_dec0, end=time.time(), key_source=rkey.source)
            log(f"  geo copy decrypted with the key from {rkey.source}: {dec['files']} file(s), "
                f"{dec['bytes'] / 1e6:.1f} MB in {dec['end'] - dec['start']:.2f} s")
        else:
            bs.geo_sync()
            source = bs
        dest = ds.restored_instance(inst)
        res, new_rec = restore(source, dest, target_time=target_abs)
        ds.adopt(new_rec, "postgres")
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
        if first is None:
            raise InfraError(f"no write through the {p.db} API succeeded within 600 s of the restore "
                             f"(proxy {p.db}-db -> 127.0.0.1:{dest.port})")
        ds.repoint_others(inst.port, dest.port, done=f"{p.db}-db")
        # Until the proxy was repointed the service reached no database but the
        # dead one: an ack before that was committed there (even if it arrived
        # just after the kill).  The first ack after it is the first write the
        # restored instance served (a writer that waited for a connection may
        # beat the probe).
        t_first = min(a["ack_ts"] for a in writer.acks if a["ack_ts"] > t_repointed)
        acked = [a for a in writer.acks if a["ack_ts"] <= t_repointed]
        present = present_ids(dest, p.db, [a["id"] for a in writer.acks])   # one query for every ack
        r = rpo(acked=acked, present=present, disaster=t_disaster, backup_end=backup.finished_at)
        lost, recovered = r["lost"], r["recovered"]
        rd.write_json("lost.json", lost)
        # Writes acknowledged after the repoint were served by the restored
        # instance: every one of them must be there (a service that answers
        # 201 for a write its restored database lacks is a lost write too).
        later = [a for a in writer.acks if a["ack_ts"] > t_repointed]
        lost_later = [a for a in later if a["id"] not in present]
        rd.write_json("lost_after_restore.json", lost_later)
        parts = rto_parts(disaster=t_disaster, destroyed=t_destroyed, copy_end=res.t_copy_end,
                          redo_done=res.t_redo_done, read_write=res.t_read_write, first_write=t_first)
        # Decrypting the geo copy is a part of its own, taken out of the copy
        # part it happened in (that part runs from the data directory deleted
        # to the backup copied): the parts still add up to the total.
        decrypt_s = (dec["end"] - dec["start"]) if dec else None
        parts = {"rto_destroy_s": parts.pop("rto_destroy_s"), "rto_decrypt_s": decrypt_s,
                 "rto_copy_s": parts.pop("rto_copy_s") - (decrypt_s or 0.0), **parts}
        redo_start = res.t_redo_start or res.t_start
        copy_mb_s = (res.copy_bytes / 1e6) / (res.t_copy_end - res.t_copy_start) \
            if res.t_copy_end > res.t_copy_start else None
        replay_s = (res.t_redo_done - redo_start) if res.t_redo_done else None
        # Too little WAL replayed says nothing about throughput (start-up dominates).
        replay_mb_s = (res.redo_bytes / 1e6) / replay_s if res.redo_bytes and \
            res.redo_bytes >= MIN_REPLAY_BYTES and replay_s and replay_s > 0 else None
        wal_bytes = after["lsn"] - before["lsn"]
        data_growth = max(1, after["db_bytes"] - before["db_bytes"])
        last_rec = r["last_recovered_ack"]
        metrics.update({
            "rpo_lost_writes": len(lost), "rpo_seconds": round(r["rpo_s"], 3),
            "rto_seconds": round(t_first - t_disaster, 3),
            **{k: (round(v, 3) if v is not None else None) for k, v in parts.items()},
            "acked_writes": len(acked), "recovered_acked_writes": len(recovered),
            "acked_after_restore": len(later), "acked_after_restore_lost": len(lost_later),
            "failed_writes": writer.failed, "unknown_writes": writer.unknown,
            "write_rate_per_s": round(len(acked) / p.disaster_after_s, 1),
            "disaster_utc": utc(t_disaster),
            "last_recovered_ack_utc": utc(last_rec) if last_rec else None,
            "first_lost_ack_utc": utc(min(a["ack_ts"] for a in lost)) if lost else None,
            "last_archived_segment": archived["segment"] if archived else None,
            "last_archived_utc": archived["archived_utc"] if archived else None,
            "seconds_since_last_archive": round(t_disaster - archived["archived_ts"], 3) if archived else None,
            "base_backup": backup.to_json(), "geo_copy": geo, "retention": pruned,
            "geo_key_source": key.source, "geo_planted_plaintext": p.plant_plaintext_geo,
            "geo_decrypt": {k: dec[k] for k in ("files", "bytes", "seconds", "key_source")} if dec else None,
            "decrypt_mb": round(dec["bytes"] / 1e6, 2) if dec else None,
            "decrypt_mb_s": round(dec["bytes"] / 1e6 / decrypt_s, 1) if dec and decrypt_s else None,
            "wal_chain_last": res.wal_chain["last"], "wal_chain_last_partial": res.wal_chain["last_partial"],
            "last_replayed_commit": res.last_replayed_commit,
            "copy_mb": round(res.copy_bytes / 1e6, 2), "copy_mb_s": round(copy_mb_s, 1) if copy_mb_s else None,
            "wal_replayed_mb": round(res.redo_bytes / 1e6, 3) if res.redo_bytes else None,
            "wal_replay_mb_s": round(replay_mb_s, 1) if replay_mb_s else None,
            "wal_bytes_per_data_byte": round(wal_bytes / data_growth, 2),
            "target_time_utc": utc(target_abs) if target_abs else None,
        })
        target = None
        if target_abs is not None:
            target = {"early_missing": [a["id"] for a in lost if a["ack_ts"] < target_abs],
                      "late_present": [a["id"] for a in recovered if a["invoke_ts"] > target_abs]}
        rd.write_json("drill.json", {
            "metrics": metrics, "target": target,
            # unrounded, for the projection (harness.drills.rpo_rto.project_rto)
            "rates": {"copy_mb_s": copy_mb_s, "replay_mb_s": replay_mb_s,
                      "wal_per_data_byte": wal_bytes / data_growth,
                      "fixed_s": (parts["rto_promotion_s"] or 0) + parts["rto_reconnect_s"]
                      + parts["rto_destroy_s"]}})
        rd.write_json("restored.json", {"instance": dest.name, "port": dest.port,
                                        "database": SERVICE_BY_NAME[p.db].database, "pid": new_rec.pid,
                                        "state_dir": str(p.state_dir), "running": p.keep_stack})
        rd.write_json("restore.json", {**res.to_json(), "events": {
            "disaster": t_disaster, "destroyed": t_destroyed,
            **({"decrypt_start": dec["start"], "decrypt_end": dec["end"]} if dec else {}),
            "repointed": t_repointed, "first_write": t_first}})
    return metrics
