"""The event bus on Kafka (confluent-kafka, which bundles librdkafka).

Same interface as `RedisStreamBus` (`EventBus` in bus.py), same envelope bytes
(orjson of the Debezium-shaped envelope).  What Kafka changes:

- **Topics as Debezium names them**: `<prefix>.<schema>.<table>` with one
  prefix per source database, `msdb.<source>` (the compose connectors'
  `topic.prefix`), so the catalog's products on PostgreSQL are
  `msdb.catalog.public.products`.  Debezium's MongoDB connector puts the
  database where PostgreSQL's connector puts the schema
  (`<prefix>.<database>.<collection>`), so the catalog on MongoDB is
  `msdb.catalog.product_service_db.products`, here and in compose alike
  (a consumer that does not reach MongoDB is told the database:
  `engines.catalog_cdc_namespace`).  A logical CDC
  topic `cdc.<source>` is the set of its tables' topics (`DebeziumTopics`);
  any other topic name is used as it is.
- **Consumer groups with manual commits**: a batch's offsets are committed
  (synchronously; at most every 0.25 s while events flow, at once when the
  feed goes idle) only after its handler returned, so a consumer killed
  between applying and committing gets the batch again and the consumers'
  LSN guard drops it: exactly-once effects over at-least-once delivery, as on
  Redis Streams.  A handler failure seeks back to the batch's first offsets.
- **Backlog** = end offset - committed offset per partition, kept by the
  consuming process from what it fetched and committed (`backlog()`), since
  the lag monitor cannot read Redis stream info here.
- The record key is the row's primary key (`id`, else `order_id`), so one
  row's changes stay in one partition, in order.

Debezium Connect's JSON converter wraps each value as `{"schema", "payload"}`;
consumers unwrap it, and skip delete tombstones (null values), so the
consumers read compose's topics unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .bus import Backlog, BatchHandler, Handler
from .metrics import EVENTS

__all__ = ["KafkaBus", "KafkaPublisher", "DebeziumTopics", "CDC_TABLES", "BusError",
           "decode_value", "record_key"]

log = logging.getLogger(__name__)

# The tables each CDC source publishes (the relay's publication `msdb_cdc`).
CDC_TABLES: dict[str, tuple[str, ...]] = {
    "users": ("users",), "catalog": ("products",), "orders": ("orders", "order_items")}


class BusError(RuntimeError):
    """The broker refused or lost a publish; nothing may be confirmed upstream."""


@dataclass(frozen=True, kw_only=True)
class DebeziumTopics:
    """`cdc.<source>` <-> `<prefix>.<source>.<namespace>.<table>` (Debezium's
    `topic.prefix` + schema + table, one prefix per source database).  The
    namespace is the schema on PostgreSQL and the database on MongoDB
    (`namespaces` names it per source where it is not `schema`)."""
    prefix: str = "msdb"
    schema: str = "public"
    tables: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(CDC_TABLES))
    namespaces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_engines(cls, engines) -> "DebeziumTopics":
        """The topics of the stores `engines` (config.EnginesConfig) names:
        with the catalog on MongoDB, its topic carries the database of
        `mongodb_url`, or `catalog_cdc_namespace` where it is set (a consumer,
        such as search, that does not reach the catalog's store)."""
        ns = engines.catalog_cdc_namespace
        if not ns and engines.catalog == "mongodb" and engines.mongodb_url:
            from pymongo.uri_parser import parse_uri   # the seed-engines extra, as the catalog
            ns = parse_uri(engines.mongodb_url).get("database")
        return cls(namespaces={"catalog": ns}) if ns else cls()

    def of_event(self, topic: str, event: dict) -> str:
        # A PostgreSQL change names its schema; a MongoDB change (ours and
        # Debezium's MongoDB connector's) names its database instead.
        src = event.get("source") or {}
        if topic.startswith("cdc.") and src.get("table"):
            ns = src.get("schema") or src.get("db") or self.namespaces.get(topic[4:], self.schema)
            return f"{self.prefix}.{topic[4:]}.{ns}.{src['table']}"
        return topic

    def subscribed(self, topic: str) -> list[str]:
        if topic.startswith("cdc.") and topic[4:] in self.tables:
            source = topic[4:]
            ns = self.namespaces.get(source, self.schema)
            return [f"{self.prefix}.{source}.{ns}.{t}" for t in self.tables[source]]
        return [topic]


def record_key(event: dict) -> bytes | None:
    row = event.get("after") or event.get("before") or {}
    if not isinstance(row, dict):
        return None
    k = row.get("id", row.get("order_id"))
    return None if k is None else str(k).encode()


def decode_value(raw: bytes | None) -> dict | None:
    """An envelope from a record value: ours, or Debezium's JSON converter's
    `{"schema", "payload"}`; None for a tombstone or garbage."""
    if raw is None:
        return None
    try:
        v = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(v, dict) and "payload" in v and "schema" in v:
        v = v["payload"]
    return v if isinstance(v, dict) else None


def _common(bootstrap: str) -> dict:
    return {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 1000, "topic.metadata.refresh.interval.ms": 10_000}


def ensure_topics(bootstrap: str, topics: list[str], *, partitions: int, timeout_s: float = 10) -> None:
    admin = AdminClient(_common(bootstrap))
    have = admin.list_topics(timeout=timeout_s).topics
    missing = [t for t in topics if t not in have]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1)
                                   for t in missing], request_timeout=timeout_s)
    for t, f in futures.items():
        try:
            f.result(timeout_s)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class KafkaPublisher:
    """A blocking, idempotent producer: `publish_batch(topic, events)` returns
    only once the broker acknowledged every record, and raises `BusError`
    otherwise, so a caller (the relay) confirms nothing that was not stored."""

    FLUSH_S = 10.0
    PARTITIONS = 1    # Debezium's default; per-key order holds with more

    def __init__(self, bootstrap: str, *, topics: DebeziumTopics | None = None):
        self.bootstrap = bootstrap
        self.topics = topics or DebeziumTopics()
        self.p = Producer({**_common(bootstrap), "enable.idempotence": True, "linger.ms": 2,
                           "acks": "all", "message.timeout.ms": int(self.FLUSH_S * 1000)})
        self._known: set[str] = set()

    def publish_batch(self, topic: str, events: list[dict]) -> None:
        errors: list[str] = []

        def report(err, msg):
            if err is not None:
                errors.append(f"{msg.topic()}: {err}")
        names = [self.topics.of_event(topic, e) for e in events]
        new = sorted(set(names) - self._known)
        if new:
            ensure_topics(self.bootstrap, new, partitions=self.PARTITIONS)
            # Ask for the new topics' metadata now: a first produce to a topic
            # the producer has no metadata for waited ~1 s for it (measured on
            # Tansu: 1.01 s for the first publish, 7 ms after), which was the
            # CDC lag spike at the start of every load.
            for name in new:
                self.p.list_topics(name, timeout=self.FLUSH_S)
            self._known.update(new)
        for name, e in zip(names, events):
            while True:
                try:
                    self.p.produce(name, value=orjson.dumps(e), key=record_key(e), on_delivery=report)
                    break
                except BufferError:   # local queue full: let deliveries drain
                    self.p.poll(0.1)
        left = self.p.flush(self.FLUSH_S)
        if left or errors:
            raise BusError(f"{left} records unacknowledged, {len(errors)} failed"
                           + (f": {errors[0]}" if errors else ""))
        EVENTS.labels(topic, "out").inc(len(events))

    def close(self) -> None:
        self.p.flush(self.FLUSH_S)


