"""What a scenario records once its load has stopped, for its checks to judge.

Each recorder talks to the stack and writes into the run directory; the
checks later read only the files (harness.checks).  A recorder that cannot
reach its end state writes why, so its checks are `unknown`, never a pass.

- `saga_final_state`: waits until no saga is open, then reads the final state
  (stock, reservations, orders, payments) of this run's products:
  final_state.json, and run.json's end_state.saga.
- `cdc_end_state`: waits until every CDC consumer drained, then compares each
  source with every target: cdc_end_state.json.
- `lag_tail`: one more 1 Hz sample of lag and backlog after the load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

import redis
import requests

from scenarios.saga import QuiescenceTimeout, read_final_state, scoped, wait_quiescent

from ..stack.info import StackInfo
from ..stack.topology import CDC_CONSUMERS
from .lagmon import bus_is_redis, cdc_backlog, cdc_backlog_http
from .rundir import RunDir

__all__ = ["EndContext", "saga_final_state", "cdc_end_state", "lag_tail", "wait_cdc_quiet",
           "compare_cdc"]


@dataclass
class EndContext:
    info: StackInfo
    rd: RunDir
    slo: dict
    products: set[str]
    notes: dict = field(default_factory=dict)      # run.json's end_state


def saga_final_state(ctx: EndContext) -> None:
    note = ctx.notes.setdefault("saga", {"quiescence_s": None, "problem": None})
    try:
        waited = wait_quiescent(ctx.info.urls, timeout_s=max(60.0, ctx.slo.get("recovery_s", 30) * 3))
        ctx.rd.write_json("final_state.json", scoped(read_final_state(ctx.info.urls), ctx.products))
        note["quiescence_s"] = round(waited, 1)
    except QuiescenceTimeout as e:
        note["problem"] = str(e)
    except Exception as e:  # the state could not be read: the invariants are unknown
        note["problem"] = f"{type(e).__name__}: {e}"


def cdc_end_state(ctx: EndContext) -> None:
    doc = {"quiesce_s": None, "problem": None, "state": None}
    try:
        redis_url = ctx.info.redis.url if ctx.info.redis is not None and bus_is_redis(ctx.info) else None
        budget = ctx.slo["cdc_quiesce_s"]
        t0 = time.monotonic()
        doc["quiesce_s"] = wait_cdc_quiet(redis_url, budget, urls=ctx.info.urls)
        doc["state"] = compare_cdc(ctx.info.urls)
        # "Nothing left to deliver" is each group's view of what was already
        # published; a change the relay has not published yet (a MongoDB change
        # stream and Kafka take seconds) is invisible to it.  So the end state is
        # compared again until source and targets agree, within the same budget:
        # a difference that outlasts it is judged, one that converged is not.
        rounds = 1
        while not _cdc_converged(doc["state"]) and time.monotonic() - t0 < budget:
            time.sleep(1.0)
            wait_cdc_quiet(redis_url, max(budget - (time.monotonic() - t0), 1.0), urls=ctx.info.urls)
            doc["state"] = compare_cdc(ctx.info.urls)
            rounds += 1
        doc["compare_rounds"] = rounds
        doc["converged_s"] = round(time.monotonic() - t0, 2)
    except TimeoutError as e:
        doc["problem"] = str(e)
    except Exception as e:  # the end state could not be read: its checks are unknown
        doc["problem"] = f"{type(e).__name__}: {e}"
    ctx.rd.write_json("cdc_end_state.json", doc)


def _cdc_converged(state: dict) -> bool:
    """Every target equals its source (compare_cdc's shape)."""
    for key in ("search", "analytics", "user_replica"):
        d = state.get(key)
        if isinstance(d, dict) and any(d.get(k) for k in ("missing", "extra", "different")):
            return False
    totals = state.get("analytics_totals")
    return not (isinstance(totals, dict) and not all((totals.get("equal") or {}).values()))


def lag_tail(ctx: EndContext) -> None:
    time.sleep(1.5)   # one more 1 Hz sample of lag and backlog after the drain


def wait_cdc_quiet(redis_url: str | None, timeout_s: float, poll_s: float = 0.5, *,
                   urls: dict[str, str] | None = None) -> float:
    """Wait until every consumer group has nothing left to deliver or acknowledge
    (twice in a row); returns the seconds waited.  TimeoutError if not.
    With a Redis bus (`redis_url`), from Redis, as the lag monitor reads it;
    otherwise (Kafka) each group's service's figure (`/admin/cdc/<group>/backlog`
    of `urls`)."""
    r = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) if redis_url else None
    s = requests.Session()
    s.trust_env = False
    t0 = time.monotonic()
    quiet = 0

    def left_of(group: str, svc: str, src: str):
        if r is not None:      # a Redis bus: as the lag monitor reads it
            try:
                return cdc_backlog(r, group, src)[1]
            except redis.RedisError as e:
                return f"redis: {e}"
        if urls is None:
            return "no bus to read"
        try:
            _, backlog, _, up = cdc_backlog_http(s, urls[svc], group)
            return backlog if up else f"{group}: not consuming"
        except (requests.RequestException, ValueError, KeyError) as e:
            return f"{svc}: {type(e).__name__}"
    try:
        while True:
            left = {g: left_of(g, svc, src) for g, (svc, src) in CDC_CONSUMERS.items()}
            quiet = quiet + 1 if all(v == 0 for v in left.values()) else 0
            if quiet >= 2:
                return round(time.monotonic() - t0, 2)
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"CDC consumers not caught up after {timeout_s:g} s: {left}")
            time.sleep(poll_s)
    finally:
        s.close()
        if r is not None:
            r.close()


