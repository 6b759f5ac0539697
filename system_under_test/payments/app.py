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
from ..common.errors import Conflict, NotFound
from ..common.types import Model, Money

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


class DeclineRate(Model):
    rate: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


_COLS = "id, order_id, user_id, amount, status, created_at, refunded_at"


def _result(row: dict, created: bool) -> JSON:
    if row["status"] == "DECLINED":
        return JSON({"error": "payment_declined", "message": f"payment for order "
                     f"{row['order_id']} was declined", "field": "amount", "payment": row},
                    status_code=402)
    if row["status"] == "VOIDED":
        return JSON({"error": "conflict", "field": "order_id", "message": f"order "
                     f"{row['order_id']} was cancelled before it was charged", "payment": row},
                    status_code=409)
    return JSON(row, status_code=201 if created else 200)


@app.post("/payments", tags=["payments"])
async def charge(body: Charge):
    """Charge once per order: a repeat returns the first outcome."""
    status = "DECLINED" if _rng.random() < state["decline_rate"] else "CAPTURED"
    # Insert, or return the first outcome, in one round trip.
    row = await service.db.fetchone(
        "charge",
        f"WITH ins AS (INSERT INTO payments (order_id, user_id, amount, status) "
        f"VALUES (%(o)s, %(u)s, %(a)s, %(s)s) ON CONFLICT (order_id) DO NOTHING RETURNING {_COLS}) "
        f"SELECT {_COLS}, true AS created FROM ins UNION ALL "
        f"SELECT {_COLS}, false FROM payments WHERE order_id = %(o)s",
        {"o": body.order_id, "u": body.user_id, "a": body.amount, "s": status})
    if row is None:
        # A concurrent charge of the same order committed after our snapshot:
        # ON CONFLICT waited for it, the SELECT could not see it.  Read it now.
        row = await service.db.fetchone("get_payment", f"SELECT {_COLS}, false AS created "
                                        f"FROM payments WHERE order_id = %s", (body.order_id,))
    created = row.pop("created")
    if not created and row["status"] in ("CAPTURED", "REFUNDED") and row["amount"] != body.amount:
        raise Conflict(f"order {body.order_id} was already charged {row['amount']}, "
                       f"not {body.amount}", field="amount")
    return _result(row, created)


@app.post("/payments/{order_id}/refund", tags=["payments"])
async def refund(order_id: Annotated[UUID, Path()]):
    """Undo the charge of an order.  Idempotent; with no charge yet, leave a
    VOIDED tombstone so that a charge arriving late is refused."""
    async with service.db.transaction("refund") as conn:
        cur = await conn.execute(
            f"INSERT INTO payments (order_id, user_id, amount, status) "
            f"VALUES (%s, '00000000-0000-0000-0000-000000000000', 0, 'VOIDED') "
            f"ON CONFLICT (order_id) DO NOTHING RETURNING {_COLS}", (order_id,))
        row = await cur.fetchone()
        if row is None:
            cur = await conn.execute(
                f"UPDATE payments SET status = 'REFUNDED', refunded_at = now() "
                f"WHERE order_id = %s AND status = 'CAPTURED' RETURNING {_COLS}", (order_id,))
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(f"SELECT {_COLS} FROM payments WHERE order_id = %s",
                                         (order_id,))
                row = await cur.fetchone()
    return row


@app.get("/payments/by-order/{order_id}", tags=["payments"])
async def by_order(order_id: Annotated[UUID, Path()]):
    row = await service.db.fetchone("get_payment",
                                    f"SELECT {_COLS} FROM payments WHERE order_id = %s", (order_id,))
    if row is None:
        raise NotFound(f"order {order_id} has no payment", field="order_id")
    return row


@app.get("/users/{user_id}/payments", tags=["payments"])
async def of_user(user_id: Annotated[UUID, Path()],
                  limit: Annotated[int, Query(ge=1, le=500)] = 20):
    rows = await service.db.fetchall(
        "user_payments", f"SELECT {_COLS} FROM payments WHERE user_id = %s "
        f"ORDER BY created_at DESC LIMIT %s", (user_id, limit))
    return {"user_id": user_id, "items": rows}


@app.get("/admin/decline-rate", tags=["admin"])
async def get_decline_rate():
    return {"rate": state["decline_rate"]}


@app.put("/admin/decline-rate", tags=["admin"])
async def set_decline_rate(body: DeclineRate):
    state["decline_rate"] = body.rate
    return {"rate": state["decline_rate"]}
