"""Catalog storage behind two small interfaces.

`ProductRepository` keeps product documents (the seed keeps them in MongoDB;
`PgJsonbProductRepository` keeps them as PostgreSQL JSONB).  `Inventory`
reserves, confirms and releases stock per order, idempotent by order id,
and can never oversell (CHECK available >= 0).  A MongoDB implementation of
the first only has to honour the same methods.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from ..common.db import Database
from ..common.errors import BadRequest, Conflict, NotFound

__all__ = ["ProductRepository", "PgJsonbProductRepository", "Inventory"]

_ORDER_LOCK = "SELECT order_lock(%s)"     # migration 005: the key reserve_stock uses too


class ProductRepository(Protocol):
    async def create(self, doc: dict, stock: int) -> dict: ...
    async def get(self, product_id: UUID) -> dict | None: ...
    async def list(self, *, limit: int, offset: int, category: str | None) -> list[dict]: ...
    async def update(self, product_id: UUID, changes: dict) -> dict | None: ...


def _product(row: dict) -> dict:
    return {"id": row["id"], **row["doc"], "version": row["version"],
            "updated_at": row["updated_at"]}


class PgJsonbProductRepository:
    def __init__(self, db: Database):
        self.db = db

    async def create(self, doc: dict, stock: int) -> dict:
        try:
            async with self.db.transaction("insert_product") as conn:
                cur = await conn.execute(
                    "INSERT INTO products (doc) VALUES (%s) RETURNING id, doc, version, updated_at",
                    (Jsonb(doc),))
                row = await cur.fetchone()
                await conn.execute("INSERT INTO inventory (product_id, available, initial) "
                                   "VALUES (%s, %s, %s)", (row["id"], stock, stock))
        except psycopg.errors.UniqueViolation:
            raise Conflict("product already exists", field="sku") from None
        return _product(row)

    async def get(self, product_id: UUID) -> dict | None:
        row = await self.db.fetchone("get_product", "SELECT id, doc, version, updated_at "
                                     "FROM products WHERE id = %s", (product_id,))
        return _product(row) if row else None

    async def list(self, *, limit: int, offset: int, category: str | None) -> list[dict]:
        if category is None:
            rows = await self.db.fetchall(
                "list_products", "SELECT id, doc, version, updated_at FROM products "
                "ORDER BY created_at, id LIMIT %s OFFSET %s", (limit, offset))
        else:
            rows = await self.db.fetchall(
                "list_products_by_category", "SELECT id, doc, version, updated_at FROM products "
                "WHERE doc->>'category' = %s ORDER BY created_at, id LIMIT %s OFFSET %s",
                (category, limit, offset))
        return [_product(r) for r in rows]

    async def update(self, product_id: UUID, changes: dict) -> dict | None:
        row = await self.db.fetchone(
            "update_product", "UPDATE products SET doc = doc || %s, version = version + 1, "
            "updated_at = now() WHERE id = %s RETURNING id, doc, version, updated_at",
            (Jsonb(changes), product_id))
        return _product(row) if row else None


class Inventory:
    """Stock per product: available + reserved + sold = initial (+ restocks)."""

    def __init__(self, db: Database):
        self.db = db

    async def stock(self, product_id: UUID) -> dict | None:
        return await self.db.fetchone(
            "get_stock", "SELECT product_id, available, reserved, sold, initial FROM inventory "
            "WHERE product_id = %s", (product_id,))

    async def all_stock(self, *, limit: int, offset: int) -> list[dict]:
        return await self.db.fetchall(
            "list_stock", "SELECT product_id, available, reserved, sold, initial FROM inventory "
            "ORDER BY product_id LIMIT %s OFFSET %s", (limit, offset))

    async def reservations(self, *, state: str | None, limit: int, offset: int) -> list[dict]:
        return await self.db.fetchall(
            "list_reservations", "SELECT order_id, product_id, quantity, state FROM reservations "
            "WHERE (%(s)s::text IS NULL OR state = %(s)s) ORDER BY order_id, product_id "
            "LIMIT %(l)s OFFSET %(o)s", {"s": state, "l": limit, "o": offset})

    async def reservation(self, order_id: UUID) -> dict | None:
        rows = await self.db.fetchall(
            "get_reservation", "SELECT r.product_id, r.quantity, r.state, "
            "(p.doc->>'price')::numeric AS unit_price FROM reservations r "
            "JOIN products p ON p.id = r.product_id WHERE r.order_id = %s ORDER BY r.product_id",
            (order_id,))
        return _reservation(order_id, rows) if rows else None

    async def reserve(self, order_id: UUID, items: list[tuple[UUID, int]]) -> tuple[dict, bool]:
        """Reserve all items or none.  Returns (reservation, created_now).

        Idempotent by order id: a repeat with the same items returns the
        existing reservation; different items for the same order are a 409.
        """
        wanted = {pid: q for pid, q in items}
        for attempt in range(2):
            try:
                return await self._reserve_once(order_id, wanted)
            except psycopg.errors.UniqueViolation:
                # A concurrent duplicate reserved first; ours rolled back. Return theirs.
                continue
        existing = await self.reservation(order_id)
        if existing is None:
            raise Conflict(f"reservation for order {order_id} is being changed concurrently",
                           field="order_id")
        return existing, False

    # One round trip: migration 005's function takes the order's lock, then
    # reserves every item or none (see there).
    _RESERVE = ("SELECT kind, product_id, quantity, state, available, unit_price "
                "FROM reserve_stock(%(o)s, %(pids)s::uuid[], %(qtys)s::int[])")

    async def _reserve_once(self, order_id: UUID, wanted: dict) -> tuple[dict, bool]:
        pids = sorted(wanted)
        try:
            # One order at a time: a release (tombstone) and a reservation of the
            # same order never interleave (the function locks the order first).
            rows = await self.db.fetchall("reserve_stock", self._RESERVE, {
                "o": order_id, "pids": pids, "qtys": [wanted[p] for p in pids]})
        except psycopg.errors.CheckViolation:
            # Cannot happen while `locked` reads the latest values; the CHECK
            # (available >= 0) is the last line of defence, and says why.
            raise Conflict("not enough stock (a concurrent reservation won)", field="items") from None
        kinds = {r["kind"] for r in rows}
        if "released" in kinds:
            raise Conflict(f"order {order_id} was released (its saga was cancelled); "
                           f"it cannot reserve again", field="order_id")
        if "existing" in kinds:
            existing = [r for r in rows if r["kind"] == "existing"]
            if {r["product_id"]: r["quantity"] for r in existing} != wanted:
                raise Conflict(f"order {order_id} already has a different reservation", field="items")
            return _reservation(order_id, existing), False
        if "new" in kinds:
            return _reservation(order_id, [r for r in rows if r["kind"] == "new"]), True
        have = {r["product_id"]: r["available"] for r in rows}
        for pid in pids:
            if pid not in have:
                raise NotFound(f"product {pid} does not exist", field="items",
                               extra={"product_id": str(pid)})
            if have[pid] < wanted[pid]:
                raise Conflict(f"not enough stock for product {pid}: {wanted[pid]} wanted, "
                               f"{have[pid]} available", field="items",
                               extra={"product_id": str(pid), "available": have[pid]})
        raise Conflict("reservation was not made; retry", field="items")

    # Every lookup here is by order id: an index that matches only the state
    # (RESERVED) would be read whole, dead entries included (migration 006).
    CONFIRM = (
        "WITH locked AS MATERIALIZED (SELECT i.product_id FROM inventory i "
        "  JOIN reservations rv ON rv.product_id = i.product_id "
        "  WHERE rv.order_id = %(o)s AND rv.state = 'RESERVED' ORDER BY i.product_id FOR UPDATE OF i), "
        "r AS (UPDATE reservations SET state = 'CONFIRMED', updated_at = now() "
        "  WHERE order_id = %(o)s AND state = 'RESERVED' "
        "  AND product_id IN (SELECT product_id FROM locked) RETURNING product_id, quantity) "
        "UPDATE inventory i SET reserved = i.reserved - r.quantity, sold = i.sold + r.quantity "
        "FROM r WHERE i.product_id = r.product_id RETURNING i.product_id")

    async def confirm(self, order_id: UUID) -> dict:
        """RESERVED -> CONFIRMED (reserved stock becomes sold).  Idempotent.

        One statement: `locked` takes the stock rows in product order (the
        order reserve() uses, so concurrent sagas cannot deadlock) before
        `r` flips the reservations, which the final UPDATE moves into sold.
        """
        rows = await self.db.fetchall("confirm_stock", self.CONFIRM, {"o": order_id})
        if not rows:   # nothing to confirm: repeated, released, or unknown
            states = {r["state"] for r in await self.db.fetchall(
                "reservation_states", "SELECT DISTINCT state FROM reservations WHERE order_id = %s",
                (order_id,))}
            if not states:
                raise NotFound(f"order {order_id} has no reservation", field="order_id")
            if "RELEASED" in states:
                raise Conflict(f"reservation of order {order_id} was released", field="order_id")
        return {"order_id": order_id, "state": "CONFIRMED"}

    async def release(self, order_id: UUID) -> dict:
        """Give the stock back.  Idempotent; releasing nothing is a no-op."""
        async with self.db.transaction("release_stock") as conn:
            await conn.execute(_ORDER_LOCK, (order_id,))
            # The tombstone: a reservation arriving after this release is refused.
            await conn.execute("INSERT INTO released_orders (order_id) VALUES (%s) "
                               "ON CONFLICT (order_id) DO NOTHING", (order_id,))
            await self._lock_stock(conn, order_id)
            cur = await conn.execute(
                "WITH r AS (UPDATE reservations n SET state = 'RELEASED', updated_at = now() "
                "FROM reservations o WHERE n.order_id = %s AND n.state <> 'RELEASED' "
                "AND o.order_id = n.order_id AND o.product_id = n.product_id "
                "RETURNING n.product_id, n.quantity, o.state AS was) "
                "UPDATE inventory i SET available = i.available + r.quantity, "
                "reserved = i.reserved - CASE WHEN r.was = 'RESERVED' THEN r.quantity ELSE 0 END, "
                "sold = i.sold - CASE WHEN r.was = 'CONFIRMED' THEN r.quantity ELSE 0 END "
                "FROM r WHERE i.product_id = r.product_id RETURNING i.product_id", (order_id,))
            if not await cur.fetchall() and not await self._states(conn, order_id):
                return {"order_id": order_id, "state": "NONE"}
        return {"order_id": order_id, "state": "RELEASED"}

    @staticmethod
    async def _lock_stock(conn, order_id: UUID) -> None:
        """Lock this order's stock rows in product order (the order reserve uses)."""
        await conn.execute(
            "SELECT 1 FROM inventory WHERE product_id IN "
            "(SELECT product_id FROM reservations WHERE order_id = %s) "
            "ORDER BY product_id FOR UPDATE", (order_id,))

    @staticmethod
    async def _states(conn, order_id: UUID) -> set[str]:
        cur = await conn.execute("SELECT DISTINCT state FROM reservations WHERE order_id = %s",
                                 (order_id,))
        return {r["state"] for r in await cur.fetchall()}


def _reservation(order_id: UUID, rows: list[dict]) -> dict:
    states = {r["state"] for r in rows}
    state = states.pop() if len(states) == 1 else "MIXED"
    return {"order_id": order_id, "state": state,
            "items": [{"product_id": r["product_id"], "quantity": r["quantity"],
                       "unit_price": Decimal(r["unit_price"]) if r["unit_price"] is not None else None}
                      for r in rows]}


def check_items(items: list[tuple[UUID, int]]) -> None:
    seen = set()
    for i, (pid, _) in enumerate(items):
        if pid in seen:
            raise BadRequest(f"items[{i}].product_id: product {pid} appears twice",
                             field=f"items[{i}].product_id")
        seen.add(pid)
