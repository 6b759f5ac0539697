"""The catalog's CDC source when it lives on MongoDB: a change stream -> the bus.

One `ChangeStreamRelay` per watched collection (the catalog's `products`), in
its own thread, as `SlotRelay` does for a PostgreSQL slot.  It watches the
collection with `full_document="updateLookup"`, publishes one envelope per
change on `cdc.<source>` through the same `RelaySink` (Redis stream or Kafka
topic), and only then stores the stream's resume token in MongoDB
(`msdb_cdc.msdb_cdc_offsets`, one document per source, outside the watched
collection).  A relay that dies between the two re-publishes those changes
with the same positions (at-least-once); the consumers' LSN guard drops them,
so effects stay exactly-once.  A relay that starts without a stored token
watches from now and stores the token at once, before it says it is
connected.

Envelope: the Debezium MongoDB connector's (`capture.mode:
change_streams_update_full`), `after` the full document as relaxed Extended
JSON text, plus what msdb's consumers key on:

    {"op": "c|u|d", "before": null, "after": "<json>"|null,
     "filter": "{\"_id\": ...}",            (Debezium 1.x's, so a delete names its document)
     "updateDescription": {...}|null,
     "source": {"connector": "mongodb", "name": "msdb.<source>", "db", "rs",
                "collection", "ord", "ts_ms", "snapshot": "false",
                "table": <collection>, "lsn": <position>},
     "ts_ms", "seq"}                        (set by the sink)

`source.lsn` = clusterTime seconds << 32 | its ordinal: the oplog order, so
for one document a later change always has a larger position (what the LSN
guard needs; it fits an Elasticsearch external version, < 2^63).
`source.ts_ms` is the change's wallTime (milliseconds; Debezium's is the
clusterTime's whole seconds), so the CDC lag is measured to the millisecond.
`source.db` and `source.table` name its Kafka topic as Debezium's MongoDB
connector does, `msdb.catalog.<database>.products` (search subscribes to it
when the catalog is on MongoDB: `DebeziumTopics.for_engines`); on Redis it is
`bus:cdc.catalog`, as for the PostgreSQL catalog.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from bson import json_util
from bson.json_util import JSONOptions, JSONMode

from .relay import PUBLISHED, RELAY_LAG, RelaySink, RedisStreamSink, renew_sink

__all__ = ["MongoSourceConfig", "ChangeStreamRelay", "mongo_envelope", "position"]

log = logging.getLogger("msdb.cdc.mongo")

BATCH_MAX = 500
_JSON = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=True, tzinfo=timezone.utc)
_OPS = {"insert": "c", "update": "u", "replace": "u", "delete": "d"}


def position(cluster_time) -> int:
    """A change's place in the oplog as one integer (seconds << 32 | ordinal)."""
    return (int(cluster_time.time) << 32) | int(cluster_time.inc)


def mongo_envelope(change: dict, *, source: str, rs: str | None = None) -> dict | None:
    """The Debezium-MongoDB envelope of one change event; None for events that
    change no document (drop, invalidate, ...)."""
    op = _OPS.get(change.get("operationType"))
    if op is None:
        return None
    ns = change.get("ns") or {}
    ct = change["clusterTime"]
    wall = change.get("wallTime")
    ts_ms = round(wall.replace(tzinfo=wall.tzinfo or timezone.utc).timestamp() * 1000, 3) \
        if isinstance(wall, datetime) else ct.time * 1000
    full = change.get("fullDocument")
    key = (change.get("documentKey") or {})
    upd = change.get("updateDescription")
    return {
        "op": op, "before": None,
        # updateLookup finds nothing once the document is gone: then the
        # change is published without a body, and the consumer's guard keeps
        # whatever it has.
        "after": json_util.dumps(full, json_options=_JSON) if op != "d" and full is not None else None,
        "filter": json_util.dumps(key, json_options=_JSON),
        "updateDescription": None if upd is None else {
            "updatedFields": json_util.dumps(upd.get("updatedFields") or {}, json_options=_JSON),
            "removedFields": list(upd.get("removedFields") or []),
            "truncatedArrays": list(upd.get("truncatedArrays") or [])},
        "source": {"version": "msdb", "connector": "mongodb", "name": f"msdb.{source}",
                   "ts_ms": ts_ms, "snapshot": "false", "db": ns.get("db"), "rs": rs,
                   "collection": ns.get("coll"), "ord": int(ct.inc),
                   "table": ns.get("coll"), "lsn": position(ct)},
    }


@dataclass
class MongoSourceConfig:
    name: str                        # the CDC source: catalog
    url: str                         # mongodb:// with the database
    collection: str = "products"
    offsets: str = "msdb_cdc_offsets"
    # The resume tokens live in a database of the relay's own, so that its
    # login needs only `read` on the catalog's (harness/stack/engines.py
    # MONGO_USERS); None: in the watched database.
    offsets_db: str | None = "msdb_cdc"


