"""The CDC relay: logical decoding -> Debezium-like envelopes -> the event bus.

One `SlotRelay` per source database.  It reads committed changes from a
logical replication slot (plugin `pgoutput`, publication `msdb_cdc`) through
the SQL interface, publishes one envelope per row change on the topic
`cdc.<source>`, and only then advances the slot.  A crash between the two
re-publishes the same changes with the same LSNs (at-least-once); consumers
are idempotent by LSN, which makes the effects exactly-once.

Envelope (the shape Debezium emits, so consumers do not care which bus
carried it):

    {"op": "c|u|d|t", "before": {...}|null, "after": {...}|null,
     "source": {"db", "schema", "table", "lsn", "commit_lsn", "txId", "ts_ms"},
     "ts_ms": <relay time>, "seq": <per-topic sequence number>}

`source.lsn` is the LSN of the row change's WAL record: for one row, later
changes always have larger LSNs (a second writer waits for the row lock of
the first to be released at its commit), which is what the consumers' guard
relies on.  `source.ts_ms` is the commit time at the source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import psycopg
from prometheus_client import Counter, Gauge

from ..common.metrics import REGISTRY
from .pgoutput import Begin, Change, Commit, Decoder

__all__ = ["SlotRelay", "SourceConfig", "lsn_to_int", "int_to_lsn"]

log = logging.getLogger("msdb.cdc")

PUBLISHED = Counter("msdb_cdc_published_total", "Change events published on the bus",
                    ["source"], registry=REGISTRY)
SLOT_LAG = Gauge("msdb_cdc_slot_lag_bytes", "WAL bytes between the source's current LSN and "
                 "the slot's confirmed position", ["source"], registry=REGISTRY)
RELAY_LAG = Gauge("msdb_cdc_relay_lag_seconds", "Publish time minus commit time of the last "
                  "published change", ["source"], registry=REGISTRY)


def lsn_to_int(lsn: str) -> int:
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def int_to_lsn(n: int) -> str:
    return f"{n >> 32:X}/{n & 0xFFFFFFFF:X}"


@dataclass
class SourceConfig:
    name: str          # users | catalog | orders
    dsn: str
    slot: str
    publication: str = "msdb_cdc"


@dataclass
class SlotRelay:
    src: SourceConfig
    bus_redis: object               # redis.asyncio.Redis
    poll_s: float = 0.05
    max_changes: int = 2000
    published: int = 0
    last_lsn: int = 0
    last_error: str | None = None
    connected: bool = False
    _conn: psycopg.AsyncConnection | None = field(default=None, repr=False)

    @property
    def topic(self) -> str:
        return f"cdc.{self.src.name}"

    async def _connect(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.src.dsn, autocommit=True)
            await self._ensure_slot(self._conn)
        return self._conn

    async def _ensure_slot(self, conn) -> None:
        row = await (await conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.src.slot,))).fetchone()
        if row is None:
            # The stack creates the slot before any data exists; a slot made
            # here only sees changes from now on (there is no initial snapshot).
            log.warning("slot %s was missing: created now; earlier changes are not relayed",
                        self.src.slot)
            await conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                               (self.src.slot,))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                conn = await self._connect()
                self.connected = True
                n = await self.step(conn)
                self.last_error = None
                if n == 0:
                    try:
                        await asyncio.wait_for(stop.wait(), self.poll_s)
                    except asyncio.TimeoutError:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as e:  # source or bus down: keep the slot where it is, retry
                self.connected = False
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                log.warning("cdc %s: %s; retrying", self.src.name, self.last_error)
                if self._conn is not None:
                    try:
                        await self._conn.close()
                    except Exception:  # closing a broken connection
                        pass
                    self._conn = None
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

    async def step(self, conn) -> int:
        """Relay one batch of whole transactions; returns the number of rows read."""
        cur = await conn.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes("
            "%s, NULL, %s, 'proto_version', '1', 'publication_names', %s)",
            (self.src.slot, self.max_changes, self.src.publication))
        rows = await cur.fetchall()
        if not rows:
            await self._sample_slot(conn)
            return 0
        events = self._envelopes(rows)
        if events:
            await self._publish(events)
        last = rows[-1][0]
        await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.src.slot, last))
        self.last_lsn = lsn_to_int(last)
        return len(rows)

    def _envelopes(self, rows) -> list[dict]:
        dec = Decoder()   # Relation messages are re-sent in every decoding call
        out: list[dict] = []
        begin: Begin | None = None
        pending: list[dict] = []
        for lsn_text, data in rows:
            msg = dec.decode(bytes(data))
            if isinstance(msg, Begin):
                begin, pending = msg, []
            elif isinstance(msg, Commit):
                for e in pending:
                    e["source"]["commit_lsn"] = msg.commit_lsn
                    e["source"]["ts_ms"] = round(msg.commit_ts_ms, 3)
                out.extend(pending)
                begin, pending = None, []
            elif isinstance(msg, (Change, list)):
                for ch in (msg if isinstance(msg, list) else [msg]):
                    pending.append({
                        "op": ch.op, "before": ch.before, "after": ch.after,
                        "source": {"db": self.src.name, "schema": ch.relation.schema,
                                   "table": ch.relation.table, "lsn": lsn_to_int(lsn_text),
                                   "txId": begin.xid if begin else None,
                                   "ts_ms": round(begin.commit_ts_ms, 3) if begin else None}})
        return out

    async def _publish(self, events: list[dict]) -> None:
        import orjson
        r = self.bus_redis
        end = await r.incrby(f"cdc:seq:{self.src.name}", len(events))
        now_ms = time.time() * 1000
        pipe = r.pipeline(transaction=False)
        for i, e in enumerate(events):
            e["seq"] = end - len(events) + 1 + i
            e["ts_ms"] = round(now_ms, 3)
            pipe.xadd(f"bus:{self.topic}", {"e": orjson.dumps(e)}, maxlen=500_000, approximate=True)
        await pipe.execute()
        self.published += len(events)
        PUBLISHED.labels(self.src.name).inc(len(events))
        last_commit = events[-1]["source"]["ts_ms"]
        if last_commit:
            RELAY_LAG.labels(self.src.name).set(max(0.0, (now_ms - last_commit) / 1000))

    async def _sample_slot(self, conn) -> None:
        row = await (await conn.execute(
            "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s", (self.src.slot,))).fetchone()
        if row and row[0] is not None:
            SLOT_LAG.labels(self.src.name).set(float(row[0]))

    def status(self) -> dict:
        return {"source": self.src.name, "slot": self.src.slot, "topic": self.topic,
                "connected": self.connected, "published": self.published,
                "last_lsn": int_to_lsn(self.last_lsn) if self.last_lsn else None,
                "last_error": self.last_error}
