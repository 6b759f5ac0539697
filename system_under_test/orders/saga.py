"""The create-order saga (seed §5.1, サーガオーケストレーター), first correct version.

Steps: reserve stock (catalog) -> create order (local) -> charge (payments)
-> confirm stock (catalog) -> order CONFIRMED.  On failure, only the steps
that ran (or may have run) are compensated, in reverse: refund, cancel
order, release stock.  Every remote step and compensation is idempotent by
order id, so a retry is always safe.

Unlike the seed's pseudo-code:
- the order id is chosen before the first step, so every compensation has a
  real id to name; the order row is written only after stock is reserved;
- a call whose outcome is unknown (timeout, reset, 5xx) is resolved by an
  idempotent retry before deciding to go on or compensate;
- the saga log (table `sagas`) is written before each remote phase, so a
  restarted orchestrator compensates what a dead one left in flight;
- `Idempotency-Key` maps to one saga and hence one order.

Saga log states: STARTED (reserve may have run) -> CHARGING (order exists,
charge may have run) -> COMPLETED; or -> COMPENSATING -> COMPENSATED; or
FAILED (rejected before anything happened).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from ..common.db import Database
from ..common.errors import ApiError, Conflict, NotFound, Unavailable
from ..common.peers import Peer, PeerError, PeerNotSent, PeerRejected, PeerUnknown

__all__ = ["OrderSaga", "SagaOutcome", "TERMINAL", "MUTATIONS", "mutation"]

log = logging.getLogger("msdb.saga")
TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")

# Test-only switches that put back the seed pseudo-code's bugs, so tests can
# prove the saga checker catches each one.  Not in services.yaml, and the
# service refuses to start with one unless MSDB_ALLOW_MUTATIONS=1 is set too.
# The "new version" of a blue-green schema change (msdb drill migration,
# docs/drills.md): ORDERS_LINE_TOTAL=1 also writes order_items.line_total
# (quantity x unit_price) beside the old shape and reads it back.  Off by
# default: the column exists only after the drill's expand step.
LINE_TOTAL = os.environ.get("ORDERS_LINE_TOTAL") == "1"
MUTATIONS = ("skip-release", "double-charge", "no-refund", "drop-saga-log", "ack-before-commit")


def mutation() -> str | None:
    name = os.environ.get("MSDB_MUTATION") or None
    if name is None:
        return None
    if os.environ.get("MSDB_ALLOW_MUTATIONS") != "1":
        raise RuntimeError(f"MSDB_MUTATION={name!r} is a test-only switch; refusing to start "
                           f"without MSDB_ALLOW_MUTATIONS=1")
    if name not in MUTATIONS:
        raise RuntimeError(f"MSDB_MUTATION={name!r} is not one of {', '.join(MUTATIONS)}")
    log.warning("MUTATION %s IS ON: this orders service is deliberately broken", name)
    return name


# The largest order total orders.total_amount (DECIMAL(10,2)) and a payment hold.
MAX_TOTAL = Decimal("99999999.99")
TOO_LARGE = "order total too large"


class SagaOutcome(Exception):
    """A saga that ended without an order being confirmed; carries the HTTP answer."""

    def __init__(self, status: int, body: dict):
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


class OrderSaga:
    # Tunables (tests patch them).
    UNKNOWN_RETRIES = 3          # idempotent retries to resolve an unknown outcome
    COMPENSATION_RETRIES = 8     # in-request attempts; then the recovery loop takes over
    RETRY_BACKOFF_S = 0.1
    RECOVERY_INTERVAL_S = 5.0
    RECOVERY_MIN_AGE_S = 30.0    # sagas idle this long with no owner are recovered
    IDEMPOTENT_WAIT_S = 10.0
    COMPENSATION_TIMEOUT_S = 10.0   # undoing waits longer than doing: it must succeed

    def __init__(self, db: Database, catalog: Peer, payments: Peer):
        self.db = db
        self.catalog = catalog
        self.payments = payments
        self.in_flight: set[uuid.UUID] = set()
        self.mutation = mutation()
        self._background: set[asyncio.Task] = set()

    # -- entry point -------------------------------------------------------

    async def create_order(self, user_id: uuid.UUID, items: list[dict],
                           idempotency_key: str | None) -> tuple[int, dict]:
        request = {"user_id": str(user_id),
                   "items": [{"product_id": str(i["product_id"]), "quantity": i["quantity"]}
                             for i in items]}
        saga_id, order_id = uuid.uuid4(), uuid.uuid4()
        if self.mutation == "drop-saga-log":   # MUTATION: no record before the remote steps
            return await self._run(saga_id, order_id, user_id, request)
        row = await self.db.fetchone(
            "saga_start",
            "INSERT INTO sagas (id, order_id, idempotency_key, user_id, request, state) "
            "VALUES (%s, %s, %s, %s, %s, 'STARTED') ON CONFLICT (idempotency_key) DO NOTHING "
            "RETURNING id", (saga_id, order_id, idempotency_key, user_id, Jsonb(request)))
        if row is None:
            return await self._repeat(idempotency_key, request)
        self.in_flight.add(saga_id)
        try:
            return await self._run(saga_id, order_id, user_id, request)
        finally:
            self.in_flight.discard(saga_id)

    async def _repeat(self, key: str, request: dict) -> tuple[int, dict]:
        deadline = time.monotonic() + self.IDEMPOTENT_WAIT_S
        while True:
            saga = await self.db.fetchone(
                "saga_by_key", "SELECT id, order_id, request, state, error FROM sagas "
                "WHERE idempotency_key = %s", (key,))
            if saga is None:  # vanished: cannot happen without manual deletes
                raise Unavailable("idempotency record disappeared; retry")
            if saga["request"] != request:
                raise Conflict("Idempotency-Key was already used with a different request",
                               field="Idempotency-Key")
            if saga["state"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise Conflict("an order with this Idempotency-Key is still being processed; "
                               "retry later", field="Idempotency-Key")
            await asyncio.sleep(0.05)
        # A saga that failed before its order was written has no order: the
        # repeat answers the first outcome, not a 404 about the order id.
        order = await self.get_order(saga["order_id"], missing_ok=saga["state"] != "COMPLETED")
        if saga["state"] == "COMPLETED":
            return 200, {"order": order, "saga_id": saga["id"], "replayed": True}
        return self._failure_status(saga["error"]), {
            "error": "order_failed", "message": saga["error"] or saga["state"],
            "order": order, "saga_id": saga["id"], "replayed": True}

    @staticmethod
    def _failure_status(error: str | None) -> int:
        if error and error.startswith("payment declined"):
            return 402
        if error and error.startswith(("not enough stock", "product")):
            return 409
        if error and error.startswith(TOO_LARGE):
            return 422
        return 503

    # -- the forward path -----------------------------------------------------

    async def _run(self, saga_id, order_id, user_id, request) -> tuple[int, dict]:
        # 1. Reserve stock.
        try:
            reservation = await self._resolve(lambda: self.catalog.request(
                "POST", "/inventory/reservations",
                json={"order_id": str(order_id), "items": request["items"]}))
        except PeerRejected as e:
            # The catalog said no: nothing was reserved.
            msg = (e.body or {}).get("message", str(e)) if isinstance(e.body, dict) else str(e)
            await self._end(saga_id, "FAILED", msg)
            status = e.status if e.status in (404, 409, 422) else 409
            body = dict(e.body) if isinstance(e.body, dict) else {"message": msg}
            body.setdefault("field", "items")
            body.update({"error": "order_rejected", "saga_id": saga_id})
            return status, body
        except PeerError as e:
            return await self._fail(saga_id, order_id, f"catalog unavailable: {e}")

        if reservation.get("state") not in ("RESERVED", "CONFIRMED"):
            # A repeat that found this order's reservation already released.
            return await self._fail(saga_id, order_id, f"reservation is {reservation.get('state')}",
                                    status=409)
        prices = {i["product_id"]: Decimal(str(i["unit_price"])) for i in reservation["items"]}
        total = sum(prices[i["product_id"]] * i["quantity"] for i in request["items"])
        if total > MAX_TOTAL:
            # orders.total_amount is DECIMAL(10,2): the insert would fail (it was a 500).
            # The stock is reserved by now, so the saga compensates.
            status, body = await self._fail(
                saga_id, order_id, f"{TOO_LARGE}: {total} is over {MAX_TOTAL}", status=422)
            body["field"] = "items"
            return status, body

        # 2. Create the order, its items and the saga-log step in one statement:
        #    one atomic round trip (the items' foreign key is checked at its end).
        pids = [i["product_id"] for i in request["items"]]
        row = await self.db.fetchone(
            "create_order",
            "WITH o AS (INSERT INTO orders (id, user_id, total_amount, status) "
            "  VALUES (%(oid)s, %(uid)s, %(total)s, 'PENDING') RETURNING created_at), "
            + ("i AS (INSERT INTO order_items (order_id, product_id, quantity, unit_price, line_total) "
               "  SELECT %(oid)s, pid, q, price, q * price FROM unnest(%(pids)s::uuid[], %(qtys)s::int[], "
               if LINE_TOTAL else
               "i AS (INSERT INTO order_items (order_id, product_id, quantity, unit_price) "
               "  SELECT %(oid)s, pid, q, price FROM unnest(%(pids)s::uuid[], %(qtys)s::int[], ")
            + "  %(prices)s::numeric[]) AS t(pid, q, price)), "
            "s AS (UPDATE sagas SET state = 'CHARGING', updated_at = now() WHERE id = %(sid)s RETURNING 1) "
            "SELECT created_at, (SELECT count(*) FROM s) AS saga_rows FROM o",
            {"oid": order_id, "uid": user_id, "total": total, "sid": saga_id, "pids": pids,
             "qtys": [i["quantity"] for i in request["items"]],
             "prices": [prices[p] for p in pids]})
        created_at = row["created_at"]
        if not row["saga_rows"] and self.mutation != "drop-saga-log":   # (that mutation writes none)
            return await self._lost(order_id, "before the charge")

        # 3. Charge, idempotently: the charge key is the order id, so a retry after
        #    an unknown outcome can never charge twice.
        attempts = iter(range(1_000_000))

        def charge_body() -> dict:
            body = {"order_id": str(order_id), "user_id": str(user_id), "amount": str(total)}
            if self.mutation == "double-charge":   # MUTATION: a fresh key on every attempt
                body["charge_key"] = f"{order_id}:{next(attempts)}"
            return body
        try:
            await self._resolve(lambda: self.payments.request("POST", "/payments", json=charge_body()))
        except PeerRejected as e:
            reason = "payment declined" if e.status == 402 else f"payment refused: HTTP {e.status}"
            return await self._fail(saga_id, order_id, reason, status=402 if e.status == 402 else 409)
        except PeerError as e:
            return await self._fail(saga_id, order_id, f"payments unavailable: {e}")

        if self.mutation == "ack-before-commit":   # MUTATION: answer now, finish later
            order = await self.get_order(order_id)
            order["status"] = "CONFIRMED"
            task = asyncio.get_running_loop().create_task(
                self._finish(saga_id, order_id, user_id, request, prices, total, created_at))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return 201, {"order": order, "saga_id": saga_id}
        return await self._finish(saga_id, order_id, user_id, request, prices, total, created_at)

    async def _finish(self, saga_id, order_id, user_id, request, prices, total, created_at):
        # 4. Confirm the stock: forward step after money moved; retried, then compensated.
        try:
            await self._resolve(lambda: self.catalog.request(
                "POST", f"/inventory/reservations/{order_id}/confirm"))
        except PeerError as e:
            return await self._fail(saga_id, order_id, f"stock confirmation failed: {e}")

        # 5. Done, if the order and its saga record are still there: a 201 is
        #    only ever answered for an order the database holds as CONFIRMED.
        done = await self.db.execute(
            "confirm_order",
            "WITH o AS (UPDATE orders SET status = 'CONFIRMED' WHERE id = %(oid)s RETURNING 1) "
            "UPDATE sagas SET state = 'COMPLETED', updated_at = now() WHERE id = %(sid)s "
            "AND EXISTS (SELECT 1 FROM o)",
            {"oid": order_id, "sid": saga_id})
        if not done and self.mutation != "drop-saga-log":
            return await self._lost(order_id, "before its confirmation")
        # Built from what was written rather than read back: one round trip less.
        order = {"id": order_id, "user_id": user_id, "total_amount": total, "status": "CONFIRMED",
                 "created_at": created_at,
                 "items": sorted(({"product_id": uuid.UUID(i["product_id"]), "quantity": i["quantity"],
                                   "unit_price": prices[i["product_id"]]} for i in request["items"]),
                                 key=lambda i: i["product_id"])}
        return 201, {"order": order, "saga_id": saga_id}

    async def _resolve(self, call):
        """Run an idempotent call; on an unknown outcome retry it to learn the answer."""
        for attempt in range(self.UNKNOWN_RETRIES + 1):
            try:
                return await call()
            except PeerUnknown:
                if attempt == self.UNKNOWN_RETRIES:
                    raise
            except PeerNotSent:
                if attempt == self.UNKNOWN_RETRIES:
                    raise
            await asyncio.sleep(self.RETRY_BACKOFF_S * (2 ** attempt))

    # -- compensation ---------------------------------------------------------

    async def _lost(self, order_id, when: str) -> tuple[int, dict]:
        """The saga's own record vanished mid-flight: its database was replaced
        by an earlier copy (a restore) while the saga ran.  Nothing here can be
        confirmed, so the answer is a 503, never a 201 for an order the
        database does not hold; the remote steps are undone as far as the
        peers still know them (both calls are idempotent by order id)."""
        undone = True
        for peer, path in ((self.payments, f"/payments/{order_id}/refund"),
                           (self.catalog, f"/inventory/reservations/{order_id}/release")):
            try:
                await self._retry_hard(lambda: peer.request("POST", path, timeout=self.COMPENSATION_TIMEOUT_S))
            except PeerRejected:
                pass        # the peer never had it (or lost it too): nothing to undo there
            except PeerError as e:
                log.warning("order %s: saga record lost and %s not undone: %s", order_id, path, e)
                undone = False
        return 503, {"error": "order_lost",
                     "message": f"the order's saga record vanished {when} (its database was restored "
                                f"to an earlier point?); the order was not confirmed",
                     "order_id": order_id, "compensated": undone}

    async def _fail(self, saga_id, order_id, reason: str, status: int = 503) -> tuple[int, dict]:
        done = await self.compensate(saga_id, order_id, reason)
        order = await self.get_order(order_id, missing_ok=True)
        body = {"error": "payment_declined" if status == 402 else "order_failed",
                "message": reason, "order": order, "saga_id": saga_id,
                "compensated": done}
        if status == 402:
            body["field"] = "payment"
        return status, body

    async def compensate(self, saga_id, order_id, reason: str | None = None) -> bool:
        """Undo what may have run, in reverse.  Idempotent; True once all undone."""
        saga = await self.db.fetchone(
            "saga_get", "SELECT state, error FROM sagas WHERE id = %s", (saga_id,))
        if saga is None or saga["state"] in TERMINAL:
            return True
        reason = reason or saga["error"] or "recovered after orchestrator restart"
        await self.db.execute(
            "saga_compensating", "UPDATE sagas SET state = 'COMPENSATING', error = %s, "
            "updated_at = now() WHERE id = %s", (reason, saga_id))
        order_exists = await self.db.fetchone(
            "order_exists", "SELECT 1 AS x FROM orders WHERE id = %s", (order_id,)) is not None
        t = self.COMPENSATION_TIMEOUT_S
        try:
            if order_exists:  # the charge may have run
                if self.mutation != "no-refund":   # MUTATION: cancel without refunding
                    await self._retry_hard(lambda: self.payments.request(
                        "POST", f"/payments/{order_id}/refund", timeout=t))
                await self.db.execute(
                    "cancel_order", "UPDATE orders SET status = 'CANCELLED' "
                    "WHERE id = %s AND status <> 'CANCELLED'", (order_id,))
            if self.mutation != "skip-release":    # MUTATION: keep the stock reserved
                await self._retry_hard(lambda: self.catalog.request(
                    "POST", f"/inventory/reservations/{order_id}/release", timeout=t))
        except PeerError as e:
            log.warning("saga %s: compensation incomplete (%s); recovery will retry", saga_id, e)
            return False
        await self._end(saga_id, "COMPENSATED", reason)
        return True

    async def _retry_hard(self, call):
        for attempt in range(self.COMPENSATION_RETRIES):
            try:
                return await call()
            except (PeerUnknown, PeerNotSent):
                if attempt == self.COMPENSATION_RETRIES - 1:
                    raise
                await asyncio.sleep(min(self.RETRY_BACKOFF_S * (2 ** attempt), 2.0))

    async def _end(self, saga_id, state: str, error: str | None) -> None:
        await self.db.execute("saga_end", "UPDATE sagas SET state = %s, error = %s, "
                              "updated_at = now() WHERE id = %s", (state, error, saga_id))

    async def recover(self, *, min_age_s: float | None = None) -> int:
        """Compensate sagas left in flight by a dead orchestrator."""
        age = self.RECOVERY_MIN_AGE_S if min_age_s is None else min_age_s
        rows = await self.db.fetchall(
            "saga_open", "SELECT id, order_id FROM sagas WHERE state NOT IN "
            "('COMPLETED', 'COMPENSATED', 'FAILED') AND updated_at < now() - make_interval(secs => %s) "
            "ORDER BY created_at LIMIT 200", (age,))
        n = 0
        for r in rows:
            if r["id"] in self.in_flight:
                continue
            if await self.compensate(r["id"], r["order_id"]):
                n += 1
        return n

    async def recovery_loop(self, stop: asyncio.Event) -> None:
        first = True
        while not stop.is_set():
            try:
                # At start-up every open saga belongs to a dead process: no age needed.
                await self.recover(min_age_s=0 if first else None)
                first = False
            except (ApiError, PeerError) as e:
                log.warning("saga recovery pass failed: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), self.RECOVERY_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    # -- reads ------------------------------------------------------------------

    async def get_order(self, order_id, *, missing_ok: bool = False, db: Database | None = None) -> Any:
        rows = await (db or self.db).fetchall(
            "get_order", "SELECT o.id, o.user_id, o.total_amount, o.status, o.created_at, "
            "i.product_id, i.quantity, i.unit_price" + (", i.line_total" if LINE_TOTAL else "")
            + " FROM orders o LEFT JOIN order_items i "
            "ON i.order_id = o.id WHERE o.id = %s ORDER BY i.product_id", (order_id,))
        if not rows:
            if missing_ok:
                return None
            raise NotFound(f"order {order_id} does not exist", field="order_id")
        o = rows[0]
        return {"id": o["id"], "user_id": o["user_id"], "total_amount": o["total_amount"],
                "status": o["status"], "created_at": o["created_at"],
                "items": [{"product_id": r["product_id"], "quantity": r["quantity"],
                           "unit_price": r["unit_price"],
                           **({"line_total": r["line_total"]} if LINE_TOTAL else {})}
                          for r in rows if r["product_id"]]}
