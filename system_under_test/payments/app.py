"""Payments service: charge and refund, idempotent by order id.

Store: PostgreSQL `payment_service_db`.  The decline rate (share of new
charges declined) comes from PAYMENT_DECLINE_RATE and can be changed at run
time through PUT /admin/decline-rate, so scenarios can plant declines.
"""

from __future__ import annotations

import os
import random
from typing import Annotated
from uuid import UUID

from fastapi import Path, Query
from pydantic import Field

from ..common.app import JSON, Service
from ..common.contract import NO_STORE, errors
from ..common.errors import Conflict, NotFound
from ..common.types import Model, Money, text

service = Service("payments", redis_user=False, description="Charges and refunds")
app = service.app


def _initial_rate() -> float:
    raw = os.environ.get("PAYMENT_DECLINE_RATE", "0")
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"PAYMENT_DECLINE_RATE must be between 0 and 1, got {raw!r}")
    return rate


state = {"decline_rate": _initial_rate()}
_rng = random.Random()


class Charge(Model):
    order_id: UUID
    user_id: UUID
    amount: Money
    # Idempotency key of this charge; by default the order id (one charge per order).
    charge_key: text(255, 1) | None = None


class DeclineRate(Model):
    rate: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


_COLS = "id, order_id, user_id, amount, status, charge_key, created_at, refunded_at"
# Insert unless the order was voided; or return the earlier charge of this key
# (migration 003: the order's advisory lock, then a fresh snapshot).
_CHARGE = f"SELECT {_COLS}, created, voided FROM charge_once(%(o)s, %(u)s, %(a)s, %(s)s, %(k)s)"
_ORDER_LOCK = "SELECT order_lock(%s)"     # migration 003: the key charge_once uses too


def _result(row: dict, created: bool) -> JSON:
    if row["status"] == "DECLINED":
        return JSON({"error": "payment_declined", "message": f"payment for order "
                     f"{row['order_id']} was declined", "field": "amount", "payment": row},
                    status_code=402)
    return JSON(row, status_code=201 if created else 200)


@app.post("/payments", status_code=201, tags=["payments"], responses={
    200: {"description": "a repeat of this charge key: the first outcome"},
    **errors(402, 409)})
async def charge(body: Charge):
    """Charge once per charge key (default: the order id): a repeat returns the
    first outcome.  An order voided by a refund refuses every charge."""
    key = body.charge_key or str(body.order_id)
    status = "DECLINED" if _rng.random() < state["decline_rate"] else "CAPTURED"
    # One order at a time: a refund (void) and a charge of the same order never
    # interleave (the function takes the order's lock first).
    row = await service.db.fetchone("charge", _CHARGE, {"o": body.order_id, "u": body.user_id,
                                                       "a": body.amount, "s": status, "k": key})
    if row is None or row.pop("voided"):
        raise Conflict(f"order {body.order_id} was cancelled; it cannot be charged", field="order_id")
    created = row.pop("created")
    if not created and (row["order_id"] != body.order_id or row["amount"] != body.amount):
        raise Conflict(f"charge key {key!r} was already used for order {row['order_id']}, "
                       f"amount {row['amount']}", field="charge_key")
    return _result(row, created)


@app.post("/payments/{order_id}/refund", tags=["payments"])
async def refund(order_id: Annotated[UUID, Path()]):
    """Cancel the order's money: refund every captured charge and void the order,
    so that a charge arriving late is refused.  Idempotent."""
    async with service.db.transaction("refund") as conn:
        await conn.execute(_ORDER_LOCK, (order_id,))
        await conn.execute("INSERT INTO voided_orders (order_id) VALUES (%s) "
                           "ON CONFLICT (order_id) DO NOTHING", (order_id,))
        await conn.execute("UPDATE payments SET status = 'REFUNDED', refunded_at = now() "
                           "WHERE order_id = %s AND status = 'CAPTURED'", (order_id,))
        cur = await conn.execute(f"SELECT {_COLS} FROM payments WHERE order_id = %s "
                                 f"ORDER BY created_at", (order_id,))
        rows = await cur.fetchall()
    return {"order_id": order_id, "voided": True, "payments": rows}


@app.get("/payments/by-order/{order_id}", tags=["payments"])
async def by_order(order_id: Annotated[UUID, Path()]):
    """The order's first charge (there is exactly one when orders behaves)."""
    rows = await service.db.fetchall("get_payment", f"SELECT {_COLS} FROM payments WHERE order_id = %s "
                                     f"ORDER BY created_at", (order_id,))
    if not rows:
        raise NotFound(f"order {order_id} has no payment", field="order_id")
    return {**rows[0], "charges": len(rows)}


@app.get("/admin/payments", tags=["admin"])
async def all_payments(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                       offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """Every charge, for checkers reading the final state."""
    rows = await service.db.fetchall(
        "list_payments", f"SELECT {_COLS} FROM payments ORDER BY created_at, id LIMIT %s OFFSET %s",
        (limit, offset))
    return {"items": rows, "limit": limit, "offset": offset}


@app.get("/admin/voided", tags=["admin"])
async def all_voided(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                     offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """Orders whose money was cancelled (refunded and voided)."""
    rows = await service.db.fetchall("list_voided", "SELECT order_id FROM voided_orders "
                                     "ORDER BY order_id LIMIT %s OFFSET %s", (limit, offset))
    return {"items": [r["order_id"] for r in rows], "limit": limit, "offset": offset}


@app.get("/users/{user_id}/payments", tags=["payments"])
async def of_user(user_id: Annotated[UUID, Path()],
                  limit: Annotated[int, Query(ge=1, le=500)] = 20):
    rows = await service.db.fetchall(
        "user_payments", f"SELECT {_COLS} FROM payments WHERE user_id = %s "
        f"ORDER BY created_at DESC LIMIT %s", (user_id, limit))
    return {"user_id": user_id, "items": rows}


@app.get("/admin/decline-rate", tags=["admin"], openapi_extra=NO_STORE)
async def get_decline_rate():
    return {"rate": state["decline_rate"]}


@app.put("/admin/decline-rate", tags=["admin"], openapi_extra=NO_STORE)
async def set_decline_rate(body: DeclineRate):
    state["decline_rate"] = body.rate
    return {"rate": state["decline_rate"]}
