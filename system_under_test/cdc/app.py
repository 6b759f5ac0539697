"""CDC relay service (Debezium in the seed): logical decoding of the users,
catalog and orders databases onto the bus, one topic per source database.

Sources come from CDC_SOURCES, a JSON object
`{"users": {"dsn": "...", "slot": "cdc_users"}, ...}`: the relay's own
role (REPLICATION, CONNECT to those databases only), reached through its
proxies.  GET /admin/cdc shows each source's position and errors.

The bus is the one `engines.bus` names (strictly read: a bad BUS_ENGINE stops
the relay at start-up): Redis Streams, or Kafka at KAFKA_BOOTSTRAP with one
topic per table as Debezium names them.  In compose, Debezium Connect
produces those topics and this relay stays off.

With the catalog on MongoDB (`engines.catalog: mongodb`, MONGODB_URL), the
catalog's products come from a MongoDB change stream instead
(`mongo.ChangeStreamRelay`, Debezium-MongoDB envelopes on the same topic);
the PostgreSQL sources are relayed as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

from .. import config as config_mod
from ..common.app import Service
from .relay import KafkaSink, SlotRelay, SourceConfig

service = Service("cdc", database=False, description="CDC relay: logical decoding -> bus")
app = service.app
relays: list = []   # SlotRelay, and mongo.ChangeStreamRelay for a catalog on MongoDB


def _sources() -> list[SourceConfig]:
    raw = os.environ.get("CDC_SOURCES", "")
    try:
        spec = json.loads(raw)
    except ValueError:
        raise ValueError(f"CDC_SOURCES is not JSON: {raw[:80]!r}") from None
    if not isinstance(spec, dict) or not spec:
        raise ValueError("CDC_SOURCES must be a non-empty JSON object of sources")
    out = []
    for name, s in spec.items():
        if not isinstance(s, dict) or not s.get("dsn") or not s.get("slot"):
            raise ValueError(f"CDC_SOURCES.{name}: needs 'dsn' and 'slot'")
        out.append(SourceConfig(name=name, dsn=s["dsn"], slot=s["slot"],
                                publication=s.get("publication", "msdb_cdc")))
    return out


@service.on_startup
async def _relays():
    engines = config_mod.load(os.environ.get("MSDB_CONFIG"), requires=("engines",)).engines
    if engines.bus == "kafka":
        def sink():
            return KafkaSink(engines.kafka_bootstrap)
        relays.extend(SlotRelay(src, sink_factory=sink) for src in _sources())
    else:
        sink = None
        relays.extend(SlotRelay(src, service.cfg.redis_url) for src in _sources())
    if engines.catalog == "mongodb":
        if not engines.mongodb_url:
            raise ValueError("engines.catalog is mongodb but MONGODB_URL is empty")
        from .mongo import ChangeStreamRelay, MongoSourceConfig   # pymongo: the seed-engines extra
        relays.append(ChangeStreamRelay(MongoSourceConfig(name="catalog", url=engines.mongodb_url),
                                        service.cfg.redis_url, sink_factory=sink))


@service.background
async def _run(stop):
    # Each relay streams in its own thread (psycopg2's replication protocol is
    # blocking); the threads stop within 0.5 s of the event.
    done = threading.Event()
    threads = [threading.Thread(target=r.run, args=(done,), name=f"cdc-{r.src.name}", daemon=True)
               for r in relays]
    for t in threads:
        t.start()
    try:
        await stop.wait()
    finally:
        done.set()
        for t in threads:
            await asyncio.to_thread(t.join, 5)


@service.health_check
async def _sources_health():
    bad = [r.src.name for r in relays if not r.connected]
    return "sources", {"ok": not bad, "down": bad}


@app.get("/admin/cdc", tags=["admin"])
async def cdc_status():
    return {"sources": [r.status() for r in relays]}
