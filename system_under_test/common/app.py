"""The service skeleton every service is built on.

`Service(name, ...)` owns the FastAPI app and, for the process lifetime, the
config, the database pools, Redis, the peers and the bus.  It installs:

- `GET /health` (checks every store; 503 if one is down) and `GET /metrics`;
- JSON errors that name the bad field for every bad input (422/400/404/413),
  503 for an unavailable store, never a traceback; a 405 whose `Allow` lists
  every method of the path;
- /openapi.json that documents those errors and statuses (`contract.py`);
- a request-body limit, and latency metrics per route template.
"""

from __future__ import annotations

import asyncio
import decimal
import logging
import os
import re
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.convertors import StringConvertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from .. import config as config_mod
from . import contract
from .bus import RedisStreamBus
from .db import Database
from .errors import ApiError, Unavailable
from .metrics import REGISTRY, MetricsMiddleware
from .peers import Peer

__all__ = ["Service", "JSON", "MAX_BODY_BYTES"]

log = logging.getLogger("msdb.service")
MAX_BODY_BYTES = 64 * 1024


def _default(o: Any) -> Any:
    if isinstance(o, decimal.Decimal):
        return str(o)  # money stays exact on the wire
    raise TypeError(f"cannot serialise {type(o).__name__}")


# FastAPI turns returned dicts into JSON through jsonable_encoder, which makes
# Decimal a float (12.50 -> 12.5, and worse for large sums).  Money must stay
# exact for the checkers, so Decimal is encoded as its string everywhere.
import fastapi.encoders as _fe  # noqa: E402
_fe.ENCODERS_BY_TYPE[decimal.Decimal] = str


class JSON(JSONResponse):
    """orjson rendering; Decimal as string, UUID and datetimes natively."""
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


def _telemetry() -> dict | None:
    """FastAPI's OpenTelemetry: off unless FastAPI's own switch asks for it.
    The services report through Prometheus (/metrics); with telemetry on but
    no provider configured, FastAPI still checks the three providers on
    every request: 11 µs of its 164 µs per request in process (152 µs off),
    measured on a service's middleware stack and a small pydantic body."""
    if os.environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return None
    return {"tracing": False, "metrics": False, "logs": False}


def _printable(s: str) -> str:
    """Input echoed back (a field name, a message) as text orjson can render:
    a lone surrogate becomes its escape instead of a 500."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _field(loc: tuple) -> str:
    """('body', 'items', 0, 'quantity') -> 'items[0].quantity'; ('query','limit') -> 'limit'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie") and len(parts) > 1:
        parts = parts[1:]
        if isinstance(parts[0], int) and loc[0] == "body":  # json_invalid position
            return "body"
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return _printable(out) or "body"


def _allowed_methods(app: FastAPI, path: str) -> str:
    """Every method of every route whose path matches (Starlette's 405 names
    only the first route's)."""
    methods: set[str] = set()
    for route in app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= route.methods
    return ", ".join(sorted(methods))


_CONVERTOR_KINDS = {"UUIDConvertor": "UUID", "IntegerConvertor": "integer", "FloatConvertor": "number"}