@dataclass
class ChangeStreamRelay:
    src: MongoSourceConfig
    redis_url: str | None = None
    sink_factory: Callable[[], RelaySink] | None = None
    published: int = 0
    last_lsn: int = 0
    last_error: str | None = None
    connected: bool = False
    resumed: bool = False            # the last (re)start resumed from a stored token
    _rs: str | None = field(default=None, repr=False)

    # Tunables, patchable by tests.
    MAX_AWAIT_MS = 200
    SELECT_MS = 3000

    @property
    def topic(self) -> str:
        return f"cdc.{self.src.name}"

    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set; after any error, reconnect and resume
        from the stored token."""
        import pymongo   # the seed-engines extra, only where the catalog is on MongoDB
        client = pymongo.MongoClient(
            self.src.url, tz_aware=True, uuidRepresentation="standard", appname="msdb-cdc",
            serverSelectionTimeoutMS=self.SELECT_MS, connectTimeoutMS=self.SELECT_MS,
            socketTimeoutMS=max(10_000, self.MAX_AWAIT_MS * 5))
        sink = self.sink_factory() if self.sink_factory else RedisStreamSink(self.redis_url)
        try:
            while not stop.is_set():
                try:
                    self._stream(client, sink, stop)
                except Exception as e:  # MongoDB or the bus down: resume from the stored token
                    self.connected = False
                    self.last_error = f"{type(e).__name__}: {e}"[:300]
                    log.warning("cdc %s (mongodb): %s; reconnecting", self.src.name, self.last_error)
                    stop.wait(0.5)
                    sink = renew_sink(sink, self.sink_factory, self.redis_url)
        finally:
            self.connected = False
            sink.close()
            client.close()

    def _stream(self, client, sink: RelaySink, stop: threading.Event) -> None:
        from pymongo.errors import OperationFailure
        db = client.get_default_database()
        offsets = (client[self.src.offsets_db] if self.src.offsets_db else db)[self.src.offsets]
        if self._rs is None:
            try:
                self._rs = client.admin.command("hello").get("setName")
            except Exception:  # the name is informative only
                self._rs = None
        stored = offsets.find_one({"_id": self.src.name})
        token = stored.get("token") if stored else None
        coll = db[self.src.collection]
        try:
            stream = coll.watch(full_document="updateLookup", resume_after=token,
                                max_await_time_ms=self.MAX_AWAIT_MS)
        except OperationFailure as e:
            if token is None or e.code not in (280, 286):
                raise
            # The stored position is gone from the oplog (history lost): say so,
            # and go on from now.  Changes in between are not relayed.
            log.error("cdc %s: resume token refused (%s): watching from now", self.src.name, e)
            stream = coll.watch(full_document="updateLookup", max_await_time_ms=self.MAX_AWAIT_MS)
            token = None
        with stream:
            self.resumed = token is not None
            if token is None:
                self._save(offsets, stream.resume_token)
            self.connected, self.last_error = True, None
            batch: list[dict] = []
            since = 0.0
            linger = getattr(sink, "linger_s", 0.0)
            while not stop.is_set():
                change = stream.try_next()
                if change is not None:
                    e = mongo_envelope(change, source=self.src.name, rs=self._rs)
                    if e is not None:
                        if not batch:
                            since = time.monotonic()
                        batch.append(e)
                # Publish when the batch is full, when a getMore came back empty,
                # or when this getMore's reply is used up (asking for the next
                # would wait up to MAX_AWAIT_MS) and the sink's linger is over:
                # lingering adds at most MAX_AWAIT_MS to a change's lag.
                if batch and (len(batch) >= BATCH_MAX or change is None or (
                        _buffered(stream) == 0 and time.monotonic() - since >= linger)):
                    self._publish(sink, batch)
                    self._save(offsets, stream.resume_token, batch[-1]["source"]["lsn"])
                    batch = []
                elif change is None:
                    self._save_idle(offsets, stream)

    IDLE_SAVE_S = 10.0
    _saved_at: float = 0.0

    def _save_idle(self, offsets, stream) -> None:
        # The post-batch token moves on while nothing in the collection
        # changes; store it now and then, so a restart need not rescan.
        if time.monotonic() - self._saved_at >= self.IDLE_SAVE_S:
            self._save(offsets, stream.resume_token)

    def _save(self, offsets, token, lsn: int | None = None) -> None:
        if token is None:
            return
        doc = {"token": token, "at": datetime.now(timezone.utc)}
        if lsn is not None:
            doc["lsn"] = lsn
            self.last_lsn = max(self.last_lsn, lsn)
        offsets.update_one({"_id": self.src.name}, {"$set": doc}, upsert=True)
        self._saved_at = time.monotonic()

    def _publish(self, sink: RelaySink, events: list[dict]) -> None:
        sink.publish(self.src.name, events)
        self.published += len(events)
        PUBLISHED.labels(self.src.name).inc(len(events))
        RELAY_LAG.labels(self.src.name).set(
            max(0.0, (time.time() * 1000 - events[-1]["source"]["ts_ms"]) / 1000))

    def status(self) -> dict:
        return {"source": self.src.name, "engine": "mongodb",
                "collection": self.src.collection, "topic": self.topic,
                "connected": self.connected, "published": self.published,
                "last_lsn": self.last_lsn or None, "resumed": self.resumed,
                "last_error": self.last_error}


def _buffered(stream) -> int:
    """Changes already received and not yet returned (pymongo keeps them in its
    cursor's `_data`; a pymongo without it: 0, so every change publishes at once)."""
    data = getattr(getattr(stream, "_cursor", None), "_data", None)
    return len(data) if data is not None else 0
