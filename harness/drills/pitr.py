"""`msdb drill pitr`: an accidental `DELETE` (no WHERE), restored aside to
just before it.  Writers run, quiesce, the accident happens, writes go on
after it; the restore to the moment before must bring back every deleted
row and every write acknowledged before it, and nothing written after it.
The evidence goes to drill.json; harness.checks.drill judges it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from scenarios.seed import seed

from ..run.rundir import RunDir
from ..stack.topology import SERVICE_BY_NAME
from ..utc import utc
from .pgrestore import restore
from .stack import DrillStack, archive_now
from .writer import Writer, present_ids

__all__ = ["pitr_drill"]


def pitr_drill(*, db: str, after_s: float, archive_timeout_s: int, writers: int, state_dir: Path,
               base_port: int, rd: RunDir) -> dict:
    dbname = SERVICE_BY_NAME[db].database
    with DrillStack(state_dir, base_port, archive_timeout_s) as ds:
        inst = ds.instance(db)
        data = seed(ds.info.urls, users=4, products=4, stock=10_000_000) if db == "orders" else {}
        bs = ds.backup_set(inst)
        backup = bs.take()
        writer = Writer(db, ds.info.urls[db], rd, seed=data)
        stop = threading.Event()
        threads = writer.run_until(stop, writers, "load")
        try:
            time.sleep(after_s)
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
                    if db == "orders":
                        c.execute("DELETE FROM order_items")
                        deleted = [r[0] for r in c.execute("DELETE FROM orders RETURNING id::text")]
                    else:
                        c.execute("DELETE FROM user_profiles")
                        deleted = [r[0] for r in c.execute("DELETE FROM users RETURNING id::text")]
            t_accident = time.time()
            threads = writer.run_until(stop, writers, "after-accident")
            time.sleep(min(2.0, after_s))   # life goes on after the accident
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
        writer.close()
        print(f"  accident at {utc(t_accident)}: DELETE removed {len(deleted)} rows; target "
              f"{utc(target)}")
        seg = archive_now(inst, bs)
        dest = ds.restored_instance(inst, "pitr")
        res, rec = restore(bs, dest, target_time=target, sources=[bs.archive_dir])
        ds.adopt(rec, "postgres")
        table = "orders" if db == "orders" else "users"
        with dest.connect(dbname) as c:
            back = {r[0] for r in c.execute(f"SELECT id::text FROM {table} WHERE id::text = ANY(%s)",
                                            (deleted,))}
            after_target = c.execute(f"SELECT count(*) FROM {table} WHERE created_at > %s",
                                     (datetime.fromtimestamp(target, timezone.utc),)).fetchone()[0]
        acked = writer.acks
        present = present_ids(dest, db, [a["id"] for a in acked])
        early_missing = [a["id"] for a in acked if a["ack_ts"] < target and a["id"] not in present]
        late_present = [a["id"] for a in acked if a["invoke_ts"] > target and a["id"] in present]
        late = [a for a in acked if a["invoke_ts"] > target]
        metrics = {
            "db": db, "deleted_rows": len(deleted), "deleted_rows_back": len(back),
            "rows_created_after_target": after_target,
            "acked_before_target": sum(a["ack_ts"] < target for a in acked),
            "acked_before_target_missing": len(early_missing),
            "acked_after_target": len(late), "acked_after_target_present": len(late_present),
            "target_utc": utc(target), "accident_utc": utc(t_accident),
            "restore_seconds": round(res.t_read_write - res.t_copy_start, 3),
            "base_backup": backup.label, "switched_segment": seg,
            "recovery_stopped": next((ln.split("LOG:", 1)[-1].strip() for ln in res.log_lines
                                      if "recovery stopping before" in ln), None),
        }
        rd.write_json("drill.json", {"metrics": metrics, "evidence": {
            "deleted_missing": sorted(set(deleted) - back)[:20], "early_missing": early_missing[:20],
            "late_present": late_present[:20]}})
        rd.write_json("restore.json", res.to_json())
    return metrics