def _bad_typed_segment(app: FastAPI, method: str, path: str) -> tuple[str, str, str] | None:
    """(parameter, expected kind, value) when `path` misses a route only because a typed path
    parameter ({product_id:uuid}) does not parse: that is bad input, a 422
    naming the parameter, not an unknown route."""
    for route in app.routes:
        if not isinstance(route, APIRoute) or method not in route.methods:
            continue
        typed = {k: c for k, c in route.param_convertors.items() if not isinstance(c, StringConvertor)}
        if not typed:
            continue
        m = compile_path(route.path_format)[0].match(path)
        if m is None:
            continue
        for name, conv in typed.items():
            if not re.fullmatch(conv.regex, m[name]):
                return name, _CONVERTOR_KINDS.get(type(conv).__name__, "value"), m[name]
    return None


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    resp = JSON({"error": "payload_too_large", "field": "body",
                                 "message": f"request body exceeds {self.limit} bytes"},
                                status_code=413)
                    return await resp(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return msg
        await self.app(scope, limited_receive, send)


class Service:
    def __init__(self, name: str, *, database: bool = True, replica: bool = False,
                 redis_user: bool = True, peers: tuple[str, ...] = (),
                 description: str = ""):
        self.name = name
        self.needs_db = database
        self.wants_replica = replica
        self.needs_redis = redis_user
        self.peer_names = peers
        self.cfg: config_mod.ServiceConfig | None = None
        self.db: Database | None = None
        self.replica: Database | None = None
        self.redis: aioredis.Redis | None = None
        self.bus: RedisStreamBus | None = None
        self.peers: dict[str, Peer] = {}
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._health: list[Callable[[], Awaitable[tuple[str, dict]]]] = []
        self._tasks: list[asyncio.Task] = []
        self._background: list[Callable[[asyncio.Event], Awaitable[None]]] = []
        self.stopping = asyncio.Event()
        self.app = FastAPI(title=f"msdb {name} service", description=description,
                           version="0.1.0", lifespan=self._lifespan, default_response_class=JSON,
                           telemetry=_telemetry())
        self._install()

    # -- hooks ---------------------------------------------------------------

    def on_startup(self, fn):
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn):
        self._shutdown.append(fn)
        return fn

    def health_check(self, fn):
        self._health.append(fn)
        return fn

    def background(self, fn):
        """A coroutine fn(stop_event) run for the process lifetime."""
        self._background.append(fn)
        return fn

    # -- lifecycle -----------------------------------------------------------

    def _requires(self) -> tuple[str, ...]:
        req = []
        if self.needs_db:
            req.append("database")
        if self.needs_redis:
            req.append("redis")
        if self.peer_names:
            req.append("peers")
        return tuple(req)

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI):
        self.cfg = config_mod.load(os.environ.get("MSDB_CONFIG"), requires=self._requires())
        for p in self.peer_names:
            if p not in self.cfg.peers:
                raise config_mod.ConfigError(f"peers.{p}: the {self.name} service needs the URL "
                                             f"of {p} ({p.upper()}_URL is not set)")
        if self.needs_db:
            self.db = Database(self.cfg.database, name="primary")
            await self.db.open()
            if self.wants_replica and self.cfg.replica is not None:
                self.replica = Database(self.cfg.database, name="replica",
                                        host=self.cfg.replica.host, port=self.cfg.replica.port)
                await self.replica.open()
        if self.needs_redis:
            # A pooled connection that a network fault closed fails on its next
            # command; retry such errors (briefly) on a fresh connection instead
            # of failing the request that happens to find it.
            self.redis = aioredis.Redis.from_url(
                self.cfg.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
                health_check_interval=10,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
                retry_on_error=[RedisConnectionError, RedisTimeoutError])
            self.bus = RedisStreamBus(self.redis)
        for p in self.peer_names:
            self.peers[p] = Peer(p, self.cfg.peers[p], timeout_ms=self.cfg.peer_timeout_ms)
        for fn in self._startup:
            await fn()
        for fn in self._background:
            self._tasks.append(asyncio.create_task(fn(self.stopping), name=fn.__name__))
        try:
            yield
        finally:
            self.stopping.set()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for fn in self._shutdown:
                await fn()
            for peer in self.peers.values():
                await peer.close()
            if self.redis is not None:
                await self.redis.aclose()
            for db in (self.replica, self.db):
                if db is not None:
                    await db.close()

    # -- built-in routes and error handling -----------------------------------

    def _install(self) -> None:
        app = self.app
        contract.publish(app, unavailable=self.needs_db or bool(self.peer_names))
        app.add_middleware(BodyLimitMiddleware)
        app.add_middleware(MetricsMiddleware)

        @app.exception_handler(ApiError)
        async def api_error(request: Request, exc: ApiError):
            headers = {}
            if isinstance(exc, Unavailable):
                headers["Retry-After"] = str(exc.retry_after)
            return JSON(exc.body(), status_code=exc.status, headers=headers)

        @app.exception_handler(RequestValidationError)
        async def validation_error(request: Request, exc: RequestValidationError):
            errors = []
            for e in exc.errors():
                loc = tuple(e.get("loc", ()))
                msg = e.get("msg", "invalid")
                if e.get("type") == "json_invalid":
                    msg = f"malformed JSON: {e.get('ctx', {}).get('error', msg)}"
                elif e.get("type") == "missing" and loc == ("body",):
                    msg = "a JSON body is required"
                errors.append({"field": _field(loc), "message": _printable(msg)})
            first = errors[0] if errors else {"field": "body", "message": "invalid"}
            status = 400 if any(e.get("type") == "json_invalid" for e in exc.errors()) else 422
            return JSON({"error": "invalid_request", "field": first["field"],
                         "message": f"{first['field']}: {first['message']}", "errors": errors},
                        status_code=status)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException):
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
            headers = dict(getattr(exc, "headers", None) or {})
            path = request.url.path
            if exc.status_code == 404 and message == "Not Found":
                bad = _bad_typed_segment(app, request.method, path)
                if bad is not None:
                    name, kind, value = bad
                    msg = f"{name}: not a valid {kind}: {_printable(value)[:100]!r}"
                    return JSON({"error": "invalid_request", "field": name, "message": msg,
                                 "errors": [{"field": name, "message": msg}]}, status_code=422)
                message = f"no route {request.method} {path}"
            if exc.status_code == 405:
                headers["Allow"] = _allowed_methods(app, path)
            body = {"error": code, "message": _printable(message)}
            if exc.status_code == 400:
                # FastAPI's own body-parsing failures (bad encoding, unparseable JSON)
                body.update(error="invalid_request", field="body", message=f"body: {body['message']}")
            return JSON(body, status_code=exc.status_code, headers=headers or None)

        @app.exception_handler(BodyTooLarge)
        async def too_large(request: Request, exc: BodyTooLarge):
            return JSON({"error": "payload_too_large", "field": "body",
                         "message": f"request body exceeds {MAX_BODY_BYTES} bytes"}, status_code=413)

        @app.exception_handler(RecursionError)
        async def too_deep(request: Request, exc: RecursionError):
            return JSON({"error": "invalid_request", "field": "body",
                         "message": "body: JSON nested too deeply"}, status_code=400)

        @app.exception_handler(Exception)
        async def unexpected(request: Request, exc: Exception):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return JSON({"error": "internal", "message": f"{type(exc).__name__}"}, status_code=500)

        @app.get("/health", tags=["ops"], openapi_extra=contract.NO_STORE, responses={
            503: {"description": "a critical store is down (the same body, `status: unhealthy`)",
                  "content": {"application/json": {"schema": {"type": "object"}}}}})
        async def health():
            checks: dict[str, dict] = {}
            if self.db is not None:
                checks["database"] = await self.db.health()
            if self.replica is not None:
                # The replica only serves reads that can fall back to the primary.
                checks["replica"] = {**await self.replica.health(), "critical": False}
            if self.redis is not None:
                try:
                    await asyncio.wait_for(self.redis.ping(), 2.0)
                    checks["redis"] = {"ok": True}
                except Exception as e:  # any failure is unhealthy
                    checks["redis"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
            for fn in self._health:
                name, res = await fn()
                checks[name] = res
            ok = all(c.get("ok") for c in checks.values() if c.get("critical", True))
            return JSON({"service": self.name, "status": "ok" if ok else "unhealthy",
                         "checks": checks}, status_code=200 if ok else 503)

        @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
                 openapi_extra=contract.NO_STORE,
                 responses={200: {"description": "Prometheus text exposition format"}})
        async def metrics():
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
