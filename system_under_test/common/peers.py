"""Service-to-service HTTP calls (httpx), with outcomes the saga can reason about.

    PeerError
    ├── PeerRejected   the peer answered 4xx: the request definitely had no effect
    │                  (for our idempotent endpoints) -> `status`, `body`
    ├── PeerNotSent    could not connect: the request never reached the peer
    └── PeerUnknown    timeout, reset, 5xx after sending: the outcome is unknown
                       (Jepsen's `info`); resolve it by an idempotent retry or a
                       status query before deciding.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

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

    def __init__(self, name: str, base_url: str, *, timeout_ms: int):
        self.name = name
        self.base_url = base_url
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout_ms / 1000.0, connect=2.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            headers={"user-agent": "msdb-service"})

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.base_url!r})"

    async def close(self) -> None:
        await self.client.aclose()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict | None = None, timeout: float | None = None) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        try:
            kw = {} if timeout is None else {"timeout": timeout}
            resp = await self.client.request(method, path, json=json, params=params, **kw)
        except httpx.ConnectError as e:
            outcome = "not_sent"
            raise PeerNotSent(self.name, f"connect failed: {e}") from None
        except httpx.ConnectTimeout:
            outcome = "not_sent"
            raise PeerNotSent(self.name, "connect timed out") from None
        except httpx.TimeoutException as e:
            outcome = "unknown"
            raise PeerUnknown(self.name, f"timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            outcome = "unknown"
            raise PeerUnknown(self.name, f"transport error: {type(e).__name__}: {e}") from None
        finally:
            PEER_LATENCY.labels(self.name, outcome).observe(time.perf_counter() - start)
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = resp.text[:500]
        if resp.status_code >= 500:
            raise PeerUnknown(self.name, f"HTTP {resp.status_code}: {body}")
        if resp.status_code >= 400:
            raise PeerRejected(self.name, resp.status_code, body)
        return body