@dataclass
class _GroupState:
    """What one consuming process knows of its partitions, for backlog()."""
    high: dict[tuple[str, int], int] = field(default_factory=dict)        # end offset
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    delivered: dict[tuple[str, int], int] = field(default_factory=dict)   # next offset to deliver
    up: bool = False


class KafkaBus:
    """`EventBus` on a Kafka-protocol broker.  Blocking client calls run on
    one thread per consumer (librdkafka handles are not for concurrent use)."""

    POLL_S = 1.0
    BATCH = 100
    RETRY_S = 0.5
    # A group join takes about half of it on Tansu, and a consumer restarted
    # after a kill -9 waits for its dead self's session to end first: measured
    # (one partition, the restarted member's first record) 11.2 s at 6000 ms,
    # 7.1 s at 3000 ms (first join 3.2 s -> 2.1 s).  Static membership
    # (group.instance.id) took 6 s for every join, first or not.  Heartbeats
    # come from librdkafka's own thread, so a busy event loop does not miss them.
    SESSION_TIMEOUT_MS = 3000
    FETCH_WAIT_MS = 50
    COMMIT_EVERY_S = 0.25
    IDLE_COMMIT_S = 0.05      # the poll's wait while applied offsets wait for their commit
    PARTITIONS = 1

    def __init__(self, bootstrap: str, *, topics: DebeziumTopics | None = None):
        self.bootstrap = bootstrap
        self.topics = topics or DebeziumTopics()
        self._producer: KafkaPublisher | None = None
        self._plock = threading.Lock()
        self.groups: dict[tuple[str, str], _GroupState] = {}

    async def publish(self, topic: str, event: dict) -> None:
        def send():
            with self._plock:
                if self._producer is None:
                    self._producer = KafkaPublisher(self.bootstrap, topics=self.topics)
                self._producer.publish_batch(topic, [event])
        await asyncio.to_thread(send)

    async def consume(self, topic: str, group: str, consumer: str, handler: Handler,
                      stop: asyncio.Event) -> None:
        async def each(events: list[dict]) -> None:
            for e in events:
                await handler(e)
        await self.consume_batches(topic, group, consumer, each, stop)

    def _consumer(self, group: str, consumer: str) -> Consumer:
        return Consumer({**_common(self.bootstrap), "group.id": group, "client.id": consumer,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "session.timeout.ms": self.SESSION_TIMEOUT_MS,
                         "heartbeat.interval.ms": self.SESSION_TIMEOUT_MS // 3,
                         "isolation.level": "read_committed", "enable.partition.eof": False,
                         # librdkafka's default 500 ms long-poll: Tansu answers a
                         # fetch at its max wait, not when a record arrives, so
                         # the default alone put 136 ms (p50) / 258 ms (p95) of
                         # lag on every event at a trickle; at 50 ms: 13 / 24 ms
                         # (/tmp probe of produce -> consume, 60 events at 10/s).
                         "fetch.wait.max.ms": self.FETCH_WAIT_MS})

    async def consume_batches(self, topic: str, group: str, consumer: str,
                              handler: BatchHandler, stop: asyncio.Event, *,
                              linger_s: float = 0.0, batch: int | None = None) -> None:
        """Deliver events in batches until `stop` is set; survives broker
        outages.  A batch's offsets are committed only after its handler
        returned."""
        size = batch or self.BATCH
        names = self.topics.subscribed(topic)
        state = self.groups.setdefault((topic, group), _GroupState())
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{group}")
        loop = asyncio.get_running_loop()

        def call(fn, *a, **kw):
            return loop.run_in_executor(pool, lambda: fn(*a, **kw))
        c: Consumer | None = None
        # Offsets applied but not yet committed.  Committing is one broker
        # write (on Tansu with S3 storage, ~3 ms of SeaweedFS CPU each), so it
        # happens at most every COMMIT_EVERY_S while events flow, and at once
        # when the feed goes idle or the consumer stops.  Only applied batches
        # are ever committed; a kill re-delivers at most COMMIT_EVERY_S of
        # applied events, which the consumers' LSN guard drops.
        applied: dict[tuple[str, int], int] = {}
        committed_at = time.monotonic()

        async def commit() -> None:
            nonlocal committed_at
            offs = dict(applied)
            await call(c.commit, offsets=[TopicPartition(t, p, o) for (t, p), o in offs.items()],
                       asynchronous=False)
            state.committed.update(offs)
            for k, o in offs.items():
                if applied.get(k) == o:
                    del applied[k]
            committed_at = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if c is None:
                        await call(ensure_topics, self.bootstrap, names, partitions=self.PARTITIONS)
                        c = await call(self._consumer, group, consumer)
                        await call(c.subscribe, names)
                    # consume(n, timeout) waits until n messages or the timeout:
                    # at a trickle that is a whole POLL_S of lag per batch.  So
                    # wait for the first message only, then take what is
                    # already fetched without waiting.
                    msgs = await call(c.consume, 1, self.IDLE_COMMIT_S if applied else self.POLL_S)
                    if msgs and size > 1:
                        msgs += await call(c.consume, size - 1, 0)
                    if msgs and linger_s > 0 and len(msgs) < size:
                        await asyncio.sleep(linger_s)
                        msgs += await call(c.consume, size - len(msgs), 0)
                    await call(self._observe, c, state)
                    if not msgs:
                        if applied:     # idle: commit what was applied now
                            await commit()
                        continue
                    events, first, nxt = [], {}, {}
                    for m in msgs:
                        if m.error() is not None:
                            if m.error().fatal():
                                raise KafkaException(m.error())
                            log.warning("bus %s: %s", topic, m.error())
                            continue
                        tp = (m.topic(), m.partition())
                        first.setdefault(tp, m.offset())
                        nxt[tp] = m.offset() + 1
                        e = decode_value(m.value())
                        if e is not None:
                            events.append(e)
                        elif m.value() is not None:
                            log.error("dropping malformed event %s@%s on %s", m.offset(), tp, topic)
                    state.delivered.update(nxt)
                    try:
                        if events:
                            await handler(events)
                    except asyncio.CancelledError:
                        raise
                    except Exception:   # keep the batch: read it again from its first offsets
                        log.exception("bus %s: handler failed; will retry", topic)
                        await call(self._rewind, c, first)
                        await asyncio.sleep(self.RETRY_S)
                        continue
                    applied.update(nxt)
                    if applied and time.monotonic() - committed_at >= self.COMMIT_EVERY_S:
                        await commit()
                    EVENTS.labels(topic, "in").inc(len(events))
                except asyncio.CancelledError:
                    raise
                except (KafkaException, OSError) as e:
                    # What was delivered but not committed is delivered again
                    # to whoever holds the partition next (this process, after
                    # rejoining).
                    log.warning("bus %s: %s; rejoining", topic, e)
                    state.up = False
                    applied.clear()     # delivered again after the rejoin; the LSN guard drops them
                    if c is not None:
                        await call(self._close, c)
                        c = None
                    await asyncio.sleep(self.RETRY_S)
        finally:
            state.up = False
            if c is not None and applied:
                try:
                    await asyncio.shield(commit())
                except (KafkaException, RuntimeError) as e:
                    log.warning("bus %s: last commit on stop failed (%s); redelivered later", topic, e)
            if c is not None:
                # Leave the group at once (not after session.timeout.ms) on a
                # clean stop; a killed process leaves nothing to do here.
                await asyncio.shield(call(self._close, c))
            pool.shutdown(wait=False)

    @staticmethod
    def _close(c: Consumer) -> None:
        try:
            c.close()
        except (KafkaException, RuntimeError):
            pass

    @staticmethod
    def _rewind(c: Consumer, first: dict[tuple[str, int], int]) -> None:
        for (t, p), o in first.items():
            c.seek(TopicPartition(t, p, o))

    def _observe(self, c: Consumer, state: _GroupState) -> None:
        """End offsets from the fetch responses (cached: no round trip), and the
        committed offsets of newly assigned partitions."""
        parts = c.assignment()
        state.up = bool(parts)     # consuming once the group gave it its partitions
        fresh = [tp for tp in parts if (tp.topic, tp.partition) not in state.committed]
        if fresh:
            for tp in c.committed(fresh, timeout=5):
                state.committed[(tp.topic, tp.partition)] = max(tp.offset, 0)
        for tp in parts:
            lo, hi = c.get_watermark_offsets(tp, cached=True)
            if hi >= 0:
                key = (tp.topic, tp.partition)
                state.high[key] = max(hi, state.high.get(key, 0))
        mine = {(tp.topic, tp.partition) for tp in parts}
        for d in (state.high, state.committed, state.delivered):
            for k in [k for k in d if k not in mine]:
                del d[k]   # revoked: another member reports it now

    async def backlog(self, topic: str, group: str) -> Backlog:
        """Consumer lag of this process's partitions: end offset - committed
        offset (backlog), of which delivered but not yet committed (pending)."""
        state = self.groups.get((topic, group))
        if state is None:
            return Backlog(published=None, backlog=None, pending=None, up=False)
        high = dict(state.high)
        committed = dict(state.committed)
        delivered = dict(state.delivered)
        published = sum(high.values())
        backlog = sum(max(0, h - committed.get(k, 0)) for k, h in high.items())
        pending = sum(max(0, delivered.get(k, 0) - committed.get(k, 0)) for k in high)
        return Backlog(published=published, backlog=backlog, pending=pending, up=state.up)
