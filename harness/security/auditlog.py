"""The audit trail (seed §8.2): PostgreSQL's JSON log, with pgaudit's
records, read into one shape.

Under `msdb up --tls` every instance runs pgaudit (`pgaudit.log = 'read,
write'`, one record per relation with its row count; harness/stack/pg.py)
and logs to `<audit dir>/postgresql.json` (PostgreSQL's `jsonlog`). Each
line becomes an `AuditRecord`:

    kind      access       a read or write pgaudit recorded
              auth_fail    a login refused for its password (or an unknown role)
              db_denied    a login refused: no CONNECT privilege on that database
              hba_reject   a login refused by pg_hba.conf (e.g. plaintext under TLS)
    role, db, time (epoch seconds), instance, and for an access: class
    (READ/WRITE), command (SELECT, UPDATE, ...), object (schema.table),
    rows, the statement (cut to 200 characters) and the application name.

`LogTail` reads the lines appended since its last call (whole lines only),
so the live detector (harness/security/watch.py) and the after-load probe
read the same files the same way.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["AuditRecord", "parse_line", "parse_audit_message", "LogTail", "read_all"]

STATEMENT_CHARS = 200

_TS = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) (\S+)$")
_AUTH = re.compile(r'^password authentication failed for user "(?P<role>[^"]*)"')
_DENIED = re.compile(r'^permission denied for database "(?P<db>[^"]*)"')
_HBA = re.compile(r'^no pg_hba\.conf entry for (?:replication connection from )?host "[^"]*", '
                  r'user "(?P<role>[^"]*)"(?:, database "(?P<db>[^"]*)")?')


@dataclass(frozen=True)
class AuditRecord:
    time: float
    kind: str
    role: str | None
    db: str | None
    instance: str | None = None
    cls: str | None = None          # READ | WRITE (pgaudit's class)
    command: str | None = None
    object: str | None = None
    rows: int | None = None
    app: str | None = None
    statement: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "AuditRecord":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def _epoch(ts: str) -> float | None:
    """jsonlog's timestamp ("2026-12-02 01:00:00.123 UTC"; log_timezone is
    UTC on our servers) as epoch seconds."""
    m = _TS.match(ts or "")
    if not m or m.group(2) not in ("UTC", "GMT", "+00", "Z"):
        return None
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in m.group(1) else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(m.group(1) + " +0000", fmt + " %z").timestamp()


def parse_audit_message(message: str) -> dict | None:
    """pgaudit's "AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.users,stmt,<not logged>,42"
    as a dict (None if the message is not a pgaudit record)."""
    if not message.startswith("AUDIT: "):
        return None
    try:
        fields = next(csv.reader(io.StringIO(message[len("AUDIT: "):])))
    except (csv.Error, StopIteration):
        return None
    if len(fields) < 8:
        return None
    rows = None
    if len(fields) >= 10:
        try:
            rows = int(fields[9])
        except ValueError:
            rows = None
    return {"audit_type": fields[0], "cls": fields[3] or None, "command": fields[4] or None,
            "object_type": fields[5] or None, "object": fields[6] or None,
            "statement": (fields[7] or "")[:STATEMENT_CHARS], "rows": rows}


def parse_line(line: str, instance: str | None = None) -> AuditRecord | None:
    """One jsonlog line -> an AuditRecord, or None for lines that are neither
    an access nor a refused login."""
    try:
        d = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(d, dict):
        return None
    t = _epoch(d.get("timestamp", ""))
    msg = d.get("message") or ""
    if t is None:
        return None
    role, db, app = d.get("user"), d.get("dbname"), d.get("application_name")
    sev = d.get("error_severity")
    if sev == "LOG":
        a = parse_audit_message(msg)
        if a is None:
            return None
        return AuditRecord(time=t, kind="access", role=role, db=db, instance=instance, cls=a["cls"],
                           command=a["command"], object=a["object"], rows=a["rows"], app=app,
                           statement=a["statement"])
    if sev != "FATAL":
        return None
    if m := _AUTH.match(msg):
        return AuditRecord(time=t, kind="auth_fail", role=m.group("role"), db=db, instance=instance,
                           app=app)
    if m := _DENIED.match(msg):
        return AuditRecord(time=t, kind="db_denied", role=role, db=m.group("db"), instance=instance,
                           app=app)
    if m := _HBA.match(msg):
        return AuditRecord(time=t, kind="hba_reject", role=m.group("role"),
                           db=m.group("db") or db, instance=instance, app=app)
    return None


class LogTail:
    """The records appended to one JSON log since the last `read()`."""

    def __init__(self, path: str | Path, instance: str | None = None, *, from_end: bool = False):
        self.path = Path(path)
        self.instance = instance
        self.offset = 0
        self._partial = b""
        if from_end and self.path.exists():
            self.offset = self.path.stat().st_size

    def read(self) -> list[AuditRecord]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()      # an unfinished last line waits for the next read
        out = []
        for raw in lines:
            rec = parse_line(raw.decode("utf-8", "replace"), self.instance)
            if rec is not None:
                out.append(rec)
        return out


def read_all(path: str | Path, instance: str | None = None) -> list[AuditRecord]:
    return LogTail(path, instance).read()
