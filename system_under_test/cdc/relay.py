"""The CDC relay: logical decoding -> Debezium-like envelopes -> the event bus.

One `SlotRelay` per source database, each in its own thread.  It streams
committed changes from a logical replication slot (plugin `pgoutput`,
publication `msdb_cdc`) over the replication protocol, publishes one
envelope per row change on the topic `cdc.<source>`, and only then confirms
the position to the server (standby status update).  A crash between the
two re-publishes the same changes with the same LSNs (at-least-once);
consumers are idempotent by LSN, which makes the effects exactly-once.

Why psycopg2 here: psycopg 3 (used everywhere else) has no replication
protocol support.  The SQL interface (`pg_logical_slot_peek_binary_changes`)
works without it but starts a new decoding session on every call, which
re-reads the WAL from the slot's restart point each time: measured here, the
three relay backends then took ~70% of a core at idle on a busy instance.
Streaming decodes every WAL record once.

Envelope (the shape Debezium emits, so consumers do not care which bus
carried it):

    {"op": "c|u|d|t", "before": {...}|null, "after": {...}|null,
     "source": {"db", "schema", "table", "lsn", "commit_lsn", "txId", "ts_ms"},
     "ts_ms": <relay time>, "seq": <per-topic sequence number>}

Where envelopes go is a `RelaySink`: `RedisStreamSink` (the stream
`bus:cdc.<source>`, numbered in `bus:seq:<source>`) or `KafkaSink` (one topic
per table as Debezium names it, `msdb.<source>.<schema>.<table>`; acknowledged
by the broker before the position is confirmed; `seq` counts from the relay
process's start there, since the offsets are Kafka's sequence).

`source.lsn` is the LSN of the row change's WAL record: for one row, later
changes always have larger LSNs (a second writer waits for the row lock of
the first to be released at its commit), which is what the consumers' guard
relies on.  `source.ts_ms` is the commit time at the source.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import orjson
import psycopg2
import psycopg2.extras
import redis
from prometheus_client import Counter, Gauge

from ..common.bus import OLD_SEQ_KEY, SEQ_KEY
from ..common.metrics import REGISTRY
from .pgoutput import Begin, Change, Commit, Decoder

__all__ = ["SlotRelay", "SourceConfig", "RelaySink", "RedisStreamSink", "KafkaSink", "renew_sink",
           "lsn_to_int", "int_to_lsn"]

log = logging.getLogger("msdb.cdc")

PUBLISHED = Counter("msdb_cdc_published_total", "Change events published on the bus",
                    ["source"], registry=REGISTRY)
RELAY_LAG = Gauge("msdb_cdc_relay_lag_seconds", "Publish time minus commit time of the last "
                  "published change", ["source"], registry=REGISTRY)

BATCH_MAX = 500          # events per publish
# Wait this long for more transactions before publishing (a sink may say
# otherwise).  5 ms published one or two transactions at a time under an order
# load, two Redis round trips each; 50 ms took the relay from 0.56-0.74 to
# 0.38-0.54 ms of CPU per order (2026-12-02, docs/performance.md), and adds at
# most 50 ms to a change's lag (the SLO allows a p99 of 2.5 s).
LINGER_S = 0.05
STREAM_MAXLEN = 500_000


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


class RelaySink(Protocol):
    """Publishes one source's batch durably, or raises (then nothing is confirmed)."""
    def publish(self, source: str, events: list[dict]) -> None: ...
    def close(self) -> None: ...


