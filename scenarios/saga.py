"""The saga scenario's client side: reading the final state after quiescence.

The workload is the shop's order path (`SagaUser` in workload.py); the
checker is saga_checker.check, a pure function of history + this state.
"""

from __future__ import annotations

import time

import requests

__all__ = ["wait_quiescent", "read_final_state", "scoped", "QuiescenceTimeout"]


class QuiescenceTimeout(RuntimeError):
    pass


def _all(session: requests.Session, url: str, **params) -> list:
    out, offset = [], 0
    while True:
        r = session.get(url, params={**params, "limit": 10000, "offset": offset}, timeout=30)
        r.raise_for_status()
        items = r.json()["items"]
        out += items
        if len(items) < 10000:
            return out
        offset += len(items)


def wait_quiescent(urls: dict[str, str], timeout_s: float = 90.0, poll_s: float = 1.0) -> float:
    """Wait until no saga is open (the orchestrator finished or compensated all)."""
    t0 = time.monotonic()
    s = requests.Session()
    s.trust_env = False
    last = None
    while time.monotonic() - t0 < timeout_s:
        try:
            r = s.get(urls["orders"] + "/admin/sagas", params={"open": "true", "limit": 1},
                      timeout=10)
            if r.status_code == 200 and not r.json()["items"]:
                return time.monotonic() - t0
            last = f"HTTP {r.status_code}: {r.text[:200]}" if r.status_code != 200 else "sagas still open"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(poll_s)
    raise QuiescenceTimeout(f"sagas still open after {timeout_s:.0f} s ({last})")


def read_final_state(urls: dict[str, str]) -> dict:
    s = requests.Session()
    s.trust_env = False
    cat, orders, pay = (urls[k] for k in ("catalog", "orders", "payments"))
    return {
        "inventory": _all(s, cat + "/inventory"),
        "reservations": _all(s, cat + "/admin/reservations"),
        "orders": _all(s, orders + "/orders"),
        "order_items": _all(s, orders + "/admin/order-items"),
        "sagas": _all(s, orders + "/admin/sagas"),
        "payments": _all(s, pay + "/admin/payments"),
        "voided": _all(s, pay + "/admin/voided"),
    }


def scoped(final: dict, product_ids: set[str]) -> dict:
    """The part of the final state that concerns these products and the orders
    touching them (a long-lived stack also holds other tests' data)."""
    items = [i for i in final["order_items"] if i["product_id"] in product_ids]
    order_ids = {i["order_id"] for i in items}
    return {
        "inventory": [p for p in final["inventory"] if p["product_id"] in product_ids],
        "reservations": [r for r in final["reservations"] if r["product_id"] in product_ids],
        "orders": [o for o in final["orders"] if o["id"] in order_ids],
        "order_items": [i for i in final["order_items"] if i["order_id"] in order_ids],
        "sagas": [s for s in final["sagas"] if s["order_id"] in order_ids],
        "payments": [p for p in final["payments"] if p["order_id"] in order_ids],
        "voided": [v for v in final["voided"] if v in order_ids],
    }
