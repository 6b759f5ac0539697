"""Orders service: POST /orders runs the create-order saga; order reads, with
the order-history read served by the streaming replica.

Store: PostgreSQL `order_service_db` (seed §4.1 `orders`, `order_items`,
plus the saga log, plus `user_replica`: a read-only copy of user data kept
by CDC from the users database, seed §6.1).  Talks to catalog and payments
over HTTP only; orders and their lines leave through CDC.

History read routing (ORDER_HISTORY_READ, PUT /admin/history-routing, or
?read= per request):
- `replica`: always the replica (stale right after a write while it lags);
- `read-your-writes`: the replica, unless it has not yet replayed the WAL
  position of this user's last order (then the primary);
- `primary`: always the primary.
If the replica is down the primary answers; `served_by` says who did.

The WAL position after each order costs a query, so it is recorded only once
read-your-writes is in use (configured, or asked for by a read).  Before
that, a user's order is remembered without a position, and that user's
read-your-writes reads go to the primary: never stale, only not offloaded.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Header, Path, Query
from pydantic import Field

from ..common.app import JSON, Service
from ..common.cdc import CdcConsumer
from ..common.contract import NO_STORE, errors
from ..common.errors import BadRequest, Unavailable
from ..common.types import Model, Quantity
from .saga import OrderSaga

log = logging.getLogger("msdb.orders")
service = Service("orders", replica=True, peers=("catalog", "payments"),
                  description="Orders and the create-order saga")
app = service.app
saga: OrderSaga | None = None


ROUTINGS = ("replica", "read-your-writes", "primary")
Routing = Literal["replica", "read-your-writes", "primary"]


def _history_default() -> str:
    mode = os.environ.get("ORDER_HISTORY_READ", "replica")
    if mode not in ROUTINGS:
        raise ValueError(f"ORDER_HISTORY_READ must be one of {', '.join(ROUTINGS)}, got {mode!r}")
    return mode


HISTORY_READ = _history_default()
# user id -> WAL position (int) after that user's last order; bounded (LRU).
_LAST_WRITE: OrderedDict = OrderedDict()   # user -> (write number, WAL position after it or None)
_WRITES = itertools.count()
_LAST_WRITE_MAX = 100_000
_RYW_USED = HISTORY_READ == "read-your-writes"   # set for good by the first such read


@service.on_startup
async def _saga():
    global saga
    saga = OrderSaga(service.db, service.peers["catalog"], service.peers["payments"])


async def _apply_users(events: list[dict]) -> list[dict]:
    """CDC of the users table -> user_replica, idempotent by LSN."""
    applied = []
    async with service.db.transaction("user_replica_apply") as conn:
        for e in events:
            src = e.get("source") or {}
            row = e.get("after") if e.get("op") != "d" else e.get("before")
            if src.get("table") != "users" or not isinstance(src.get("lsn"), int) \
                    or not isinstance(row, dict) or "id" not in row:
                continue
            cur = await conn.execute(
                "INSERT INTO user_replica (id, email, first_name, last_name, is_active, deleted, "
                "source_lsn) VALUES (%(id)s, %(email)s, %(fn)s, %(ln)s, %(active)s, %(deleted)s, %(lsn)s) "
                "ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, first_name = EXCLUDED.first_name, "
                "last_name = EXCLUDED.last_name, is_active = EXCLUDED.is_active, "
                "deleted = EXCLUDED.deleted, source_lsn = EXCLUDED.source_lsn, replicated_at = now() "
                "WHERE user_replica.source_lsn < EXCLUDED.source_lsn RETURNING 1",
                {"id": row["id"], "email": row.get("email"), "fn": row.get("first_name"),
                 "ln": row.get("last_name"), "active": row.get("is_active"),
                 "deleted": e.get("op") == "d", "lsn": src["lsn"]})
            if await cur.fetchone() is not None:   # pipelined: rowcount is not known yet
                applied.append(e)
    return applied


user_feed = CdcConsumer(service, "users", "orders-user-replica", _apply_users)


@service.background
async def _recovery(stop):
    await saga.recovery_loop(stop)


class OrderItem(Model):
    product_id: UUID
    quantity: Quantity


class NewOrder(Model):
    user_id: UUID
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=20)]


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                              pattern=r"^[\x21-\x7e]+$")]


@app.post("/orders", status_code=201, tags=["orders"], responses={
    200: {"description": "a repeat of a completed order with the same Idempotency-Key"},
    **errors(402, 404, 409)})
async def create_order(body: NewOrder, idempotency_key: IdempotencyKey = None):
    seen = set()
    for i, item in enumerate(body.items):
        if item.product_id in seen:
            raise BadRequest(f"items[{i}].product_id: product {item.product_id} appears twice",
                             field=f"items[{i}].product_id")
        seen.add(item.product_id)
    status, payload = await saga.create_order(
        body.user_id, [i.model_dump() for i in body.items], idempotency_key)
    if service.replica is not None and isinstance(payload, dict) and payload.get("order"):
        await _remember_write(body.user_id)   # for read-your-writes routing
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSON(payload, status_code=status, headers=headers)


@app.get("/orders/{order_id}", tags=["orders"])
async def get_order(order_id: Annotated[UUID, Path()]):
    return await saga.get_order(order_id)


@app.get("/orders", tags=["orders"])
async def list_orders(status: Annotated[Literal["PENDING", "CONFIRMED", "CANCELLED"] | None, Query()] = None,
                      limit: Annotated[int, Query(ge=1, le=10000)] = 100,
                      offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    rows = await service.db.fetchall(
        "list_orders", "SELECT id, user_id, total_amount, status, created_at FROM orders "
        "WHERE (%(s)s::text IS NULL OR status = %(s)s) ORDER BY created_at, id "
        "LIMIT %(l)s OFFSET %(o)s", {"s": status, "l": limit, "o": offset})
    return {"items": rows, "limit": limit, "offset": offset}


@app.get("/admin/sagas", tags=["admin"])
async def list_sagas(open_only: Annotated[bool, Query(alias="open")] = False,
                     limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                     offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """The saga log, for checkers reading the final state (open=true: not yet ended)."""
    rows = await service.db.fetchall(
        "list_sagas", "SELECT id, order_id, idempotency_key, user_id, state, error, created_at, "
        "updated_at FROM sagas WHERE (NOT %(open)s OR state NOT IN ('COMPLETED', 'COMPENSATED', "
        "'FAILED')) ORDER BY created_at, id LIMIT %(l)s OFFSET %(o)s",
        {"open": open_only, "l": limit, "o": offset})
    return {"items": rows, "limit": limit, "offset": offset}


@app.get("/admin/order-items", tags=["admin"])
async def list_order_items(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                           offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """Every order line, for checkers reading the final state."""
    rows = await service.db.fetchall(
        "list_order_items", "SELECT order_id, product_id, quantity, unit_price FROM order_items "
        "ORDER BY order_id, product_id LIMIT %s OFFSET %s", (limit, offset))
    return {"items": rows, "limit": limit, "offset": offset}


async def _remember_write(user_id: UUID) -> None:
    """The WAL position after this user's order: the replica has everything
    the user wrote once it has replayed this far."""
    n = next(_WRITES)
    _LAST_WRITE[user_id] = (n, None)   # until known: read-your-writes reads go to the primary
    _LAST_WRITE.move_to_end(user_id)
    if _RYW_USED:
        try:
            row = await service.db.fetchone(
                "wal_position", "SELECT (pg_current_wal_lsn() - '0/0')::bigint AS lsn")
        except Unavailable:
            row = None   # the order stands; this user's next history read goes to the primary
        # Only if no later order of this user came meanwhile: its position
        # may be past ours, and it records its own.
        if row is not None and _LAST_WRITE.get(user_id, (None,))[0] == n:
            _LAST_WRITE[user_id] = (n, row["lsn"])
    while len(_LAST_WRITE) > _LAST_WRITE_MAX:
        _LAST_WRITE.popitem(last=False)


class RoutingChange(Model):
    mode: Routing


@app.get("/admin/history-routing", tags=["admin"], openapi_extra=NO_STORE)
async def get_routing():
    return {"mode": HISTORY_READ, "modes": list(ROUTINGS)}


@app.put("/admin/history-routing", tags=["admin"], openapi_extra=NO_STORE)
async def set_routing(body: RoutingChange):
    """Change the order-history read routing at run time (scenarios use it)."""
    global HISTORY_READ, _RYW_USED
    HISTORY_READ = body.mode
    _RYW_USED = _RYW_USED or body.mode == "read-your-writes"
    return {"mode": HISTORY_READ}


@app.get("/admin/user-replica", tags=["admin"])
async def user_replica(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                       offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """The CDC copy of user data, for checkers reading the final state."""
    rows = await service.db.fetchall(
        "list_user_replica", "SELECT id, email, deleted, source_lsn FROM user_replica "
        "ORDER BY id LIMIT %s OFFSET %s", (limit, offset))
    return {"items": rows, "limit": limit, "offset": offset}


@app.get("/users/{user_id}/orders", tags=["orders"])
async def user_orders(user_id: Annotated[UUID, Path()],
                      limit: Annotated[int, Query(ge=1, le=500)] = 20,
                      read: Annotated[Routing | None, Query()] = None):
    """Order history, newest first, routed as configured (see the module doc);
    `served_by` says which server answered."""
    global _RYW_USED
    mode = read or HISTORY_READ
    sql = ("SELECT id, user_id, total_amount, status, created_at FROM orders "
           "WHERE user_id = %s ORDER BY created_at DESC LIMIT %s")
    if mode != "primary" and service.replica is not None:
        try:
            if mode == "read-your-writes":
                _RYW_USED = True
                last = _LAST_WRITE.get(user_id)   # None: no order by this user here
                if last is not None and last[1] is None:
                    raise Unavailable("position of this user's last write unknown")
                if last is not None:
                    row = await service.replica.fetchone(
                        "replica_position",
                        "SELECT COALESCE(pg_last_wal_replay_lsn() - '0/0', 0)::bigint AS lsn")
                    if row["lsn"] < last[1]:
                        raise Unavailable("replica behind this user's last write")
            rows = await service.replica.fetchall("user_orders", sql, (user_id, limit))
            return {"user_id": user_id, "items": rows, "served_by": "replica"}
        except Unavailable:
            pass
    rows = await service.db.fetchall("user_orders", sql, (user_id, limit))
    return {"user_id": user_id, "items": rows, "served_by": "primary"}
