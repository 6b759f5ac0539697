"""A scripted intruder beside the normal workload of a `security` run (seed
§8.2's suspicious patterns), one kind at a time at fixed shares of the run:

    cross-database  at 40 %  the users role opens the orders database, then
                             the catalog role the payments database
    failed-logins   at 50 %  8 logins as the catalog role with a wrong password
    bulk-read       at 60 %  the users role reads every user's email at once
    odd-rate        at 70 %  the payments role reads its table as fast as it can
                             (at most 500 times a second) for 5 s

It connects directly (never through the fault proxy), never names itself
(the detector must not rely on application names), and journals each
intrusion with its UTC start and end to `intrusions.jsonl`.

    python -m harness.security.intruder --state-dir DIR --out RUN_DIR
                                        --t0 EPOCH --duration S [--parent PID]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..stack import procs
from ..stack.info import StackInfo
from ..utc import utc

__all__ = ["PLAN", "main", "role_dsn"]

log = logging.getLogger("msdb.security.intruder")

PLAN = (("cross-database", 0.40), ("failed-logins", 0.50), ("bulk-read", 0.60), ("odd-rate", 0.70))
ODD_RATE_PER_S = 500
ODD_RATE_S = 5.0
FAILED_LOGINS = 8


def role_dsn(info: StackInfo, role_of: str, db_of: str, **override) -> str:
    """`role_of`'s login (role, password, TLS settings) aimed at `db_of`'s database."""
    mine = conninfo_to_dict(info.databases[role_of].dsn)
    there = conninfo_to_dict(info.databases[db_of].dsn)
    mine.update(host=there["host"], port=there["port"], dbname=there["dbname"],
                connect_timeout=3, application_name="")
    mine.update(override)
    return make_conninfo(**mine)


def _refused(dsn: str) -> str:
    try:
        psycopg.connect(dsn).close()
    except psycopg.OperationalError as e:
        return "refused: " + str(e).strip().splitlines()[0][-160:]
    return "ACCEPTED"


def cross_database(info: StackInfo, stop: threading.Event) -> dict:
    done = {}
    for mine, other in (("users", "orders"), ("catalog", "payments")):
        if mine in info.databases and other in info.databases:
            done[f"{info.databases[mine].role} -> {info.databases[other].database}"] = \
                _refused(role_dsn(info, mine, other))
    return {"role": info.databases["users"].role, "attempts": done}


def failed_logins(info: StackInfo, stop: threading.Event) -> dict:
    results = []
    for _ in range(FAILED_LOGINS):
        if stop.is_set():
            break
        results.append(_refused(role_dsn(info, "catalog", "catalog", password="not-the-password")))
        time.sleep(0.2)
    return {"role": info.databases["catalog"].role, "attempts": len(results),
            "accepted": sum(r == "ACCEPTED" for r in results)}


def bulk_read(info: StackInfo, stop: threading.Event) -> dict:
    with psycopg.connect(role_dsn(info, "users", "users")) as c:
        rows = c.execute("SELECT id, email FROM users").fetchall()
    return {"role": info.databases["users"].role, "rows": len(rows)}


def odd_rate(info: StackInfo, stop: threading.Event) -> dict:
    n = 0
    with psycopg.connect(role_dsn(info, "payments", "payments"), autocommit=True) as c:
        t_end = time.monotonic() + ODD_RATE_S
        t0 = time.monotonic()
        while time.monotonic() < t_end and not stop.is_set():
            c.execute("SELECT count(*) FROM payments").fetchone()
            n += 1
            ahead = t0 + n / ODD_RATE_PER_S - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return {"role": info.databases["payments"].role, "queries": n, "seconds": ODD_RATE_S}


KINDS = {"cross-database": cross_database, "failed-logins": failed_logins,
         "bulk-read": bulk_read, "odd-rate": odd_rate}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.security.intruder")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--t0", type=float, required=True, help="epoch seconds: the load's start")
    p.add_argument("--duration", type=float, required=True, help="the load's duration in seconds")
    p.add_argument("--parent", type=int, default=None, help="exit when this PID is gone")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    info = StackInfo.load(args.state_dir)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stop.set())
    with open(Path(args.out) / "intrusions.jsonl", "a") as journal:
        for kind, share in PLAN:
            at = args.t0 + share * args.duration
            while not stop.wait(min(0.2, max(0.0, at - time.time()))):
                if time.time() >= at:
                    break
                if args.parent and procs.start_ticks(args.parent) is None:
                    stop.set()
            if stop.is_set():
                break
            start = time.time()
            try:
                detail, error = KINDS[kind](info, stop), None
            except psycopg.Error as e:
                detail, error = {}, f"{type(e).__name__}: {str(e).strip()[:300]}"
            end = time.time()
            rec = {"kind": kind, "start": start, "end": end, "start_utc": utc(start),
                   "end_utc": utc(end), **detail}
            if error:
                rec["error"] = error
            journal.write(json.dumps(rec) + "\n")
            journal.flush()
            log.info("%s: %s", kind, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