class RedisStreamSink:
    def __init__(self, redis_url: str):
        self.r = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._carried: set[str] = set()

    def _seq_key(self, source: str) -> str:
        """The source's sequence key; a stack made before the key moved to the
        bus's key space keeps counting from where it was."""
        key = SEQ_KEY.format(source=source)
        if source not in self._carried:
            old = self.r.get(OLD_SEQ_KEY.format(source=source))
            if old is not None:
                self.r.set(key, old, nx=True)
            self._carried.add(source)
        return key

    def publish(self, source: str, events: list[dict]) -> None:
        end = self.r.incrby(self._seq_key(source), len(events))
        now_ms = time.time() * 1000
        pipe = self.r.pipeline(transaction=False)
        for i, e in enumerate(events):
            e["seq"] = end - len(events) + 1 + i
            e["ts_ms"] = round(now_ms, 3)
            pipe.xadd(f"bus:cdc.{source}", {"e": orjson.dumps(e)}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.execute()

    def close(self) -> None:
        self.r.close()


class KafkaSink:
    # Every publish is one produce request, acknowledged only once stored: on
    # Tansu with S3 storage that is several S3 requests to SeaweedFS each.
    # One per transaction made SeaweedFS, Tansu and the relays the largest CPU
    # users of a --engines seed run (SeaweedFS 38 s, Tansu 15 s of a 110-s
    # cdc-lag run on two cores), which is what made the consumers late.
    # Debezium itself batches (poll.interval.ms, 500 ms by default).
    # 50 ms -> 250 ms (2026-12-02, `msdb run cdc-lag --engines seed` on fresh
    # stacks; docs/engines.md): SeaweedFS 32-38 s -> 26 s of CPU in the one
    # run measured, p99 lag outside the fault 2,100 and 2,471 ms (two runs)
    # -> 1,067-1,855 ms (four runs; 2,077 and 2,272 ms in two more where a
    # profiler or a probe consumer of mine ran beside it).  500 ms: 1,417 ms
    # and no faster catch-up (one run).
    linger_s = 0.25

    def __init__(self, bootstrap: str):
        from ..common.bus_kafka import KafkaPublisher   # confluent-kafka only where chosen
        self.p = KafkaPublisher(bootstrap)
        self.seq: dict[str, int] = {}

    def publish(self, source: str, events: list[dict]) -> None:
        now_ms = time.time() * 1000
        n = self.seq.get(source, 0)
        for i, e in enumerate(events):
            e["seq"] = n + 1 + i
            e["ts_ms"] = round(now_ms, 3)
        self.p.publish_batch(f"cdc.{source}", events)
        self.seq[source] = n + len(events)

    def close(self) -> None:
        self.p.close()

    def abandon(self) -> None:
        """Drop the producer without waiting for what it still holds (nothing
        it holds was confirmed upstream); a broken one would only time out."""
        self.p.p.purge()
        self.p.p.flush(0)


def renew_sink(sink: RelaySink, factory: Callable[[], RelaySink] | None,
               redis_url: str | None) -> RelaySink:
    """A fresh sink after a failure.  An idempotent Kafka producer whose broker
    was killed with records in flight can be left in a fatal state (its
    sequence numbers no longer match the broker's) and fail every publish
    after; a new producer starts a new sequence.  Measured: after a kill -9 of
    the broker, two of the three relays never published again without this."""
    try:
        getattr(sink, "abandon", sink.close)()
    except Exception as e:  # a broken producer may not flush: nothing was confirmed anyway
        log.debug("closing the failed sink: %s", e)
    return factory() if factory else RedisStreamSink(redis_url)


@dataclass
class SlotRelay:
    src: SourceConfig
    redis_url: str | None = None
    sink_factory: Callable[[], RelaySink] | None = None   # default: Redis Streams at redis_url
    published: int = 0
    last_lsn: int = 0
    last_error: str | None = None
    connected: bool = False
    _decoder: Decoder = field(default_factory=Decoder, repr=False)

    @property
    def topic(self) -> str:
        return f"cdc.{self.src.name}"

    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set; reconnects after any error (the server
        resends everything after the last confirmed position)."""
        sink = self.sink_factory() if self.sink_factory else RedisStreamSink(self.redis_url)
        try:
            while not stop.is_set():
                try:
                    self._stream(sink, stop)
                except Exception as e:  # source or bus down: retry from the confirmed position
                    self.connected = False
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    log.warning("cdc %s: %s; reconnecting", self.src.name, self.last_error)
                    stop.wait(0.5)
                    sink = renew_sink(sink, self.sink_factory, self.redis_url)
        finally:
            sink.close()

    def _stream(self, sink: RelaySink, stop: threading.Event) -> None:
        conn = psycopg2.connect(self.src.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            cur = conn.cursor()
            self._ensure_slot(conn)
            cur.start_replication(slot_name=self.src.slot, decode=False, status_interval=5,
                                  options={"proto_version": "1", "publication_names": self.src.publication})
            self.connected, self.last_error = True, None
            self._decoder = Decoder()
            txn: list[dict] = []
            begin: Begin | None = None
            batch: list[dict] = []
            batch_since = 0.0
            flush_to = 0
            linger = getattr(sink, "linger_s", LINGER_S)
            while not stop.is_set():
                msg = cur.read_message()
                if msg is None:
                    # Linger (Kafka's linger.ms): a few ms for the next
                    # transactions, then one publish for all of them; publishing
                    # each transaction alone cost two Redis round trips apiece.
                    wait = linger - (time.monotonic() - batch_since) if batch else 0.0
                    if wait > 0 and len(batch) < BATCH_MAX:
                        select.select([conn], [], [], wait)
                        continue
                    if batch or flush_to:
                        if batch:
                            self._publish(sink, batch)
                            batch = []
                        cur.send_feedback(flush_lsn=flush_to, reply=False)
                        self.last_lsn, flush_to = max(self.last_lsn, flush_to), 0
                    select.select([conn], [], [], 0.5)
                    continue
                out = self._decoder.decode(msg.payload)
                if isinstance(out, Begin):
                    begin, txn = out, []
                elif isinstance(out, Commit):
                    for e in txn:
                        e["source"]["commit_lsn"] = out.commit_lsn
                        e["source"]["ts_ms"] = round(out.commit_ts_ms, 3)
                    if not batch:
                        batch_since = time.monotonic()
                    batch += txn
                    txn, begin = [], None
                    flush_to = out.end_lsn
                    if len(batch) >= BATCH_MAX:
                        self._publish(sink, batch)
                        batch = []
                        cur.send_feedback(flush_lsn=flush_to, reply=False)
                        self.last_lsn, flush_to = max(self.last_lsn, flush_to), 0
                elif isinstance(out, (Change, list)):
                    for ch in (out if isinstance(out, list) else [out]):
                        txn.append({
                            "op": ch.op, "before": ch.before, "after": ch.after,
                            "source": {"db": self.src.name, "schema": ch.relation.schema,
                                       "table": ch.relation.table, "lsn": msg.data_start,
                                       "txId": begin.xid if begin else None,
                                       "ts_ms": round(begin.commit_ts_ms, 3) if begin else None}})
        finally:
            self.connected = False
            conn.close()

    def _ensure_slot(self, conn) -> None:
        # The stack creates the slot before any data exists; a slot made here
        # only sees changes from now on (there is no initial snapshot).
        with psycopg2.connect(self.src.dsn) as c, c.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.src.slot,))
            if cur.fetchone() is None:
                log.warning("slot %s was missing: created now; earlier changes are not relayed",
                            self.src.slot)
                cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.src.slot,))
        c.close()

    def _publish(self, sink: RelaySink, events: list[dict]) -> None:
        sink.publish(self.src.name, events)
        now_ms = time.time() * 1000
        self.published += len(events)
        PUBLISHED.labels(self.src.name).inc(len(events))
        last_commit = events[-1]["source"]["ts_ms"]
        if last_commit:
            RELAY_LAG.labels(self.src.name).set(max(0.0, (now_ms - last_commit) / 1000))

    def status(self) -> dict:
        return {"source": self.src.name, "slot": self.src.slot, "topic": self.topic,
                "connected": self.connected, "published": self.published,
                "last_lsn": int_to_lsn(self.last_lsn) if self.last_lsn else None,
                "last_error": self.last_error}
