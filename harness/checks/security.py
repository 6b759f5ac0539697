"""Checks of the database links' transport security (seed §8.1: TLS 1.3 in
transit), read from the live servers, never from their configuration.

    tls_versions(info)      every client connection of every instance, as
                            pg_stat_ssl joined with pg_stat_activity shows
                            it, is TLS 1.3; every role that should be
                            connected is
    plaintext_refused(info) a plaintext login (sslmode=disable) to every
                            database and every instance is refused
    old_tls_refused(info)   a client that offers TLS 1.2 at most is refused

Each returns one `Check` (pass, fail, or unknown when the server could not
be asked), so `msdb run security` and the tests judge with the same code.
"""

from __future__ import annotations

from typing import Iterable

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..security.detector import KINDS
from ..security.secretscan import scan
from ..stack.info import StackInfo
from .core import Check, at_most

__all__ = ["tls_versions", "plaintext_refused", "old_tls_refused", "MIN_TLS", "CONNECT_TIMEOUT_S",
           "SecurityChecks", "SECURITY_KEYS"]

MIN_TLS = "TLSv1.3"
CONNECT_TIMEOUT_S = 3

_CONNECTIONS = """
SELECT a.usename, a.application_name, a.backend_type, s.ssl, s.version
  FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
 WHERE a.client_addr IS NOT NULL
"""


def _dsn(dsn: str, **override) -> str:
    params = conninfo_to_dict(dsn)
    for k, v in override.items():
        if v is None:
            params.pop(k, None)
        else:
            params[k] = v
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return make_conninfo(**params)


def _targets(info: StackInfo) -> list[tuple[str, str]]:
    """(what, DSN) for every database as its own role, and every instance
    as the superuser: the logins a plaintext client could try."""
    out = [(f"{svc} ({db.database} as {db.role})", db.dsn) for svc, db in info.databases.items()]
    out += [(f"{i.name} (postgres as superuser)", i.admin_dsn) for i in info.instances]
    return out


def expected_roles(info: StackInfo) -> dict[str, set[str]]:
    """Which login roles should hold connections to each instance: every
    service's role on its database's instance, the orders role on the
    replica, `replicator` on the replica's primary.  A service whose store is
    not on PostgreSQL (`StackInfo.off_postgres`) is not expected."""
    want: dict[str, set[str]] = {}
    elsewhere = info.off_postgres
    for svc, db in info.databases.items():
        if svc not in elsewhere:
            want.setdefault(db.instance, set()).add(db.role)
    if info.replica is not None:
        want.setdefault(info.replica.primary, set()).add("replicator")
        role = conninfo_to_dict(info.replica.dsn).get("user")
        if role:
            want.setdefault(info.replica.instance, set()).add(role)
    return want


def tls_versions(info: StackInfo, *, expect: dict[str, Iterable[str]] | None = None,
                 minimum: str = MIN_TLS) -> Check:
    """Every client connection (client backends and walsenders) of every
    instance uses TLS `minimum`, and every expected role is connected."""
    name = "tls-on-every-connection"
    want = {k: set(v) for k, v in (expect if expect is not None else expected_roles(info)).items()}
    seen: dict[str, dict[str, dict[str, int]]] = {}   # instance -> role -> "ssl version" -> n
    bad: list[str] = []
    unreachable: dict[str, str] = {}
    for inst in info.instances:
        try:
            with psycopg.connect(_dsn(inst.admin_dsn), autocommit=True) as c:
                rows = c.execute(_CONNECTIONS).fetchall()
        except psycopg.Error as e:
            unreachable[inst.name] = f"{type(e).__name__}: {str(e).strip()[:300]}"
            continue
        roles = seen.setdefault(inst.name, {})
        for user, app, backend, ssl, version in rows:
            label = f"{version}" if ssl else "plaintext"
            roles.setdefault(user or backend, {}).setdefault(label, 0)
            roles[user or backend][label] += 1
            if not ssl or version != minimum:
                bad.append(f"{inst.name}: {user} ({backend}, {app or 'no application_name'}) "
                           f"on {label}")
    missing = sorted(f"{inst}: {role}" for inst, roles in want.items()
                     if inst not in unreachable for role in roles
                     if role not in seen.get(inst, {}))
    details = {"connections": seen, "not_tls": bad, "missing_roles": missing,
               "unreachable": unreachable}
    total = sum(n for roles in seen.values() for vs in roles.values() for n in vs.values())
    if bad or missing:
        return Check(name, "fail", len(bad), 0, details)
    if unreachable or total == 0:
        return Check(name, "unknown", len(bad), 0,
                     {**details, "reason": "an instance could not be asked" if unreachable
                      else "no client connection seen"})
    return Check(name, "pass", 0, 0, {**details, "seen": total})


