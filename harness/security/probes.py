"""What a `security` run records once its load has stopped (seed §8), for
harness/checks/security.py to judge from the run directory:

    security.json                 transport (TLS 1.3 seen in pg_stat_ssl,
                                  plaintext and TLS 1.2 refused), isolation
                                  (every cross-service database login and
                                  Redis key-space access), the audit probe
                                  (N known operations per service role and
                                  the audit records found for them), the
                                  scan of the stack's own logs
    secrets.fingerprints.json     salted hashes of every password and key
                                  (harness/security/secretscan.py)

Each probe that cannot be made says why, and its check is `unknown`.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..checks import security as transport
from ..stack.info import StackInfo
from ..stack.redis_srv import REDIS_KEYS
from .auditlog import LogTail
from .intruder import role_dsn
from .secretscan import fingerprints, scan, secrets_of_stack

__all__ = ["security_probe", "pg_isolation", "redis_isolation", "mongo_isolation", "audit_probe",
           "AUDIT_OPS"]

AUDIT_OPS = 5            # reads and as many writes, per service role
AUDIT_WAIT_S = 10.0
PROBE_KEY = "msdb-isolation-probe"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def pg_isolation(info: StackInfo) -> dict:
    """Every service role against every other service's database: refused.
    Its own database: accepted (the baseline that makes a refusal mean something)."""
    own, cross = {}, {}
    svcs = sorted(info.databases)
    for a in svcs:
        try:
            psycopg.connect(role_dsn(info, a, a)).close()
            own[a] = "accepted"
        except psycopg.Error as e:
            own[a] = "refused: " + _first_line(e)
        for b in svcs:
            if a == b:
                continue
            key = f"{info.databases[a].role} -> {info.databases[b].database}"
            try:
                psycopg.connect(role_dsn(info, a, b)).close()
                cross[key] = "ACCEPTED"
            except psycopg.OperationalError as e:
                cross[key] = "refused: " + _first_line(e)
    return {"own": own, "cross": cross}


def redis_isolation(info: StackInfo, passwords: dict | None) -> dict:
    """Each service's Redis ACL user against every other service's own key
    prefix (the shared `bus:*` streams aside): NOPERM; its own prefix: allowed."""
    if info.redis is None:
        return {"problem": "the stack has no Redis"}
    if not passwords:
        return {"problem": "no per-service Redis logins are known for this stack (only the embedded "
                           "stack's secrets.json has them)"}
    base = info.redis.url.split("@", 1)[1]
    own, cross = {}, {}
    for svc, patterns in REDIS_KEYS.items():
        if svc not in passwords:
            continue
        url = f"redis://{svc}:{passwords[svc]}@{base}"
        try:
            with redis.Redis.from_url(url, socket_timeout=3) as r:
                mine = patterns[0].replace("*", PROBE_KEY)
                try:
                    r.exists(mine)
                    own[svc] = "allowed"
                except redis.RedisError as e:
                    own[svc] = "refused: " + _first_line(e)
                for other, theirs in REDIS_KEYS.items():
                    for pat in theirs:
                        if other == svc or pat in patterns:
                            continue
                        key = pat.replace("*", PROBE_KEY)
                        try:
                            r.exists(key)
                            cross[f"{svc} -> {key}"] = "ALLOWED"
                        except redis.exceptions.NoPermissionError as e:
                            cross[f"{svc} -> {key}"] = "refused: " + _first_line(e)
                        except redis.RedisError as e:
                            cross[f"{svc} -> {key}"] = "error: " + _first_line(e)
        except redis.RedisError as e:
            own[svc] = "login failed: " + _first_line(e)
    return {"own": own, "cross": cross}


def _table_of(c: psycopg.Connection) -> str | None:
    row = c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tableowner = current_user AND tablename NOT LIKE '\\_%' "
                    "ORDER BY tablename LIMIT 1").fetchone()
    return row[0] if row else None


def audit_probe(info: StackInfo, *, ops: int = AUDIT_OPS, wait_s: float = AUDIT_WAIT_S) -> dict:
    """For every service role: `ops` reads and `ops` writes of one of its own
    tables on a connection with a unique application name, then the audit
    records found for exactly those, with role, database, class, object and time."""
    logs = {i.name: i.audit_log for i in info.instances if i.audit_log}
    if not logs:
        return {"problem": "no instance of this stack writes an audit log (pgaudit needs Debian's "
                           "PostgreSQL: start the stack with `msdb up --tls`)"}
    marker = f"msdb-audit-probe-{uuid.uuid4().hex[:8]}"
    tails = {n: LogTail(p, n, from_end=True) for n, p in logs.items()}
    roles: dict[str, dict] = {}
    for svc, db in sorted(info.databases.items()):
        entry = roles.setdefault(db.role, {"service": svc, "database": db.database,
                                           "instance": db.instance, "expected": 0, "done": 0,
                                           "in_use": svc not in info.off_postgres})
        if db.instance not in logs:
            entry["problem"] = f"instance {db.instance} writes no audit log"
            continue
        try:
            dsn = make_conninfo(**{**conninfo_to_dict(db.dsn), "application_name": marker,
                                   "connect_timeout": 5})
            with psycopg.connect(dsn, autocommit=True) as c:
                table = _table_of(c)
                if table is None:
                    entry["problem"] = "the role owns no table"
                    continue
                entry["object"] = f"public.{table}"
                entry["expected"] = 2 * ops
                for _ in range(ops):
                    c.execute(f'SELECT count(*) FROM public."{table}"').fetchone()
                    entry["done"] += 1
                for _ in range(ops):
                    c.execute(f'DELETE FROM public."{table}" WHERE false')
                    entry["done"] += 1
        except psycopg.Error as e:
            entry["problem"] = f"{type(e).__name__}: {_first_line(e)}"
    found: list = []
    want = sum(r["expected"] for r in roles.values())
    deadline = time.monotonic() + wait_s
    while True:
        for t in tails.values():
            found += [r for r in t.read() if r.app == marker and r.kind == "access"]
        if len(found) >= want or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    time.sleep(0.5)           # a record beyond what was expected is a finding too
    for t in tails.values():
        found += [r for r in t.read() if r.app == marker and r.kind == "access"]
    for role, entry in roles.items():
        mine = [r for r in found if r.role == role]
        entry["found"] = len(mine)
        entry["by_class"] = {c: sum(1 for r in mine if r.cls == c) for c in ("READ", "WRITE")}
        entry["incomplete"] = [r.to_json() for r in mine
                               if not (r.role and r.db == entry["database"] and r.cls
                                       and r.object == entry.get("object") and r.time)][:5]
        entry["sample"] = mine[0].to_json() if mine else None
    return {"marker": marker, "ops_per_role": 2 * ops, "roles": roles,
            "foreign": [r.to_json() for r in found if r.role not in roles][:5]}


def mongo_isolation(info: StackInfo, passwords: dict | None) -> dict:
    """The catalog's MongoDB (--engines seed): no command without a login, a
    wrong password refused, each login only what it needs (the catalog's
    service reads and writes its database and nothing else; the CDC relay
    reads it and writes only its resume tokens).  Its own access: allowed."""
    from ..stack import engines as seed_engines
    try:
        part = info.part("mongo")
    except KeyError:
        return {"problem": "the stack has no MongoDB"}
    if not passwords:
        return {"problem": "no MongoDB logins are known for this stack (only the embedded "
                           "stack's secrets.json has them)"}
    import pymongo
    from pymongo.errors import OperationFailure, PyMongoError
    from pymongo.uri_parser import parse_uri
    port = parse_uri(part.endpoint)["nodelist"][0][1]
    db, cdc_db = seed_engines.MONGO_DATABASE, seed_engines.MONGO_CDC_DATABASE
    probe = {"_id": PROBE_KEY}

    def attempt(user: str | None, what, password: str | None = None) -> str:
        url = seed_engines.mongo_url(port, user, {user: password or passwords.get(user)}, "")
        try:
            with pymongo.MongoClient(url, directConnection=True, serverSelectionTimeoutMS=3000,
                                     connectTimeoutMS=3000) as c:
                what(c)
            return "ALLOWED"
        except OperationFailure as e:
            return "refused: " + _first_line(e)     # unauthorized (13), auth failed (18)
        except PyMongoError as e:
            return "error: " + _first_line(e)

    def write(database: str):
        def w(c):
            c[database].msdb_isolation_probe.replace_one(probe, probe, upsert=True)
            c[database].msdb_isolation_probe.delete_one(probe)
        return w

    def read(database: str):
        return lambda c: c[database].products.find_one(probe)

    own = {"product_service": attempt("product_service", write(db)),
           "msdb_cdc": attempt("msdb_cdc", read(db))}
    own = {k: "allowed" if v == "ALLOWED" else v for k, v in own.items()}
    cross = {
        f"no login -> {db} (read)": attempt(None, read(db)),
        f"product_service, wrong password -> {db} (read)":
            attempt("product_service", read(db), password=passwords["product_service"] + "x"),
        f"product_service -> {cdc_db} (write)": attempt("product_service", write(cdc_db)),
        "product_service -> admin (createUser)": attempt(
            "product_service", lambda c: c.admin.command("createUser", PROBE_KEY, pwd=PROBE_KEY,
                                                         roles=[])),
        f"msdb_cdc -> {db} (write)": attempt("msdb_cdc", write(db)),
    }
    return {"own": own, "cross": cross}


def _stack_logs(info: StackInfo) -> list[Path]:
    out = sorted(Path(info.state_dir, "logs").glob("*.log")) if info.state_dir else []
    out += [Path(i.audit_log).with_suffix(".log") for i in info.instances if i.audit_log]
    out += [Path(i.audit_log) for i in info.instances if i.audit_log]
    return [p for p in out if p.is_file()]


def security_probe(ctx) -> None:
    """The after-load recorder of the `security` scenario (an EndContext)."""
    info: StackInfo = ctx.info
    doc: dict = {"tls": info.tls, "backend": info.backend}
    doc["transport"] = [c.to_json() for c in (transport.tls_versions(info),
                                               transport.plaintext_refused(info),
                                               transport.old_tls_refused(info))]
    doc["isolation"] = {"postgres": pg_isolation(info)}
    secrets: dict = {}
    try:
        secrets = json.loads(Path(info.state_dir, "secrets.json").read_text())
    except (OSError, ValueError, TypeError):
        pass
    doc["isolation"]["redis"] = redis_isolation(info, secrets.get("redis"))
    if any(p.name == "mongo" for p in info.parts):      # --engines seed: the catalog on MongoDB
        doc["isolation"]["mongodb"] = mongo_isolation(info, secrets.get("mongo"))
    doc["audit"] = audit_probe(info)
    fp = fingerprints(secrets_of_stack(info, info.state_dir if info.backend != "target" else None))
    ctx.rd.write_json("secrets.fingerprints.json", fp)
    logs = _stack_logs(info)
    doc["stack_logs_scan"] = scan(logs, fp) if logs else {"problem": "no stack log is readable here"}
    ctx.rd.write_json("security.json", doc)
