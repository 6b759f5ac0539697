"""Replica and CDC lag: metrics and checks from a run directory, and the
CDC pipeline's end state after quiescence.

Inputs: heartbeats.csv, replication.csv, cdc_lag.csv, cdc_backlog.csv (written
by harness.lagmon), faults.jsonl and history.jsonl.  Every figure is derived
from those records, so a report rebuilt from the run directory shows the same.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import requests

from . import checks as C
from .lagmon import CONSUMERS, cdc_backlog
from .verdicts import _epoch, percentile

__all__ = ["replication_metrics", "replication_checks", "stale_reads", "cdc_metrics",
           "cdc_checks", "wait_cdc_quiet", "cdc_end_state", "REPLICATION_KEYS", "CDC_KEYS"]

REPLICATION_KEYS = ("replica_lag_ms_max", "replica_caught_up_ms", "replica_catch_up_s_max",
                    "replica_lag_effect_min_ratio", "stale_reads_ryw_max")
CDC_KEYS = ("cdc_lag_p99_ms_max", "cdc_catch_up_s_max", "cdc_quiesce_s", "cdc_mismatches_max")
REPLICA_TARGETS = ("orders-replication", "pg-replica", "@replica")


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v) -> float | None:
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return None


def _windows(records: list[dict], targets) -> list[tuple[float, float, dict]]:
    out = []
    for r in records:
        if r.get("target") in targets and r.get("start"):
            s, e = _epoch(r["start"]), _epoch(r.get("end")) if r.get("end") else None
            out.append((s, e if e is not None else float("inf"), r))
    return sorted(out, key=lambda w: w[0])


# -- streaming replica -------------------------------------------------------------

def replication_metrics(run: Path, records: list[dict], *, caught_up_ms: float = 50.0) -> dict:
    beats = [(float(r["committed"]), float(r["visible"]), float(r["lag_ms"]))
             for r in _rows(run / "heartbeats.csv")]
    samples = [(float(r["time"]), _num(r["hb_lag_ms"])) for r in _rows(run / "replication.csv")]
    lags = sorted(b[2] for b in beats)
    peak = max([b[2] for b in beats] + [v for _, v in samples if v is not None], default=None)
    m = {"heartbeats": len(beats), "replica_lag_p50_ms": percentile(lags, 50),
         "replica_lag_p99_ms": percentile(lags, 99),
         "replica_lag_peak_ms": round(peak, 2) if peak is not None else None,
         "replica_catch_up_s": None}
    wins = _windows(records, REPLICA_TARGETS)
    m["replica_faults"] = []
    for s, e, r in wins:
        during = sorted(b[2] for b in beats if s <= b[0] <= e)
        m["replica_faults"].append({
            "name": r["name"], "kind": r["kind"], "params": r.get("params") or {},
            "beats": len(during), "lag_p50_ms": percentile(during, 50),
            "lag_peak_ms": round(during[-1], 2) if during else None})
    def caught_up(end: float):
        # the first beat committed after a heal that became visible within caught_up_ms
        return next((b for b in beats if b[0] >= end and b[2] <= caught_up_ms), None)
    if wins:
        end = max(e for _, e, _ in wins)
        first = caught_up(end)
        m["replica_catch_up_s"] = round(first[1] - end, 3) if first else None
        # Outside the faults: beats not committed between a fault's start (less
        # 1 s) and 1 s after the replica caught up from it.
        spans = []
        for s_, e_, _ in wins:
            c = caught_up(e_)
            spans.append((s_ - 1, (c[1] if c else e_) + 1))
        quiet = sorted(b[2] for b in beats if not any(a <= b[0] <= z for a, z in spans))
    else:
        quiet = lags
    m["replica_lag_p99_outside_faults_ms"] = percentile(quiet, 99)
    return m


def stale_reads(run: Path) -> dict:
    """Read-your-writes anomalies in the history, per routing."""
    path = run / "history.jsonl"
    out: dict = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if '"read_history"' not in line:
            continue
        op = json.loads(line)
        if op.get("type") != "ok" or op.get("f") != "read_history":
            continue
        v = op.get("value") or {}
        d = out.setdefault(v.get("routing", "service"), {"reads": 0, "stale": 0, "served_by_replica": 0,
                                                           "examples": []})
        d["reads"] += 1
        d["served_by_replica"] += v.get("served_by") == "replica"
        if v.get("stale"):
            d["stale"] += 1
            if len(d["examples"]) < 5:
                d["examples"].append({"order_id": v.get("order_id"), "served_by": v.get("served_by"),
                                      "after_write_ms": v.get("after_write_ms")})
    return out


def replication_checks(m: dict, stale: dict, records: list[dict], slo: dict) -> list[C.Check]:
    out = []
    injected = [f for f in m.get("replica_faults", []) if f["kind"] == "latency"]
    for f in injected:
        # Calibration of the heartbeat: with latency L on the link, a commit
        # reaches the replica no sooner than L later.
        want = float(f["params"].get("latency", 0))
        got = f["lag_p50_ms"]
        lo = want * slo["replica_lag_effect_min_ratio"]
        out.append(C.Check("replica-lag-felt", "unknown" if got is None else ("pass" if got >= lo else "fail"),
                           got, lo, {"fault": f["name"], "injected_latency_ms": want, "beats": f["beats"],
                                     "meaning": "median heartbeat lag during the fault vs the injected latency"}))
    if _windows(records, REPLICA_TARGETS):
        out.append(C.at_most("replica-caught-up", m.get("replica_catch_up_s"), slo["replica_catch_up_s_max"],
                             unit="s", caught_up_ms=slo["replica_caught_up_ms"],
                             note="from the heal to the first heartbeat visible within caught_up_ms"))
    out.append(C.at_most("replica-lag-outside-faults", m.get("replica_lag_p99_outside_faults_ms"),
                         slo["replica_lag_ms_max"], unit="ms", heartbeats=m.get("heartbeats")))
    ryw = stale.get("read-your-writes")
    out.append(C.at_most("read-your-writes-holds", ryw["stale"] if ryw else None, slo["stale_reads_ryw_max"],
                         reads=ryw["reads"] if ryw else 0,
                         served_by_replica=ryw["served_by_replica"] if ryw else 0,
                         examples=ryw["examples"] if ryw else []))
    svc = stale.get("service")
    if svc is not None and injected:
        # Calibration of the anomaly detector itself: reads routed to a replica
        # that lags by hundreds of ms right after a write must miss it.
        out.append(C.Check("stale-reads-detected-under-lag", "pass" if svc["stale"] > 0 else "fail",
                           svc["stale"], 1, {"reads": svc["reads"],
                                             "served_by_replica": svc["served_by_replica"]}))
    return out


# -- CDC -----------------------------------------------------------------------------

def cdc_metrics(run: Path, records: list[dict]) -> dict:
    lag_rows = _rows(run / "cdc_lag.csv")
    backlog_rows = _rows(run / "cdc_backlog.csv")
    by: dict[str, list[float]] = {}
    for r in lag_rows:
        by.setdefault(r["consumer"], []).append(float(r["lag_ms"]))
    allv = sorted(v for vs in by.values() for v in vs)
    m = {"cdc_events_applied": len(allv), "cdc_lag_p50_ms": percentile(allv, 50),
         "cdc_lag_p99_ms": percentile(allv, 99), "cdc_lag_max_ms": allv[-1] if allv else None,
         "cdc_consumers": {}}
    for name, vs in by.items():
        vs.sort()
        m["cdc_consumers"][name] = {"applied": len(vs), "lag_p50_ms": percentile(vs, 50),
                                    "lag_p99_ms": percentile(vs, 99), "lag_max_ms": vs[-1]}
    for r in backlog_rows:
        d = m["cdc_consumers"].setdefault(r["consumer"], {"applied": 0})
        b = _num(r["backlog"])
        if b is not None:
            d["backlog_peak"] = max(d.get("backlog_peak", 0), int(b))
    # Catch-up of each consumer whose service a fault stopped: from its restart
    # (the fault's end) to the first sample with nothing left to deliver.
    for name, d in m["cdc_consumers"].items():
        svc = CONSUMERS.get(name, (None,))[0]
        wins = _windows(records, (svc,))
        if not wins:
            continue
        end = max(e for _, e, _ in wins)
        done = next((float(r["time"]) for r in backlog_rows if r["consumer"] == name
                     and float(r["time"]) >= end and _num(r["backlog"]) == 0 and r["up"] == "1"), None)
        d["catch_up_s"] = round(done - end, 2) if done else None
        applied = [float(r["applied_ms"]) / 1000 for r in lag_rows if r["consumer"] == name]
        n = sum(1 for t in applied if end <= t <= (done or end))
        d["catch_up_events"] = n
        d["catch_up_rate_eps"] = round(n / (done - end), 1) if done and done > end else None
        # Outside the fault: events whose way from commit to target did not
        # overlap [fault start, caught up] (those waited for the outage).
        stop_at = done or max(e for _, e, _ in wins)
        steady = sorted(float(r["lag_ms"]) for r in lag_rows if r["consumer"] == name and not any(
            float(r["commit_ms"]) / 1000 <= stop_at and float(r["applied_ms"]) / 1000 >= s
            for s, _e, _ in wins))
        d["lag_p99_outside_fault_ms"] = percentile(steady, 99)
    caught = [d["catch_up_s"] for d in m["cdc_consumers"].values() if "catch_up_s" in d]
    m["cdc_catch_up_s"] = None if not caught or None in caught else max(caught)
    return m


def wait_cdc_quiet(redis_url: str, timeout_s: float, poll_s: float = 0.5) -> float:
    """Wait until every consumer group has nothing left to deliver or acknowledge
    (twice in a row); returns the seconds waited.  TimeoutError if not."""
    import redis
    r = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    t0 = time.monotonic()
    quiet = 0
    try:
        while True:
            try:
                left = {g: cdc_backlog(r, g, src)[1] for g, (_, src) in CONSUMERS.items()}
            except redis.RedisError as e:
                left = {"redis": str(e)}
            quiet = quiet + 1 if all(v == 0 for v in left.values()) else 0
            if quiet >= 2:
                return round(time.monotonic() - t0, 2)
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"CDC consumers not caught up after {timeout_s:g} s: {left}")
            time.sleep(poll_s)
    finally:
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


def cdc_end_state(services: dict) -> dict:
    """Source vs every CDC target, after quiescence.  Differences are listed
    (up to 10 examples each) with their counts."""
    s = requests.Session()
    s.trust_env = False
    url = {k: v["url"] if isinstance(v, dict) else v for k, v in services.items()}
    products = {p["id"]: p["version"] for p in _pages(s, url["catalog"] + "/products", 500)}
    docs = {d["product_id"]: d["version"] for d in _pages(s, url["search"] + "/admin/documents")}
    orders = {o["id"]: o for o in _pages(s, url["orders"] + "/orders")}
    facts = {f["order_id"]: f for f in _pages(s, url["analytics"] + "/admin/facts")}
    totals = s.get(url["analytics"] + "/sales/totals", timeout=10).json()
    users = {u["id"]: u["email"] for u in _pages(s, url["users"] + "/admin/users")}
    replica = {u["id"]: u["email"] for u in _pages(s, url["orders"] + "/admin/user-replica")
               if not u.get("deleted")}

    def diff(src: dict, dst: dict, same) -> dict:
        missing = [k for k in src if k not in dst]
        extra = [k for k in dst if k not in src]
        wrong = [k for k in src if k in dst and not same(src[k], dst[k])]
        return {"source": len(src), "target": len(dst), "missing": len(missing), "extra": len(extra),
                "different": len(wrong), "examples": {"missing": missing[:10], "extra": extra[:10],
                                                      "different": wrong[:10]}}

    from decimal import Decimal
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


def cdc_checks(m: dict, end: dict | None, problem: str | None, slo: dict) -> list[C.Check]:
    out = [C.Check("cdc-consumers-caught-up", "fail" if problem else "pass", problem is None, True,
                   {"problem": problem} if problem else {})]
    for key, label in (("search", "search-index-matches-catalog"),
                       ("analytics", "analytics-has-every-order-once"),
                       ("user_replica", "user-replica-matches-users")):
        d = (end or {}).get(key)
        bad = None if d is None else d["missing"] + d["extra"] + d["different"]
        out.append(C.at_most(label, bad, slo["cdc_mismatches_max"], **({} if d is None else d)))
    t = (end or {}).get("analytics_totals")
    out.append(C.at_most("analytics-totals-exactly-once",
                         None if t is None else sum(1 for ok in t["equal"].values() if not ok),
                         0, **({} if t is None else {"expected": t["expected"], "got": t["got"]}),
                         meaning="fields of the totals that differ from the source; the totals are "
                                 "kept from each change's after - before, so a change applied twice "
                                 "or lost shows here"))
    for name, d in m.get("cdc_consumers", {}).items():
        if "catch_up_s" in d:
            out.append(C.at_most(f"cdc-caught-up-{name}", d["catch_up_s"], slo["cdc_catch_up_s_max"], unit="s",
                                 backlog_peak=d.get("backlog_peak"), rate_eps=d.get("catch_up_rate_eps")))
    steady = sorted(v for d in m.get("cdc_consumers", {}).values()
                    for v in [d.get("lag_p99_outside_fault_ms", d.get("lag_p99_ms"))] if v is not None)
    out.append(C.at_most("cdc-lag-p99-outside-faults", steady[-1] if steady else None,
                         slo["cdc_lag_p99_ms_max"], unit="ms",
                         per_consumer={k: d.get("lag_p99_outside_fault_ms", d.get("lag_p99_ms"))
                                       for k, d in m.get("cdc_consumers", {}).items()}))
    return out
