"""The saga checker: a pure function of the client history and the final state.

    check(history, final) -> list of invariant results

`history` is the run's history.jsonl as a list (Jepsen semantics: `ok` it
happened, `fail` it definitely did not, `info` unknown).  `final` is the
state read through the services' admin APIs after quiescence:

    {"inventory": [...], "reservations": [...], "orders": [...], "order_items": [...],
     "sagas": [...], "payments": [...], "voided": [...]}

Each result is {"name", "verdict" (pass|fail|unknown), "measured", "threshold",
"details"}; a failing invariant lists counterexamples (order ids, product
ids, operations).  The harness wraps every call so that a checker that
crashes yields `unknown`, never a pass.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

__all__ = ["check", "INVARIANTS", "MAX_EXAMPLES"]

MAX_EXAMPLES = 20
INVARIANTS = ("stock-conservation", "no-oversell", "orders-end", "payments-match-orders",
              "outcomes-match-history", "idempotency")


def _result(name: str, bad: list, checked: int, **details) -> dict:
    return {"name": name, "verdict": "fail" if bad else "pass", "measured": len(bad), "threshold": 0,
            "details": {"checked": checked, "counterexamples": bad[:MAX_EXAMPLES], **details}}


def _unknown(name: str, reason: str) -> dict:
    return {"name": name, "verdict": "unknown", "measured": None, "threshold": 0,
            "details": {"reason": reason}}


def _ops(history: list[dict], f: str = "create_order") -> list[tuple[dict, dict | None]]:
    """(invoke, completion) pairs per process, in order."""
    pending: dict[str, dict] = {}
    out = []
    for op in history:
        if op.get("f") != f:
            continue
        if op["type"] == "invoke":
            pending[op["process"]] = op
        else:
            inv = pending.pop(op["process"], None)
            if inv is not None:
                out.append((inv, op))
    out += [(inv, None) for inv in pending.values()]
    return out


def stock_conservation(final: dict) -> dict:
    inv = final.get("inventory")
    if inv is None or final.get("orders") is None or final.get("order_items") is None:
        return _unknown("stock-conservation", "inventory or orders were not read")
    confirmed = {o["id"] for o in final["orders"] if o["status"] == "CONFIRMED"}
    sold_by_orders: dict[str, int] = defaultdict(int)
    for it in final["order_items"]:
        if it["order_id"] in confirmed:
            sold_by_orders[it["product_id"]] += int(it["quantity"])
    left = defaultdict(list)
    for r in final.get("reservations") or []:
        if r["state"] == "RESERVED":
            left[r["product_id"]].append(r["order_id"])
    bad = []
    for p in inv:
        pid = p["product_id"]
        problems = []
        if p["available"] + p["reserved"] + p["sold"] != p["initial"]:
            problems.append(f"available {p['available']} + reserved {p['reserved']} + sold "
                            f"{p['sold']} != initial {p['initial']}")
        if p["reserved"] != 0:
            problems.append(f"{p['reserved']} units still reserved after quiescence")
        if p["sold"] != sold_by_orders.get(pid, 0):
            problems.append(f"sold {p['sold']} but confirmed orders hold {sold_by_orders.get(pid, 0)}")
        if problems:
            bad.append({"product_id": pid, "problems": problems, "orders_with_reserved_stock":
                        left.get(pid, [])[:10]})
    return _result("stock-conservation", bad, len(inv),
                   rule="per product: initial = available + reserved + sold, nothing reserved, "
                        "sold = units in CONFIRMED orders")


def no_oversell(final: dict) -> dict:
    inv = final.get("inventory")
    if inv is None:
        return _unknown("no-oversell", "inventory was not read")
    bad = [{"product_id": p["product_id"], "available": p["available"], "reserved": p["reserved"]}
           for p in inv if p["available"] < 0 or p["reserved"] < 0 or p["sold"] < 0]
    return _result("no-oversell", bad, len(inv), rule="stock is never negative")


def orders_end(final: dict) -> dict:
    orders, sagas = final.get("orders"), final.get("sagas")
    if orders is None:
        return _unknown("orders-end", "orders were not read")
    bad = [{"order_id": o["id"], "status": o["status"]} for o in orders
           if o["status"] not in ("CONFIRMED", "CANCELLED")]
    open_sagas = [{"saga_id": s["id"], "order_id": s["order_id"], "state": s["state"]}
                  for s in sagas or [] if s["state"] not in ("COMPLETED", "COMPENSATED", "FAILED")]
    return _result("orders-end", bad + open_sagas, len(orders),
                   rule="every order ends CONFIRMED or CANCELLED, every saga ends, within the "
                        "recovery bound")


def payments_match_orders(final: dict) -> dict:
    orders, payments = final.get("orders"), final.get("payments")
    if orders is None or payments is None:
        return _unknown("payments-match-orders", "orders or payments were not read")
    by_order: dict[str, list] = defaultdict(list)
    for p in payments:
        by_order[p["order_id"]].append(p)
    bad = []
    ids = set()
    for o in orders:
        ids.add(o["id"])
        captured = [p for p in by_order.get(o["id"], []) if p["status"] == "CAPTURED"]
        if o["status"] == "CONFIRMED":
            if len(captured) != 1:
                bad.append({"order_id": o["id"], "status": o["status"], "captured_payments":
                            [p["id"] for p in captured], "problem": f"{len(captured)} captured payments"})
            elif Decimal(str(captured[0]["amount"])) != Decimal(str(o["total_amount"])):
                bad.append({"order_id": o["id"], "problem": f"charged {captured[0]['amount']}, "
                            f"order total {o['total_amount']}"})
        elif o["status"] == "CANCELLED" and captured:
            bad.append({"order_id": o["id"], "status": o["status"], "captured_payments":
                        [p["id"] for p in captured], "problem": "cancelled but still charged"})
    for oid, ps in by_order.items():
        if oid not in ids and any(p["status"] == "CAPTURED" for p in ps):
            bad.append({"order_id": oid, "problem": "money captured for an order that does not exist",
                        "captured_payments": [p["id"] for p in ps if p["status"] == "CAPTURED"]})
    return _result("payments-match-orders", bad, len(orders),
                   rule="CONFIRMED <=> exactly one captured payment of the order total; "
                        "CANCELLED => no net charge")


def outcomes_match_history(history: list[dict], final: dict) -> dict:
    orders = final.get("orders")
    if orders is None:
        return _unknown("outcomes-match-history", "orders were not read")
    status = {o["id"]: o["status"] for o in orders}
    key_order = {s["idempotency_key"]: s["order_id"] for s in final.get("sagas") or []
                 if s.get("idempotency_key")}
    bad, checked = [], 0
    for inv, done in _ops(history):
        if done is None or done["type"] == "info":
            continue
        checked += 1
        v = done.get("value") or {}
        oid = v.get("order_id") or key_order.get((inv.get("value") or {}).get("idempotency_key"))
        if done["type"] == "ok":
            if oid is None or status.get(oid) != "CONFIRMED":
                bad.append({"op": inv["index"], "process": inv["process"], "type": "ok",
                            "order_id": oid, "final_status": status.get(oid),
                            "problem": "acknowledged to the client, but not CONFIRMED"})
        elif done["type"] == "fail" and oid is not None and status.get(oid) == "CONFIRMED":
            bad.append({"op": inv["index"], "process": inv["process"], "type": "fail",
                        "order_id": oid, "problem": "failed for the client, yet CONFIRMED"})
    return _result("outcomes-match-history", bad, checked,
                   rule="every ok order exists and is CONFIRMED; no fail order is CONFIRMED")


def idempotency(history: list[dict], final: dict) -> dict:
    sagas = final.get("sagas")
    if sagas is None:
        return _unknown("idempotency", "the saga log was not read")
    orders_by_key: dict[str, set] = defaultdict(set)
    for s in sagas:
        if s.get("idempotency_key"):
            orders_by_key[s["idempotency_key"]].add(s["order_id"])
    for inv, done in _ops(history):
        key = (inv.get("value") or {}).get("idempotency_key")
        oid = ((done or {}).get("value") or {}).get("order_id")
        if key and oid and done["type"] == "ok":
            orders_by_key[key].add(oid)
    existing = {o["id"] for o in final.get("orders") or []}
    bad = [{"idempotency_key": k, "orders": sorted(v & existing)} for k, v in orders_by_key.items()
           if len(v & existing) > 1]
    return _result("idempotency", bad, len(orders_by_key),
                   rule="one idempotency key, at most one order")


def check(history: list[dict], final: dict) -> list[dict]:
    return [stock_conservation(final), no_oversell(final), orders_end(final),
            payments_match_orders(final), outcomes_match_history(history, final),
            idempotency(history, final)]