def _refused(targets: list[tuple[str, str]], name: str, baseline: dict, attempt: dict,
             refusal: tuple[str, ...]) -> Check:
    """Each target must accept the `baseline` connection and refuse the
    `attempt` one with one of the `refusal` messages."""
    accepted: list[str] = []
    refused: dict[str, str] = {}
    unknown: dict[str, str] = {}
    for what, dsn in targets:
        try:
            psycopg.connect(_dsn(dsn, **baseline)).close()
        except psycopg.Error as e:
            unknown[what] = f"the baseline connection failed too: {str(e).strip()[:300]}"
            continue
        try:
            psycopg.connect(_dsn(dsn, **attempt)).close()
        except psycopg.OperationalError as e:
            msg = str(e).strip()
            if any(r in msg for r in refusal):
                refused[what] = msg.splitlines()[0].split(" failed: ", 1)[-1][:300]
            else:
                unknown[what] = f"refused for another reason: {msg[:300]}"
            continue
        accepted.append(what)
    details = {"accepted": accepted, "refused": refused, "unknown": unknown,
               "attempt": {k: v for k, v in attempt.items() if v is not None}}
    if accepted:
        return Check(name, "fail", len(accepted), 0, details)
    if unknown or not refused:
        return Check(name, "unknown", None, 0, details)
    return Check(name, "pass", 0, 0, details)


def plaintext_refused(info: StackInfo) -> Check:
    """A client without TLS (sslmode=disable) is refused by every database
    and every instance: pg_hba.conf has no line that lets it in."""
    return _refused(_targets(info), "plaintext-refused", baseline={},
                    attempt={"sslmode": "disable", "sslrootcert": None},
                    refusal=("no pg_hba.conf entry", "no encryption"))


def old_tls_refused(info: StackInfo, *, below: str = MIN_TLS) -> Check:
    """A client that offers at most the version before `below` (TLS 1.2 for
    TLS 1.3) is refused in the handshake."""
    previous = {"TLSv1.3": "TLSv1.2", "TLSv1.2": "TLSv1.1"}[below]
    return _refused(_targets(info), f"{previous.lower()}-refused", baseline={},
                    attempt={"ssl_max_protocol_version": previous},
                    refusal=("alert protocol version", "unsupported protocol",
                             "no protocols available"))


# -- `msdb run security`: the checks of seed §8 from the run directory ------------------

SECURITY_KEYS = ("detect_within_s_max", "false_positives_max", "audit_missing_max")

# Files a run writes that are judged, never scanned for their own fingerprints.
_NOT_SCANNED = {"secrets.fingerprints.json"}


def _from_json(d: dict) -> Check:
    return Check(d["name"], d["verdict"], d.get("measured"), d.get("threshold"), d.get("details") or {})


def _isolation(name: str, doc: dict | None, bad_word: str) -> Check:
    if not doc:
        return Check(name, "unknown", None, 0, {"reason": "the run recorded no isolation probe"})
    if doc.get("problem"):
        return Check(name, "unknown", None, 0, {"reason": doc["problem"]})
    cross, own = doc.get("cross") or {}, doc.get("own") or {}
    let_in = sorted(k for k, v in cross.items() if v == bad_word)
    odd = sorted(k for k, v in cross.items() if v != bad_word and not v.startswith("refused"))
    own_bad = sorted(k for k, v in own.items() if v not in ("accepted", "allowed"))
    details = {"attempts": len(cross), "let_in": let_in, "other_errors": odd,
               "own_refused": own_bad, "refused": len(cross) - len(let_in) - len(odd)}
    if let_in:
        return Check(name, "fail", len(let_in), 0, details)
    if odd or own_bad or not cross:
        return Check(name, "unknown", None, 0,
                     {**details, "reason": "a probe failed for another reason, or its own "
                                           "access was refused too (a refusal then proves nothing)"})
    return Check(name, "pass", 0, 0, details)


def _audit(doc: dict | None, trail: list[dict], own_roles: set[str], slo: dict) -> Check:
    name, limit = "audit-trail-complete", slo["audit_missing_max"]
    if not doc:
        return Check(name, "unknown", None, limit, {"reason": "the run recorded no audit probe"})
    if doc.get("problem"):
        return Check(name, "unknown", None, limit, {"reason": doc["problem"]})
    roles = doc.get("roles") or {}
    missing = 0
    per_role = {}
    problems = {}
    for role, r in roles.items():
        if r.get("problem"):
            problems[role] = r["problem"]
            continue
        gap = r["expected"] - r.get("found", 0)
        missing += max(gap, 0) + len(r.get("incomplete") or [])
        per_role[role] = f"{r.get('found', 0)} of {r['expected']}"
    seen = {t.get("role") for t in trail if t.get("kind") == "access"}
    silent = sorted(own_roles - seen)
    details = {"per_role": per_role, "ops_per_role": doc.get("ops_per_role"),
               "roles_without_records_under_load": silent, "records_under_load": len(trail),
               "problems": problems, "sample": next((r.get("sample") for r in roles.values()
                                                     if r.get("sample")), None)}
    if missing > limit or silent:
        return Check(name, "fail", missing + len(silent), limit, details)
    if problems or not per_role:
        return Check(name, "unknown", None, limit, {**details, "reason": "a role could not be probed"})
    return Check(name, "pass", missing, limit, details)


