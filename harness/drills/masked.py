"""`msdb drill masked`: a restored copy of the users database with emails
and names masked, for non-production (seed §8.1), delivered as a pg_dump of
the masked copy.  The scan is calibrated on the unmasked restore first: it
must find every original email there, or finding none after masking proves
nothing.  The evidence goes to drill.json; harness.checks.drill judges it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..run.rundir import RunDir
from ..stack.topology import SERVICE_BY_NAME
from .pgrestore import restore
from .stack import DrillStack, archive_now
from .writer import Writer

__all__ = ["masked_drill", "MASK_SQL", "leaked"]

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


def masked_drill(*, after_s: float, archive_timeout_s: int, writers: int, state_dir: Path,
                 base_port: int, rd: RunDir) -> dict:
    dbname = SERVICE_BY_NAME["users"].database
    with DrillStack(state_dir, base_port, archive_timeout_s) as ds:
        inst = ds.instance("users")
        bs = ds.backup_set(inst)
        writer = Writer("users", ds.info.urls["users"], rd)
        stop = threading.Event()
        threads = writer.run_until(stop, writers, "load")
        time.sleep(after_s / 2)
        bs.take()
        time.sleep(after_s / 2)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        writer.close()
        archive_now(inst, bs)
        with inst.connect(dbname) as c:
            originals = [r[0] for r in c.execute("SELECT email FROM users")]
            names = [r[0] for r in c.execute("SELECT last_name FROM users WHERE last_name IS NOT NULL "
                                             "AND length(last_name) >= 6")]
        dest = ds.restored_instance(inst, "masked")
        res, rec = restore(bs, dest, sources=[bs.archive_dir])
        ds.adopt(rec, "postgres")

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
        rd.write_json("drill.json", {"metrics": metrics, "evidence": {
            "in_dump": in_dump[:20], "names_left": names_left[:20]}})
    return metrics
