"""The orders saga never answers 201 for an order its database does not hold.

A restore can put an earlier copy of the orders database under a saga in
flight: its record and its order vanish between two steps.  The confirmation
then updates nothing; the saga must answer 503 and undo the remote steps, not
acknowledge a write that is gone (the archive drill caught exactly this: one
acknowledged order missing from the restored database).  The database and the
peers are fakes here; the drill on real PostgreSQL is tests/drills."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

from system_under_test.common.peers import PeerRejected
from system_under_test.orders.saga import OrderSaga


class FakeDb:
    """Answers the saga's statements by name; `vanish_at` names the statement
    from which on the saga's record is gone (as after a restore)."""

    def __init__(self, vanish_at: str | None):
        self.vanish_at = vanish_at
        self.gone = False
        self.calls: list[str] = []

    def _step(self, query: str) -> None:
        self.calls.append(query)
        if query == self.vanish_at:
            self.gone = True

    async def fetchone(self, query, sql, params=None):
        self._step(query)
        if query == "saga_start":
            return {"id": params[0]}
        if query == "create_order":
            return {"created_at": "2026-12-02T00:00:00Z", "saga_rows": 0 if self.gone else 1}
        if query == "saga_get":
            return None if self.gone else {"state": "CHARGING", "error": None}
        return None

    async def execute(self, query, sql, params=None):
        self._step(query)
        return 0 if self.gone else 1

    async def fetchall(self, query, sql, params=None):
        self._step(query)
        return []


class FakePeer:
    def __init__(self, name: str, refuse: tuple[str, ...] = ()):
        self.name, self.refuse = name, refuse
        self.calls: list[tuple[str, str]] = []

    async def request(self, method, path, *, json=None, params=None, timeout=None):
        self.calls.append((method, path))
        if any(path.endswith(r) for r in self.refuse):
            raise PeerRejected(self.name, 404, {"error": "not_found"})
        if path == "/inventory/reservations":
            return {"state": "RESERVED", "items": [{"product_id": i["product_id"], "unit_price": "9.99"}
                                                   for i in json["items"]]}
        return {"ok": True}


def _order(vanish_at: str | None, refuse_refund: bool = False):
    db = FakeDb(vanish_at)
    catalog = FakePeer("catalog")
    payments = FakePeer("payments", refuse=("/refund",) if refuse_refund else ())
    saga = OrderSaga(db, catalog, payments)
    pid = str(uuid.uuid4())
    status, body = asyncio.run(saga.create_order(uuid.uuid4(), [{"product_id": pid, "quantity": 2}],
                                                 f"k-{uuid.uuid4().hex}"))
    return status, body, db, catalog, payments


def test_an_intact_saga_is_confirmed_with_201():
    status, body, db, catalog, payments = _order(None)
    assert status == 201 and body["order"]["status"] == "CONFIRMED"
    assert body["order"]["total_amount"] == Decimal("19.98")
    assert db.calls[-1] == "confirm_order"
    assert not any(p.endswith("/refund") for _, p in payments.calls)


def test_a_record_gone_before_the_confirmation_is_a_503_and_is_undone():
    status, body, db, catalog, payments = _order("confirm_order")
    assert status == 503 and body["error"] == "order_lost", body
    assert "before its confirmation" in body["message"] and body["compensated"] is True
    oid = body["order_id"]
    assert ("POST", f"/payments/{oid}/refund") in payments.calls
    assert ("POST", f"/inventory/reservations/{oid}/release") in catalog.calls


def test_a_record_gone_before_the_charge_charges_nothing():
    status, body, db, catalog, payments = _order("create_order")
    assert status == 503 and body["error"] == "order_lost" and "before the charge" in body["message"]
    assert ("POST", "/payments") not in payments.calls
    assert ("POST", f"/inventory/reservations/{body['order_id']}/release") in catalog.calls
    assert "confirm_order" not in db.calls


def test_a_peer_that_never_had_the_charge_still_counts_as_undone():
    status, body, *_ = _order("confirm_order", refuse_refund=True)
    assert status == 503 and body["compensated"] is True
