"""A service's PostgreSQL pool (psycopg_pool), configured from seed §3.2.

    pool.max     -> max_size          pool.acquire (ms) -> timeout (s)
    pool.min     -> min_size          pool.idle (ms)    -> max_idle (s)

Every transaction is named; its time inside the database (after the
connection was acquired) goes to db_query_duration_seconds{pool,query}.

Connections are in autocommit mode: a single statement (fetchone, fetchall,
execute) is one round trip, with no BEGIN/COMMIT around it; `transaction()`
opens an explicit transaction in pipeline mode, so BEGIN travels with the
first statement and COMMIT with the last.
psycopg and pool errors are translated here into `Unavailable` (503).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout, PoolClosed

from ..config import DatabaseConfig
from .errors import Unavailable
from .metrics import DB_LATENCY, POOLS

__all__ = ["Database"]


class Database:
    def __init__(self, cfg: DatabaseConfig, *, name: str = "primary",
                 host: str | None = None, port: int | None = None):
        self.cfg = cfg
        self.name = name
        self.pool = AsyncConnectionPool(
            cfg.conninfo(host=host, port=port),
            min_size=cfg.pool.min, max_size=cfg.pool.max,
            timeout=cfg.pool.acquire / 1000.0, max_idle=cfg.pool.idle / 1000.0,
            kwargs={"row_factory": dict_row, "autocommit": True}, name=f"{cfg.username}-{name}", open=False,
            # A pool that cannot connect keeps trying; /health says so meanwhile.
            reconnect_timeout=3600.0,
        )
        POOLS.add(name, self.pool)

    def __repr__(self) -> str:
        return f"Database(name={self.name!r}, db={self.cfg.name!r}, pool={self.cfg.pool!r})"

    async def open(self) -> None:
        # wait=False: a service comes up even while its database is down,
        # and reports it in /health; the pool keeps connecting in the background.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close(timeout=2.0)

    @asynccontextmanager
    async def _connection(self, query: str, *, transaction: bool) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with self.pool.connection() as conn:
                start = time.perf_counter()
                try:
                    if transaction:
                        async with conn.pipeline(), conn.transaction():
                            yield conn
                    else:
                        yield conn
                finally:
                    DB_LATENCY.labels(self.name, query).observe(time.perf_counter() - start)
        except PoolTimeout:
            raise Unavailable(f"database pool exhausted: no connection to {self.cfg.name} within "
                              f"{self.cfg.pool.acquire} ms (pool.acquire)",
                              retry_after=1, extra={"store": self.cfg.name}) from None
        except PoolClosed:
            raise Unavailable("service is shutting down") from None
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as e:
            raise Unavailable(f"database {self.cfg.name} unavailable: "
                              f"{type(e).__name__}", extra={"store": self.cfg.name}) from None

    def transaction(self, query: str):
        """A connection inside a transaction; commits on success, rolls back on error."""
        return self._connection(query, transaction=True)

    async def fetchone(self, query: str, sql: str, params: Any = None) -> dict | None:
        async with self._connection(query, transaction=False) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def fetchall(self, query: str, sql: str, params: Any = None) -> list[dict]:
        async with self._connection(query, transaction=False) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def execute(self, query: str, sql: str, params: Any = None) -> int:
        async with self._connection(query, transaction=False) as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def health(self) -> dict:
        start = time.perf_counter()
        try:
            async with self.pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception as e:  # any failure means unhealthy, with its name
            return {"ok": False, "error": f"{type(e).__name__}: {e}".strip()[:300]}
        return {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 2)}