def _pages(s: requests.Session, url: str, page: int = 10000) -> list[dict]:
    out, offset = [], 0
    while True:
        resp = s.get(url, params={"limit": page, "offset": offset}, timeout=30)
        resp.raise_for_status()
        items = resp.json()["items"]
        out += items
        if len(items) < page:
            return out
        offset += len(items)


def compare_cdc(urls: dict[str, str]) -> dict:
    """Source vs every CDC target, after quiescence.  Differences are listed
    (up to 10 examples each) with their counts."""
    s = requests.Session()
    s.trust_env = False
    products = {p["id"]: p["version"] for p in _pages(s, urls["catalog"] + "/products", 500)}
    docs = {d["product_id"]: d["version"] for d in _pages(s, urls["search"] + "/admin/documents")}
    orders = {o["id"]: o for o in _pages(s, urls["orders"] + "/orders")}
    facts = {f["order_id"]: f for f in _pages(s, urls["analytics"] + "/admin/facts")}
    totals = s.get(urls["analytics"] + "/sales/totals", timeout=10).json()
    users = {u["id"]: u["email"] for u in _pages(s, urls["users"] + "/admin/users")}
    replica = {u["id"]: u["email"] for u in _pages(s, urls["orders"] + "/admin/user-replica")
               if not u.get("deleted")}

    def diff(src: dict, dst: dict, same) -> dict:
        missing = [k for k in src if k not in dst]
        extra = [k for k in dst if k not in src]
        wrong = [k for k in src if k in dst and not same(src[k], dst[k])]
        return {"source": len(src), "target": len(dst), "missing": len(missing), "extra": len(extra),
                "different": len(wrong), "examples": {"missing": missing[:10], "extra": extra[:10],
                                                      "different": wrong[:10]}}

    confirmed = [o for o in orders.values() if o["status"] == "CONFIRMED"]
    want_totals = {"orders": len(orders), "confirmed": len(confirmed),
                   "cancelled": sum(1 for o in orders.values() if o["status"] == "CANCELLED"),
                   "revenue": str(sum((Decimal(str(o["total_amount"])) for o in confirmed), Decimal("0.00")))}
    got_totals = {k: (str(Decimal(str(v))) if k == "revenue" else v) for k, v in totals.items()}
    return {
        "search": diff(products, docs, lambda a, b: a == b),
        "analytics": diff(orders, facts,
                          lambda a, b: a["status"] == b["status"]
                          and Decimal(str(a["total_amount"])) == Decimal(str(b["total_amount"]))),
        "analytics_totals": {"expected": want_totals, "got": got_totals,
                             "equal": {k: str(want_totals[k]) == str(got_totals.get(k)) for k in want_totals}},
        "user_replica": diff(users, replica, lambda a, b: a == b),
    }
