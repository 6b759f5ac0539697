"""The event bus behind a small interface.

`EventBus.publish(topic, event)` and `EventBus.consume(topic, group, handler)`.
The embedded stack uses Redis Streams with consumer groups
(`RedisStreamBus`); a Kafka implementation can replace it without touching
the services.  Events are JSON objects; a consumer acknowledges an event only
after its handler returned, so a crash re-delivers (at-least-once) and
handlers must be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .metrics import EVENTS

__all__ = ["EventBus", "RedisStreamBus", "Handler", "BatchHandler"]

log = logging.getLogger(__name__)
Handler = Callable[[dict], Awaitable[None]]
BatchHandler = Callable[[list[dict]], Awaitable[None]]


class EventBus(Protocol):
    async def publish(self, topic: str, event: dict) -> None: ...
    async def consume(self, topic: str, group: str, consumer: str, handler: Handler,
                      stop: asyncio.Event) -> None: ...
    async def consume_batches(self, topic: str, group: str, consumer: str,
                              handler: BatchHandler, stop: asyncio.Event) -> None: ...


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
