"""Orders service: POST /orders runs the create-order saga; order reads, with
the order-history read served by the streaming replica.

Store: PostgreSQL `order_service_db` (seed §4.1 `orders`, `order_items`,
plus the saga log).  Talks to catalog and payments over HTTP only.
History read routing (ORDER_HISTORY_READ or ?read=): `replica` (default
when a replica is configured) or `primary`.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Header, Path, Query
from pydantic import Field

from ..common.app import JSON, Service
from ..common.errors import BadRequest, Unavailable
from ..common.types import Model, Quantity
from .saga import OrderSaga

log = logging.getLogger("msdb.orders")
service = Service("orders", replica=True, peers=("catalog", "payments"),
                  description="Orders and the create-order saga")
app = service.app
TOPIC = "orders.events"
saga: OrderSaga | None = None


def _history_default() -> str:
    mode = os.environ.get("ORDER_HISTORY_READ", "replica")
    if mode not in ("replica", "primary"):
        raise ValueError(f"ORDER_HISTORY_READ must be 'replica' or 'primary', got {mode!r}")
    return mode


HISTORY_READ = _history_default()


async def _publish(order: dict) -> None:
    try:
        await service.bus.publish(TOPIC, {"type": "order", "order": _jsonable(order)})
    except Exception as e:  # the bus being down must not fail the order
        log.warning("could not publish order %s: %s", order.get("id"), e)


def _jsonable(o):
    import orjson
    return orjson.loads(orjson.dumps(o, default=str))


@service.on_startup
async def _saga():
    global saga
    saga = OrderSaga(service.db, service.peers["catalog"], service.peers["payments"], _publish)


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


@app.post("/orders", tags=["orders"])
async def create_order(body: NewOrder, idempotency_key: IdempotencyKey = None):
    seen = set()
    for i, item in enumerate(body.items):
        if item.product_id in seen:
            raise BadRequest(f"items[{i}].product_id: product {item.product_id} appears twice",
                             field=f"items[{i}].product_id")
        seen.add(item.product_id)
    status, payload = await saga.create_order(
        body.user_id, [i.model_dump() for i in body.items], idempotency_key)
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


@app.get("/users/{user_id}/orders", tags=["orders"])
async def user_orders(user_id: Annotated[UUID, Path()],
                      limit: Annotated[int, Query(ge=1, le=500)] = 20,
                      read: Annotated[Literal["replica", "primary"] | None, Query()] = None):
    """Order history, newest first.  Served by the replica unless told otherwise;
    if the replica is down the primary answers (and `served_by` says so)."""
    mode = read or HISTORY_READ
    sql = ("SELECT id, user_id, total_amount, status, created_at FROM orders "
           "WHERE user_id = %s ORDER BY created_at DESC LIMIT %s")
    served_by = "primary"
    if mode == "replica" and service.replica is not None:
        try:
            rows = await service.replica.fetchall("user_orders", sql, (user_id, limit))
            served_by = "replica"
        except Unavailable:
            rows = await service.db.fetchall("user_orders", sql, (user_id, limit))
    else:
        rows = await service.db.fetchall("user_orders", sql, (user_id, limit))
    return {"user_id": user_id, "items": rows, "served_by": served_by}
