"""Replica and CDC lag, judged from the run directory.

Inputs: heartbeats.csv, replication.csv, cdc_lag.csv, cdc_backlog.csv (the
lag monitor's), faults.jsonl, history.jsonl and cdc_end_state.json.  The
metrics land in results.json, which the report's lag section shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports.measures import fault_windows, percentile
from reports.rundata import Run

from ..stack.topology import CDC_CONSUMERS
from .core import Check, at_most

__all__ = ["ReplicationChecks", "CdcChecks", "replication_metrics", "stale_reads", "cdc_metrics",
           "REPLICATION_KEYS", "CDC_KEYS", "REPLICA_TARGETS"]

REPLICATION_KEYS = ("replica_lag_ms_max", "replica_caught_up_ms", "replica_catch_up_s_max",
                    "replica_lag_effect_min_ratio", "stale_reads_ryw_max")
CDC_KEYS = ("cdc_lag_p99_ms_max", "cdc_catch_up_s_max", "cdc_quiesce_s", "cdc_mismatches_max")
REPLICA_TARGETS = ("orders-replication", "pg-replica")


def _num(v) -> float | None:
    try:
        return float(v) if v not in ("", None) else None
    except ValueError:
        return None


# -- streaming replica -------------------------------------------------------------

def replication_metrics(run: Run, *, caught_up_ms: float = 50.0) -> dict:
    beats = [(float(r["committed"]), float(r["visible"]), float(r["lag_ms"]))
             for r in run.rows("heartbeats.csv")]
    samples = [(float(r["time"]), _num(r["hb_lag_ms"])) for r in run.rows("replication.csv")]
    lags = [b[2] for b in beats]
    peak = max(lags + [v for _, v in samples if v is not None], default=None)
    m = {"heartbeats": len(beats), "replica_lag_p50_ms": percentile(lags, 50),
         "replica_lag_p99_ms": percentile(lags, 99),
         "replica_lag_peak_ms": round(peak, 2) if peak is not None else None,
         "replica_catch_up_s": None, "replica_faults": []}
    wins = fault_windows(run.faults, REPLICA_TARGETS)
    for w in wins:
        during = [b[2] for b in beats if w.contains(b[0])]
        m["replica_faults"].append({
            "name": w.name, "kind": w.kind, "params": w.params, "beats": len(during),
            "lag_p50_ms": percentile(during, 50),
            "lag_peak_ms": round(max(during), 2) if during else None})

    def caught_up(end: float):
        # the first beat committed after a heal that became visible within caught_up_ms
        return next((b for b in beats if b[0] >= end and b[2] <= caught_up_ms), None)
    if wins:
        end = max(w.end for w in wins)
        first = caught_up(end)
        m["replica_catch_up_s"] = round(first[1] - end, 3) if first else None
        # Outside the faults: beats not committed between a fault's start (less
        # 1 s) and 1 s after the replica caught up from it.
        spans = []
        for w in wins:
            c = caught_up(w.end)
            spans.append((w.start - 1, (c[1] if c else w.end) + 1))
        quiet = [b[2] for b in beats if not any(a <= b[0] <= z for a, z in spans)]
    else:
        quiet = lags
    m["replica_lag_p99_outside_faults_ms"] = percentile(quiet, 99)
    return m


def stale_reads(run: Run) -> dict:
    """Read-your-writes anomalies in the history, per routing."""
    out: dict = {}
    for op in run.history:
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


def lag_metrics(run: Run, slo: dict) -> dict:
    """The lag figures every run reports (its lag monitor runs beside every run)."""
    m = replication_metrics(run, caught_up_ms=slo.get("replica_caught_up_ms", 50.0))
    stale = stale_reads(run)
    m["stale_reads"] = sum(d["stale"] for k, d in stale.items() if k != "read-your-writes") \
        if stale else None
    m["stale_reads_by_routing"] = stale
    if run.has("cdc_lag.csv"):
        m.update(cdc_metrics(run))
    return m


@dataclass(frozen=True)
class ReplicationChecks:
    keys = REPLICATION_KEYS
    needs = ("replica",)      # what a stack must offer (a targets file may not)

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        m = replication_metrics(run, caught_up_ms=slo["replica_caught_up_ms"])
        stale = stale_reads(run)
        out = []
        injected = [f for f in m["replica_faults"] if f["kind"] == "latency"]
        for f in injected:
            # Calibration of the heartbeat: with latency L on the link, a commit
            # reaches the replica no sooner than L later.
            want = float(f["params"].get("latency", 0))
            got = f["lag_p50_ms"]
            lo = want * slo["replica_lag_effect_min_ratio"]
            out.append(Check("replica-lag-felt", "unknown" if got is None else ("pass" if got >= lo else "fail"),
                             got, lo, {"fault": f["name"], "injected_latency_ms": want, "beats": f["beats"],
                                       "meaning": "median heartbeat lag during the fault vs the injected latency"}))
        if fault_windows(run.faults, REPLICA_TARGETS):
            out.append(at_most("replica-caught-up", m["replica_catch_up_s"], slo["replica_catch_up_s_max"],
                               unit="s", caught_up_ms=slo["replica_caught_up_ms"],
                               note="from the heal to the first heartbeat visible within caught_up_ms"))
        out.append(at_most("replica-lag-outside-faults", m["replica_lag_p99_outside_faults_ms"],
                           slo["replica_lag_ms_max"], unit="ms", heartbeats=m["heartbeats"]))
        ryw = stale.get("read-your-writes")
        out.append(at_most("read-your-writes-holds", ryw["stale"] if ryw else None, slo["stale_reads_ryw_max"],
                           reads=ryw["reads"] if ryw else 0,
                           served_by_replica=ryw["served_by_replica"] if ryw else 0,
                           examples=ryw["examples"] if ryw else []))
        svc = stale.get("service")
        if svc is not None and injected:
            # Calibration of the anomaly detector itself: reads routed to a replica
            # that lags by hundreds of ms right after a write must miss it.
            out.append(Check("stale-reads-detected-under-lag", "pass" if svc["stale"] > 0 else "fail",
                             svc["stale"], 1, {"reads": svc["reads"],
                                               "served_by_replica": svc["served_by_replica"]}))
        return out, {}


# -- CDC -----------------------------------------------------------------------------

def cdc_metrics(run: Run, outage_targets: tuple[str, ...] = ()) -> dict:
    """CDC lag, backlog and catch-up per consumer.  A fault on one of
    `outage_targets` (the bus, say) stops every consumer's feed: each is
    judged for catching up after it, as after a fault on its own service."""
    lag_rows = run.rows("cdc_lag.csv")
    backlog_rows = run.rows("cdc_backlog.csv")
    by: dict[str, list[float]] = {}
    for r in lag_rows:
        by.setdefault(r["consumer"], []).append(float(r["lag_ms"]))
    allv = [v for vs in by.values() for v in vs]
    m = {"cdc_events_applied": len(allv), "cdc_lag_p50_ms": percentile(allv, 50),
         "cdc_lag_p99_ms": percentile(allv, 99), "cdc_lag_max_ms": max(allv) if allv else None,
         "cdc_consumers": {}}
    for name, vs in by.items():
        m["cdc_consumers"][name] = {"applied": len(vs), "lag_p50_ms": percentile(vs, 50),
                                    "lag_p99_ms": percentile(vs, 99), "lag_max_ms": max(vs)}
    for r in backlog_rows:
        d = m["cdc_consumers"].setdefault(r["consumer"], {"applied": 0})
        b = _num(r["backlog"])
        if b is not None:
            d["backlog_peak"] = max(d.get("backlog_peak", 0), int(b))
    # Catch-up of each consumer whose service a fault stopped: from its restart
    # (the fault's end) to the first sample with nothing left to deliver.
    for name, d in m["cdc_consumers"].items():
        svc = CDC_CONSUMERS.get(name, (None,))[0]
        wins = fault_windows(run.faults, (svc, *outage_targets))
        if not wins:
            continue
        end = max(w.end for w in wins)
        # Caught up: nothing left to deliver, and not before the last change
        # committed during the fault reached the target.  An empty backlog
        # alone can come early: after a broker restart the relay re-publishes
        # what the outage held back only once it has reconnected, and until
        # then the consumers have nothing to deliver but are not caught up.
        held = [float(r["applied_ms"]) / 1000 for r in lag_rows if r["consumer"] == name and any(
            w.start <= float(r["commit_ms"]) / 1000 <= w.end for w in wins)]
        since = max([end, *held])
        done = next((float(r["time"]) for r in backlog_rows if r["consumer"] == name
                     and float(r["time"]) >= since and _num(r["backlog"]) == 0 and r["up"] == "1"), None)
        d["catch_up_s"] = round(done - end, 2) if done else None
        applied = [float(r["applied_ms"]) / 1000 for r in lag_rows if r["consumer"] == name]
        n = sum(1 for t in applied if end <= t <= (done or end))
        d["catch_up_events"] = n
        d["catch_up_rate_eps"] = round(n / (done - end), 1) if done and done > end else None
        # Outside the fault: events whose way from commit to target did not
        # overlap [fault start, caught up] (those waited for the outage).
        stop_at = done or end
        steady = [float(r["lag_ms"]) for r in lag_rows if r["consumer"] == name and not any(
            float(r["commit_ms"]) / 1000 <= stop_at and float(r["applied_ms"]) / 1000 >= w.start
            for w in wins)]
        d["lag_p99_outside_fault_ms"] = percentile(steady, 99)
    caught = [d["catch_up_s"] for d in m["cdc_consumers"].values() if "catch_up_s" in d]
    m["cdc_catch_up_s"] = None if not caught or None in caught else max(caught)
    return m


@dataclass(frozen=True)
class CdcChecks:
    """`outage_targets`: parts or links whose fault stops every consumer's feed
    (the broker): each consumer must catch up after it, and the events
    committed during it must show the outage in their lag (`cdc-outage-felt`)."""
    outage_targets: tuple[str, ...] = ()
    keys = CDC_KEYS
    needs = ("redis", "cdc")

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        m = cdc_metrics(run, self.outage_targets)
        doc = run.json("cdc_end_state.json") or {}
        problem = doc.get("problem") if doc else "the run recorded no CDC end state"
        end = doc.get("state")
        out = [Check("cdc-consumers-caught-up", "fail" if problem else "pass", problem is None, True,
                     {"problem": problem} if problem else {})]
        for key, label in (("search", "search-index-matches-catalog"),
                           ("analytics", "analytics-has-every-order-once"),
                           ("user_replica", "user-replica-matches-users")):
            d = (end or {}).get(key)
            bad = None if d is None else d["missing"] + d["extra"] + d["different"]
            out.append(at_most(label, bad, slo["cdc_mismatches_max"], **({} if d is None else d)))
        t = (end or {}).get("analytics_totals")
        out.append(at_most("analytics-totals-exactly-once",
                           None if t is None else sum(1 for ok in t["equal"].values() if not ok),
                           0, **({} if t is None else {"expected": t["expected"], "got": t["got"]}),
                           meaning="fields of the totals that differ from the source; the totals are "
                                   "kept from each change's after - before, so a change applied twice "
                                   "or lost shows here"))
        for name, d in m["cdc_consumers"].items():
            if "catch_up_s" in d:
                out.append(at_most(f"cdc-caught-up-{name}", d["catch_up_s"], slo["cdc_catch_up_s_max"],
                                   unit="s", backlog_peak=d.get("backlog_peak"),
                                   rate_eps=d.get("catch_up_rate_eps")))
        steady = [v for d in m["cdc_consumers"].values()
                  for v in [d.get("lag_p99_outside_fault_ms", d.get("lag_p99_ms"))] if v is not None]
        out.append(at_most("cdc-lag-p99-outside-faults", max(steady) if steady else None,
                           slo["cdc_lag_p99_ms_max"], unit="ms",
                           per_consumer={k: d.get("lag_p99_outside_fault_ms", d.get("lag_p99_ms"))
                                         for k, d in m["cdc_consumers"].items()}))
        for w in fault_windows(run.faults, self.outage_targets) if self.outage_targets else ():
            out.append(_outage_felt(run, w))
        return out, {"cdc_quiesce_s": doc.get("quiesce_s")}


def _outage_felt(run: Run, w) -> Check:
    """Calibration: events committed while the feed was cut waited for it, so
    the longest lag among them is at least half the outage."""
    lags = [float(r["lag_ms"]) for r in run.rows("cdc_lag.csv")
            if w.start <= float(r["commit_ms"]) / 1000 <= w.end]
    want = round(0.5 * (w.end - w.start) * 1000, 1)
    got = max(lags) if lags else None
    return Check("cdc-outage-felt", "unknown" if got is None else ("pass" if got >= want else "fail"),
                 got, want, {"fault": w.name, "target": w.target, "events_committed_during": len(lags),
                             "meaning": "longest CDC lag (ms) of events committed during the fault "
                                        "vs half its length"})
