"""The saga checker on synthetic histories and states with known answers."""

from __future__ import annotations


import pytest

from scenarios.saga_checker import check

P1, P2 = "p-1", "p-2"


def good_state() -> dict:
    return {
        "inventory": [{"product_id": P1, "available": 7, "reserved": 0, "sold": 3, "initial": 10},
                      {"product_id": P2, "available": 5, "reserved": 0, "sold": 0, "initial": 5}],
        "reservations": [{"order_id": "o-1", "product_id": P1, "quantity": 3, "state": "CONFIRMED"},
                         {"order_id": "o-2", "product_id": P2, "quantity": 1, "state": "RELEASED"}],
        "orders": [{"id": "o-1", "user_id": "u", "total_amount": "30.00", "status": "CONFIRMED"},
                   {"id": "o-2", "user_id": "u", "total_amount": "9.00", "status": "CANCELLED"}],
        "order_items": [{"order_id": "o-1", "product_id": P1, "quantity": 3, "unit_price": "10.00"},
                        {"order_id": "o-2", "product_id": P2, "quantity": 1, "unit_price": "9.00"}],
        "sagas": [{"id": "s-1", "order_id": "o-1", "idempotency_key": "k1", "state": "COMPLETED"},
                  {"id": "s-2", "order_id": "o-2", "idempotency_key": "k2", "state": "COMPENSATED"}],
        "payments": [{"id": "pay-1", "order_id": "o-1", "amount": "30.00", "status": "CAPTURED"},
                     {"id": "pay-2", "order_id": "o-2", "amount": "9.00", "status": "REFUNDED"}],
        "voided": ["o-2"],
    }


def history() -> list[dict]:
    h, i = [], 0
    for proc, key, kind, oid in (("a", "k1", "ok", "o-1"), ("b", "k2", "fail", "o-2"), ("c", "k3", "info", None)):
        h.append({"index": i, "type": "invoke", "process": proc, "f": "create_order",
                  "value": {"idempotency_key": key}})
        h.append({"index": i + 1, "type": kind, "process": proc, "f": "create_order",
                  "value": {"idempotency_key": key, "order_id": oid}})
        i += 2
    return h


def verdicts(h, s) -> dict:
    return {r["name"]: r for r in check(h, s)}


def test_a_correct_state_is_valid():
    v = verdicts(history(), good_state())
    assert {k: r["verdict"] for k, r in v.items()} == dict.fromkeys(v, "pass")
    assert len(v) == 6


@pytest.mark.parametrize("mutate,invariant,needle", [
    (lambda s: s["inventory"][1].update(available=4, reserved=1), "stock-conservation", "reserved"),
    (lambda s: s["inventory"][0].update(available=8), "stock-conservation", "initial"),
    (lambda s: s["inventory"][0].update(sold=4, available=6), "stock-conservation", "confirmed orders hold"),
    (lambda s: s["inventory"][0].update(available=-1, sold=11), "no-oversell", "available"),
    (lambda s: s["orders"][1].update(status="PENDING"), "orders-end", "PENDING"),
    (lambda s: s["sagas"][1].update(state="COMPENSATING"), "orders-end", "COMPENSATING"),
    (lambda s: s["payments"].append({"id": "pay-3", "order_id": "o-1", "amount": "30.00",
                                     "status": "CAPTURED"}), "payments-match-orders", "2 captured"),
    (lambda s: s["payments"][1].update(status="CAPTURED"), "payments-match-orders", "still charged"),
    (lambda s: s["payments"][0].update(amount="31.00"), "payments-match-orders", "charged 31.00"),
    (lambda s: s["payments"].append({"id": "pay-9", "order_id": "o-ghost", "amount": "1.00",
                                     "status": "CAPTURED"}), "payments-match-orders", "does not exist"),
    (lambda s: s["orders"][0].update(status="CANCELLED"), "outcomes-match-history", "acknowledged"),
    (lambda s: s["orders"][1].update(status="CONFIRMED"), "outcomes-match-history", "failed for the client"),
])
def test_each_broken_invariant_is_caught_with_a_counterexample(mutate, invariant, needle):
    s = good_state()
    mutate(s)
    v = verdicts(history(), s)
    r = v[invariant]
    assert r["verdict"] == "fail" and r["measured"] >= 1
    assert needle in str(r["details"]["counterexamples"]), r["details"]


def test_duplicate_orders_for_one_key_are_caught():
    s = good_state()
    s["orders"].append({"id": "o-3", "user_id": "u", "total_amount": "30.00", "status": "CONFIRMED"})
    h = history() + [
        {"index": 10, "type": "invoke", "process": "d", "f": "create_order", "value": {"idempotency_key": "k1"}},
        {"index": 11, "type": "ok", "process": "d", "f": "create_order",
         "value": {"idempotency_key": "k1", "order_id": "o-3"}}]
    r = verdicts(h, s)["idempotency"]
    assert r["verdict"] == "fail" and r["details"]["counterexamples"][0]["orders"] == ["o-1", "o-3"]


def test_missing_state_is_unknown_never_pass():
    s = good_state()
    del s["payments"]
    del s["inventory"]
    v = verdicts(history(), s)
    assert v["payments-match-orders"]["verdict"] == "unknown"
    assert v["stock-conservation"]["verdict"] == "unknown" and v["no-oversell"]["verdict"] == "unknown"


def test_info_operations_may_go_either_way():
    s = good_state()
    h = history()
    h[-1]["value"]["order_id"] = "o-2"       # the unknown one is the cancelled order: fine
    assert verdicts(h, s)["outcomes-match-history"]["verdict"] == "pass"
