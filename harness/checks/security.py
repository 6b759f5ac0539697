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

from ..stack.info import StackInfo
from .core import Check

__all__ = ["tls_versions", "plaintext_refused", "old_tls_refused", "MIN_TLS", "CONNECT_TIMEOUT_S"]

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
    replica, `replicator` on the replica's primary."""
    want: dict[str, set[str]] = {}
    for db in info.databases.values():
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
