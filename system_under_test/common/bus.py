"""The event bus behind a small interface.

`EventBus.publish(topic, event)`, `EventBus.consume_batches(topic, group,
consumer, handler, stop)` and `EventBus.backlog(topic, group)`.  The embedded
stack uses Redis Streams with consumer groups (`RedisStreamBus`); `engines.bus:
kafka` selects `KafkaBus` (bus_kafka.py, Debezium's topic names) through
`open_bus` (buses.py), and the services do not change.  Events are JSON objects; a
consumer acknowledges (commits) an event only after its handler returned, so a
crash re-delivers (at-least-once) and handlers must be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .metrics import EVENTS

# The relay's count of events published per CDC source, on the shared bus's
# key space: every consumer's Redis ACL user (`bus:*`) can read it, so its
# own backlog endpoint answers (under `cdc:*` only the relay could).
SEQ_KEY = "bus:seq:{source}"
OLD_SEQ_KEY = "cdc:seq:{source}"    # before 2026-12-02: carried over by the relay

__all__ = ["EventBus", "RedisStreamBus", "Handler", "BatchHandler", "Backlog"]

log = logging.getLogger(__name__)
Handler = Callable[[dict], Awaitable[None]]
BatchHandler = Callable[[list[dict]], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Backlog:
    """One consumer group's position on a topic.  `published`: events on the
    topic (Redis: the relay's sequence; Kafka: the sum of end offsets);
    `backlog`: published and not yet acknowledged by the group; `pending`: the
    part of it delivered but not yet acknowledged.  None where unknown."""
    published: int | None
    backlog: int | None
    pending: int | None
    up: bool = True

    def as_dict(self) -> dict:
        return {"published": self.published, "backlog": self.backlog, "pending": self.pending,
                "up": self.up}


class EventBus(Protocol):
    async def publish(self, topic: str, event: dict) -> None: ...
    async def consume(self, topic: str, group: str, consumer: str, handler: Handler,
                      stop: asyncio.Event) -> None: ...
    async def consume_batches(self, topic: str, group: str, consumer: str,
                              handler: BatchHandler, stop: asyncio.Event, *,
                              linger_s: float = 0.0, batch: int | None = None) -> None: ...
    async def backlog(self, topic: str, group: str) -> Backlog: ...


class RedisStreamBus:
    """Topic `t` is the stream `bus:t`."""

    BLOCK_MS = 1000
    BATCH = 100
    MAXLEN = 200_000
    RETRY_S = 0.5

    def __init__(self, client: aioredis.Redis):
        self.r = client

    async def publish(self, topic: str, event: dict) -> None:
        await self.r.xadd(f"bus:{topic}", {"e": orjson.dumps(event)}, maxlen=self.MAXLEN,
                          approximate=True)
        EVENTS.labels(topic, "out").inc()

    async def _ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.r.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def consume(self, topic: str, group: str, consumer: str, handler: Handler,
                      stop: asyncio.Event) -> None:
        """Deliver events one by one to handler until `stop` is set."""
        async def each(events: list[dict]) -> None:
            for e in events:
                await handler(e)
        await self.consume_batches(topic, group, consumer, each, stop)

    async def consume_batches(self, topic: str, group: str, consumer: str,
                              handler: BatchHandler, stop: asyncio.Event, *,
                              linger_s: float = 0.0, batch: int | None = None) -> None:
        """Deliver events in batches (up to `batch`, default BATCH) until `stop`
        is set; survives Redis outages.  A batch is acknowledged only after its
        handler returned.

        `linger_s` (as Kafka's linger.ms): once an event arrived and the batch
        is not full, wait this long and take what came meanwhile in one read;
        for sinks whose every commit is expensive, such as a column store.
        """
        size = batch or self.BATCH
        stream = f"bus:{topic}"
        pending_first = True   # after a restart, first re-read what we had but never acked
        while not stop.is_set():
            try:
                await self._ensure_group(stream, group)
                start_id = "0" if pending_first else ">"
                resp = await self.r.xreadgroup(group, consumer, {stream: start_id},
                                               count=size, block=self.BLOCK_MS)
                entries = resp[0][1] if resp else []
                if pending_first and not entries:
                    pending_first = False
                    continue
                if not entries:
                    continue
                if linger_s > 0 and not pending_first and len(entries) < size:
                    # Sleep, then one read.  Reading until the batch was full
                    # (a blocking read returns as soon as one event is there)
                    # cost hundreds of round trips a second under load.
                    await asyncio.sleep(linger_s)
                    more = await self.r.xreadgroup(group, consumer, {stream: ">"},
                                                   count=size - len(entries))
                    entries += more[0][1] if more else []
                events, ids = [], []
                for msg_id, fields in entries:
                    ids.append(msg_id)
                    raw = fields.get(b"e") or fields.get("e")
                    try:
                        events.append(orjson.loads(raw))
                    except (orjson.JSONDecodeError, TypeError):
                        log.error("dropping malformed event %s on %s", msg_id, stream)
                await handler(events)
                await self.r.xack(stream, group, *ids)
                EVENTS.labels(topic, "in").inc(len(events))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.warning("bus %s: %s; retrying", stream, e)
                pending_first = True   # what was read but not acknowledged is re-read first
                await asyncio.sleep(self.RETRY_S)
            except Exception:  # a handler failure: keep the events pending, retry them
                log.exception("bus %s: handler failed; will retry", stream)
                pending_first = True
                await asyncio.sleep(self.RETRY_S)

    async def backlog(self, topic: str, group: str) -> Backlog:
        """From Redis alone, as the lag monitor reads it: events the relay
        numbered (`seq`) and the group has not yet been delivered, plus those
        delivered but unacknowledged (pending)."""
        stream = f"bus:{topic}"
        source = topic.removeprefix("cdc.")
        try:
            published = int(await self.r.get(SEQ_KEY.format(source=source)) or 0)
            if not await self.r.exists(stream):
                return Backlog(published=published, backlog=0, pending=0)
            groups = await self.r.xinfo_groups(stream)
            g = next((g for g in groups if g["name"] in (group, group.encode())), None)
            if g is None:
                return Backlog(published=published, backlog=published, pending=0)
            pending = int(g["pending"])
            last = g["last-delivered-id"]
            delivered_seq = 0
            if last not in (b"0-0", "0-0"):
                entry = await self.r.xrange(stream, min=last, max=last, count=1)
                if entry:
                    raw = entry[0][1].get(b"e") or entry[0][1].get("e")
                    delivered_seq = int(orjson.loads(raw).get("seq", 0))
            return Backlog(published=published, backlog=max(0, published - delivered_seq) + pending,
                           pending=pending)
        except (RedisError, OSError, ValueError):
            return Backlog(published=None, backlog=None, pending=None, up=False)
