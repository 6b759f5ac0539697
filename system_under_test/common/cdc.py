"""The consumer side of the CDC pipeline, shared by every consumer.

`CdcConsumer(service, source, name, apply)` consumes the topic
`cdc.<source>` in the consumer group `name`.  `apply(events)` must make the
batch's effects idempotent by LSN (each target row remembers the LSN of the
change it last applied and ignores changes with a lower or equal one) and
return the events it actually applied.  The batch is acknowledged after
`apply` returned, so a crash re-delivers it and the LSN guard drops what was
already applied: exactly-once effects over an at-least-once bus.

CDC lag of an applied event = the time its effect became visible in the
target (after `apply` committed) - its commit time at the source.  Every lag
is kept (bounded ring) with a cursor, so the harness can read each one
exactly: GET /admin/cdc/lag?since=N.  The boot id changes with the process,
so a reader knows when a restart reset the cursor.

The bus is the one `engines.bus` names (Redis Streams by default, Kafka with
Debezium's topic names), read strictly: a bad BUS_ENGINE stops the service at
start-up.  GET /admin/cdc/<name>/backlog gives the group's backlog from the
bus itself (Redis: the relay's sequence and the group's pending entries;
Kafka: end offset - committed offset), for the lag monitor.

Test-only switch (honoured only with MSDB_ALLOW_MUTATIONS=1):
MSDB_CDC_CRASH_AFTER_APPLY=<consumer>:<n> makes the process exit (as kill -9
would: no clean-up) right after the n-th applied batch and before its
acknowledgement, the worst moment for exactly-once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import deque
from typing import Annotated, Awaitable, Callable

from fastapi import Query
from prometheus_client import Counter, Histogram

from .. import config as config_mod
from .bus import EventBus
from .buses import open_bus
from .metrics import REGISTRY
from .contract import NO_STORE
from .errors import Unavailable

__all__ = ["CdcConsumer"]

APPLIED = Counter("msdb_cdc_applied_total", "CDC events applied by a consumer",
                  ["consumer"], registry=REGISTRY)
SKIPPED = Counter("msdb_cdc_skipped_total", "CDC events a consumer dropped as already applied "
                  "(LSN guard)", ["consumer"], registry=REGISTRY)
LAG = Histogram("msdb_cdc_lag_seconds", "CDC lag: visible in the target - commit at the source",
                ["consumer"], registry=REGISTRY,
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

RING = 200_000


def _crash_switch(name: str) -> int | None:
    spec = os.environ.get("MSDB_CDC_CRASH_AFTER_APPLY", "")
    if not spec or os.environ.get("MSDB_ALLOW_MUTATIONS") != "1":
        return None
    who, _, n = spec.partition(":")
    return int(n) if who == name and n.isdigit() else None


class CdcConsumer:
    def __init__(self, service, source: str, name: str,
                 apply: Callable[[list[dict]], Awaitable[list[dict]]], *, linger_s: float = 0.0,
                 batch: int | None = None):
        self.service = service
        self.source = source
        self.name = name
        self.apply = apply
        self.linger_s = linger_s
        self.batch = batch
        self.boot = uuid.uuid4().hex[:12]
        self.samples: deque = deque(maxlen=RING)   # (index, applied_ms, commit_ms, lsn, table)
        self.count = 0
        self.applied = 0
        self.skipped = 0
        self.batches = 0
        self._crash_after = _crash_switch(name)
        self.bus: EventBus | None = None
        service.on_startup(self._open_bus)
        service.background(self._run)
        self._route()

    @property
    def topic(self) -> str:
        return f"cdc.{self.source}"

    async def _open_bus(self) -> None:
        engines = config_mod.load(os.environ.get("MSDB_CONFIG"), requires=("engines",)).engines
        self.bus = self.service.bus if engines.bus == "redis" and self.service.bus is not None \
            else open_bus(engines, self.service.redis)

    async def _run(self, stop: asyncio.Event) -> None:
        # A stable consumer name (not host-pid): Redis keeps a consumer's
        # delivered-but-unacknowledged events under its name, and a restarted
        # process re-reads them only under the same name.
        await self.bus.consume_batches(
            f"cdc.{self.source}", self.name, f"{self.name}-{os.environ.get('MSDB_CONSUMER_ID', '0')}",
            self._handle, stop, linger_s=self.linger_s, batch=self.batch)

    async def _handle(self, events: list[dict]) -> None:
        applied = await self.apply(events)
        now_ms = time.time() * 1000
        for e in applied:
            src = e.get("source") or {}
            commit = src.get("ts_ms")
            if commit is None:
                continue
            self.count += 1
            self.samples.append((self.count, round(now_ms, 3), commit, src.get("lsn"), src.get("table")))
            LAG.labels(self.name).observe(max(0.0, (now_ms - commit) / 1000))
        self.applied += len(applied)
        self.skipped += len(events) - len(applied)
        APPLIED.labels(self.name).inc(len(applied))
        SKIPPED.labels(self.name).inc(len(events) - len(applied))
        self.batches += 1
        if self._crash_after is not None and self.batches >= self._crash_after:
            os._exit(137)   # test-only: die after the effects, before the acknowledgement

    def _route(self) -> None:
        app = self.service.app
        name = self.name

        @app.get(f"/admin/cdc/{name}/lag", tags=["admin"], name=f"cdc_lag_{name}", openapi_extra=NO_STORE)
        async def lag(since: Annotated[int, Query(ge=0, le=2**53)] = 0,
                      limit: Annotated[int, Query(ge=1, le=100_000)] = 20_000):
            """Lag samples with index > since (applied_ms, commit_ms, lsn, table)."""
            # Indexes are consecutive: skip straight to `since` instead of
            # scanning the whole ring on every 1 Hz read.
            first = self.samples[0][0] if self.samples else 1
            start = max(0, since - first + 1)
            items = list(itertools.islice(self.samples, start, start + limit))
            return {"consumer": name, "boot": self.boot, "applied": self.applied,
                    "skipped": self.skipped, "last": self.count,
                    "items": [{"i": i, "applied_ms": a, "commit_ms": c, "lsn": lsn, "table": t}
                              for i, a, c, lsn, t in items]}

        @app.get(f"/admin/cdc/{name}/backlog", tags=["admin"], name=f"cdc_backlog_{name}",
                 openapi_extra=NO_STORE)
        async def backlog():
            """The group's backlog on its topic, from the bus (published, backlog, pending)."""
            if self.bus is None:
                return {"consumer": name, "topic": self.topic, "published": None, "backlog": None,
                        "pending": None, "up": False}
            try:
                b = await asyncio.wait_for(self.bus.backlog(self.topic, name), 5)
            except TimeoutError:
                raise Unavailable(f"the bus did not answer for {name}'s backlog within 5 s") from None
            return {"consumer": name, "topic": self.topic, "bus": type(self.bus).__name__, **b.as_dict()}