def _detections(intrusions: list[dict], alerts: list[dict], slo: dict,
                watched: bool = True) -> tuple[list[Check], int, list]:
    """One check per intrusion kind (detected within the limit), and the alerts
    no intrusion explains (false positives)."""
    within = slo["detect_within_s_max"]
    checks = []
    explained: set[int] = set()
    for kind in KINDS:
        name = f"detects-{kind}"
        mine = [i for i in intrusions if i.get("kind") == kind]
        if not mine:
            checks.append(Check(name, "unknown", None, within,
                                {"reason": "the intruder did not run this intrusion"}))
            continue
        it = mine[0]
        if it.get("error"):
            checks.append(Check(name, "unknown", None, within,
                                {"reason": f"the intrusion failed: {it['error']}"}))
            continue
        hits = [(k, a) for k, a in enumerate(alerts) if a.get("kind") == kind
                and it["start"] - 1.0 <= a["at"] <= it["end"] + within]
        explained |= {k for k, _ in hits}
        if not hits and not watched:
            checks.append(Check(name, "unknown", None, within,
                                {"reason": "the detector saw no audit record at all (no audit log "
                                           "on this stack: `msdb up --tls`)", "intrusion": it}))
            continue
        if not hits:
            checks.append(Check(name, "fail", None, within,
                                {"reason": "no alert of this kind", "intrusion": it}))
            continue
        first = min(a["detected_at"] for _, a in hits)
        took = round(max(first - it["start"], 0.0), 2)
        checks.append(Check(name, "pass" if took <= within else "fail", took, within,
                            {"unit": "s", "intrusion": it, "alert": hits[0][1]}))
    unexplained = [a for k, a in enumerate(alerts) if k not in explained]
    return checks, len(unexplained), unexplained


def _secret_scan(run, doc: dict | None) -> Check:
    name = "no-secret-in-outputs"
    fp = run.json("secrets.fingerprints.json")
    if not fp or not fp.get("hashes"):
        return Check(name, "unknown", None, 0, {"reason": "the run recorded no secret fingerprints"})
    files = sorted(p for p in run.path.rglob("*") if p.is_file() and p.name not in _NOT_SCANNED)
    res = scan(files, fp, root=run.path)
    logs = (doc or {}).get("stack_logs_scan") or {}
    matches = res["matches"] + [{**m, "file": "stack log " + m["file"]} for m in logs.get("matches", [])]
    unscanned = {**res["unscanned"], **{"stack log " + k: v for k, v in logs.get("unscanned", {}).items()}}
    details = {"secrets": fp.get("secrets"), "run_files": res["files"], "run_bytes": res["bytes"],
               "stack_logs": logs.get("files"), "stack_log_bytes": logs.get("bytes"),
               "matches": matches, "unscanned": unscanned}
    if logs.get("problem"):
        details["stack_logs_problem"] = logs["problem"]
    if matches:
        return Check(name, "fail", len(matches), 0, details)
    if unscanned or not res["files"]:
        return Check(name, "unknown", None, 0, {**details, "reason": "a file could not be scanned"})
    return Check(name, "pass", 0, 0, details)


class SecurityChecks:
    """Seed §8 judged from a `security` run directory: transport, isolation,
    audit trail, detection and false positives, secrets in outputs."""
    keys = SECURITY_KEYS

    def __call__(self, run, slo: dict) -> tuple[list[Check], dict]:
        doc = run.json("security.json")
        checks: list[Check] = []
        if doc is None:
            checks.append(Check("security-probed", "unknown", None, None,
                                {"reason": "the run recorded no security.json"}))
        else:
            checks += [_from_json(c) for c in doc.get("transport") or []]
            iso = doc.get("isolation") or {}
            checks.append(_isolation("db-isolation", iso.get("postgres"), "ACCEPTED"))
            checks.append(_isolation("redis-isolation", iso.get("redis"), "ALLOWED"))
            if "mongodb" in iso:      # the catalog on MongoDB (--engines seed)
                checks.append(_isolation("document-db-isolation", iso["mongodb"], "ALLOWED"))
        trail = run.jsonl("audit.jsonl")
        # roles the services use under load (not a service whose store is off PostgreSQL)
        own_roles = {role for role, r in (((doc or {}).get("audit") or {}).get("roles") or {}).items()
                     if r.get("in_use", True)}
        checks.append(_audit((doc or {}).get("audit"), trail, own_roles, slo))
        intrusions, alerts = run.jsonl("intrusions.jsonl"), run.jsonl("alerts.jsonl")
        det, fp_count, unexplained = _detections(intrusions, alerts, slo, watched=bool(trail))
        checks += det
        load = run.info.get("load") or {}
        fp_check = at_most("false-positives", fp_count if trail else None,
                           slo["false_positives_max"], alerts=len(alerts),
                           unexplained=unexplained[:10], normal_load_s=load.get("duration_s"),
                           first_intrusion_utc=intrusions[0].get("start_utc") if intrusions else None)
        if not trail:   # a detector that saw no record cannot be said to raise no false alarm
            fp_check.details["reason"] = "the detector saw no audit record"
        checks.append(fp_check)
        checks.append(_secret_scan(run, doc))
        metrics = {"audit_records": len(trail), "alerts": len(alerts),
                   "false_positives": fp_count, "intrusions": len(intrusions)}
        return checks, metrics
