"""Service-to-service HTTP calls (aiohttp), with outcomes the saga can reason about.

    PeerError
    ├── PeerRejected   the peer answered 4xx: the request definitely had no effect
    │                  (for our idempotent endpoints) -> `status`, `body`
    ├── PeerNotSent    could not connect: the request never reached the peer
    └── PeerUnknown    timeout, reset, 5xx after sending: the outcome is unknown
                       (Jepsen's `info`); resolve it by an idempotent retry or a
                       status query before deciding.

aiohttp rather than httpx here: on the saga's hot path httpx's anyio/httpcore
stack cost about half of the orders service's CPU (measured with py-spy),
aiohttp's C parser a fraction of it.  aiohttp never retries on its own, so
every retry is the saga's decision.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from .metrics import PEER_LATENCY

__all__ = ["PeerError", "PeerRejected", "PeerNotSent", "PeerUnknown", "Peer"]


class PeerError(Exception):
    def __init__(self, peer: str, message: str):
        super().__init__(f"{peer}: {message}")
        self.peer = peer


class PeerRejected(PeerError):
    def __init__(self, peer: str, status: int, body: Any):
        super().__init__(peer, f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class PeerNotSent(PeerError):
    pass


class PeerUnknown(PeerError):
    pass


class Peer:
    """One other service, reached over a keep-alive connection pool."""

    CONNECT_TIMEOUT_S = 2.0

    def __init__(self, name: str, base_url: str, *, timeout_ms: int):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000.0,
                                             sock_connect=self.CONNECT_TIMEOUT_S)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.base_url!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created lazily inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200, limit_per_host=200, keepalive_timeout=30),
                timeout=self.timeout, headers={"user-agent": "msdb-service"},
                json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict | None = None, timeout: float | None = None) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        kw = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(
            total=timeout, sock_connect=self.CONNECT_TIMEOUT_S)}
        try:
            async with self.session.request(method, self.base_url + path, json=json,
                                            params=params, **kw) as resp:
                status = resp.status
                raw = await resp.read()
        except aiohttp.ConnectionTimeoutError:
            outcome = "not_sent"
            raise PeerNotSent(self.name, "connect timed out") from None
        except aiohttp.ClientConnectorError as e:
            outcome = "not_sent"
            raise PeerNotSent(self.name, f"connect failed: {e.os_error or e}") from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            outcome = "unknown"
            raise PeerUnknown(self.name, "timed out") from None
        except aiohttp.ClientError as e:
            outcome = "unknown"
            raise PeerUnknown(self.name, f"transport error: {type(e).__name__}: {e}") from None
        finally:
            PEER_LATENCY.labels(self.name, outcome).observe(time.perf_counter() - start)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw[:500].decode(errors="replace")
        if status >= 500:
            raise PeerUnknown(self.name, f"HTTP {status}: {body}")
        if status >= 400:
            raise PeerRejected(self.name, status, body)
        return body
