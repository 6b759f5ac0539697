"""Decoder of PostgreSQL's logical replication protocol (`pgoutput`, v1).

Why by hand: psycopg 3 has no replication-protocol support, and the PyPI
decoders of pgoutput (pypgoutput, …) are built on psycopg2's replication
cursor.  The relay reads the slot through the SQL interface
(`pg_logical_slot_peek_binary_changes`), which returns the very same
messages as bytes; their format is small and documented
(https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html).

Only what the relay needs is decoded: Begin, Commit, Relation, Insert,
Update, Delete, Truncate; Origin/Type/Message are skipped.  Column values
arrive in text form and are converted by type OID.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

import orjson

__all__ = ["Decoder", "Relation", "Change", "Begin", "Commit", "DecodeError", "pg_epoch_us_to_ms"]

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_PG_EPOCH_UNIX_MS = int(_PG_EPOCH.timestamp() * 1000)


def pg_epoch_us_to_ms(us: int) -> float:
    """PostgreSQL timestamps count microseconds since 2000-01-01 UTC."""
    return _PG_EPOCH_UNIX_MS + us / 1000.0


class DecodeError(ValueError):
    pass


@dataclass
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str
    columns: list[tuple[str, int]] = field(default_factory=list)   # (name, type oid)


@dataclass
class Begin:
    final_lsn: int
    commit_ts_ms: float
    xid: int


@dataclass
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts_ms: float


@dataclass
class Change:
    op: str               # c (insert), u (update), d (delete), t (truncate)
    relation: Relation
    before: dict | None
    after: dict | None


def _convert(type_oid: int, text: str):
    if type_oid in (20, 21, 23, 26):          # int8, int2, int4, oid
        return int(text)
    if type_oid == 16:                        # bool
        return text == "t"
    if type_oid in (700, 701):                # float4, float8
        return float(text)
    if type_oid == 1700:                      # numeric: exact, as a string on the wire
        return str(Decimal(text))
    if type_oid in (114, 3802):               # json, jsonb
        return orjson.loads(text)
    return text                               # uuid, text, varchar, timestamptz, …


class Decoder:
    """Stateful: Relation messages describe the tables later changes refer to."""

    def __init__(self):
        self.relations: dict[int, Relation] = {}

    def decode(self, data: bytes):
        """One message -> Begin | Commit | Relation | Change | list[Change] | None."""
        if not data:
            raise DecodeError("empty message")
        kind = data[0:1]
        buf = memoryview(data)
        try:
            if kind == b"B":
                final_lsn, ts, xid = struct.unpack_from(">QqI", buf, 1)
                return Begin(final_lsn, pg_epoch_us_to_ms(ts), xid)
            if kind == b"C":
                _flags, commit_lsn, end_lsn, ts = struct.unpack_from(">bQQq", buf, 1)
                return Commit(commit_lsn, end_lsn, pg_epoch_us_to_ms(ts))
            if kind == b"R":
                return self._relation(buf)
            if kind in (b"I", b"U", b"D"):
                return self._change(kind, buf)
            if kind == b"T":
                nrel, _opts = struct.unpack_from(">Ib", buf, 1)
                oids = struct.unpack_from(f">{nrel}I", buf, 6)
                return [Change("t", self.relations[o], None, None) for o in oids if o in self.relations]
            return None   # Origin, Type, Message, stream messages: not used here
        except (struct.error, IndexError, KeyError, UnicodeDecodeError) as e:
            raise DecodeError(f"bad pgoutput message {kind!r}: {e}") from e

    @staticmethod
    def _cstring(buf: memoryview, pos: int) -> tuple[str, int]:
        end = bytes(buf[pos:]).index(b"\x00") + pos
        return bytes(buf[pos:end]).decode(), end + 1

    def _relation(self, buf: memoryview) -> Relation:
        (oid,) = struct.unpack_from(">I", buf, 1)
        schema, pos = self._cstring(buf, 5)
        table, pos = self._cstring(buf, pos)
        ident = chr(buf[pos])
        (ncols,) = struct.unpack_from(">h", buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            pos += 1   # flags (part of the key)
            name, pos = self._cstring(buf, pos)
            type_oid, _typmod = struct.unpack_from(">Ii", buf, pos)
            pos += 8
            cols.append((name, type_oid))
        rel = Relation(oid, schema, table, ident, cols)
        self.relations[oid] = rel
        return rel

    def _tuple(self, rel: Relation, buf: memoryview, pos: int) -> tuple[dict, int]:
        (ncols,) = struct.unpack_from(">h", buf, pos)
        pos += 2
        row = {}
        for i in range(ncols):
            name, type_oid = rel.columns[i]
            kind = buf[pos:pos + 1].tobytes()
            pos += 1
            if kind == b"n":
                row[name] = None
            elif kind == b"u":       # unchanged TOASTed value: not sent
                continue
            elif kind in (b"t", b"b"):
                (n,) = struct.unpack_from(">i", buf, pos)
                pos += 4
                raw = bytes(buf[pos:pos + n])
                pos += n
                row[name] = _convert(type_oid, raw.decode()) if kind == b"t" else raw.hex()
            else:
                raise DecodeError(f"unknown tuple column kind {kind!r}")
        return row, pos

    def _change(self, kind: bytes, buf: memoryview) -> Change:
        (oid,) = struct.unpack_from(">I", buf, 1)
        rel = self.relations[oid]
        pos = 5
        before = after = None
        if kind == b"I":
            assert buf[pos:pos + 1].tobytes() == b"N"
            after, pos = self._tuple(rel, buf, pos + 1)
            return Change("c", rel, None, after)
        if kind == b"U":
            tag = buf[pos:pos + 1].tobytes()
            if tag in (b"K", b"O"):
                before, pos = self._tuple(rel, buf, pos + 1)
                tag = buf[pos:pos + 1].tobytes()
            if tag != b"N":
                raise DecodeError(f"update without a new tuple (tag {tag!r})")
            after, pos = self._tuple(rel, buf, pos + 1)
            return Change("u", rel, before, after)
        tag = buf[pos:pos + 1].tobytes()
        if tag not in (b"K", b"O"):
            raise DecodeError(f"delete without an old tuple (tag {tag!r})")
        before, pos = self._tuple(rel, buf, pos + 1)
        return Change("d", rel, before, None)
