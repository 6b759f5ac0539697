"""Checks of a stepped load (the knee) and of the noisy-neighbour phases."""

from __future__ import annotations

from dataclasses import dataclass

from reports.measures import ALL, knee, percentile, step_rows
from reports.rundata import Run

from .core import BUILT_IN, Check, at_least, at_most

__all__ = ["Capacity", "Neighbour", "CAPACITY_KEYS", "NEIGHBOUR_KEYS", "PROBE"]

CAPACITY_KEYS = ("p99_ms_max", "error_rate_max", "knee_min_rps", "min_samples_step")
NEIGHBOUR_KEYS = ("neighbour_p95_ratio_max",)
PROBE = "users GET /users/{id}"


@dataclass(frozen=True)
class Capacity:
    """The knee over every endpoint: the last step before the first that broke
    the SLO, judged on every request that started in it (after its settle
    time).  The live judge that stopped the load used the same measure on the
    requests finished by then; `stopped_because` says what it saw."""
    keys = CAPACITY_KEYS

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        steps = run.json("steps.json", []) or []
        settle = (run.info.get("parameters") or {}).get("settle_s", 0) or 0
        rows = step_rows(run.requests, steps, settle_s=settle, p99_ms=slo["p99_ms_max"],
                         error_rate=slo["error_rate_max"])
        need = slo.get("min_samples_step", BUILT_IN["min_samples_step"])
        knees = knee(rows, min_requests=need)
        overall = [r for r in rows if r["endpoint"] == ALL]
        k = knees.get(ALL, {"knee": None, "breach": None, "undersampled": None})
        thin = k.get("undersampled")
        crashed = [st["breach"] for st in steps if st.get("judge_error")]
        stopped = next((f"{st['users']} users: {st['breach']}" for st in steps if st.get("breach")), None)
        checks = [
            Check("load-stepped", "unknown" if crashed or not overall else "pass", len(overall), None,
                  {"steps": len(steps), **({"error": crashed[0]} if crashed else {})}),
            Check("knee-throughput", "unknown", None, slo["knee_min_rps"],
                  {"reason": f"the step at {thin['users']} users had only {thin['requests']} requests; "
                             f"a knee needs at least {need} per step (min_samples_step)",
                   "unit": "req/s"}) if thin else
            at_least("knee-throughput", k["knee"]["throughput"] if k["knee"] else (0.0 if overall else None),
                     slo["knee_min_rps"], unit="req/s", knee_users=k["knee"] and k["knee"]["users"],
                     first_breach=k["breach"] and f"{k['breach']['users']} users: {k['breach']['breach']}",
                     stopped_because=stopped),
        ]
        knee_rows = [{"endpoint": ep, "knee_users": v["knee"] and v["knee"]["users"],
                      "knee_throughput": v["knee"] and v["knee"]["throughput"],
                      "knee_p99_ms": v["knee"] and v["knee"]["p99_ms"],
                      "breach_users": v["breach"] and v["breach"]["users"],
                      "breach_reason": (v["breach"] and v["breach"]["breach"]) or (
                          v["undersampled"] and f"too few samples from {v['undersampled']['users']} users "
                                                f"({v['undersampled']['requests']} < {need})")}
                     for ep, v in knees.items()]
        metrics = {"knee_rps": k["knee"]["throughput"] if k["knee"] else None,
                   "knee_users": k["knee"]["users"] if k["knee"] else None,
                   "knee_p99_ms": k["knee"]["p99_ms"] if k["knee"] else None,
                   "steps": overall, "step_rows": rows, "knees": knee_rows,
                   "stopped_because": stopped}
        return checks, metrics


@dataclass(frozen=True)
class Neighbour:
    """The users service's p95 alone (baseline phase) and beside the noisy
    neighbours, from the probe in a process of its own (probe.csv), so that
    the load generator's own queue is not counted as the service's; runs
    made before that probe existed are judged on Locust's ProbeUser.  The
    in-Locust probe's ratio is reported beside it (`locust_probe_p95_ratio`)."""
    keys = NEIGHBOUR_KEYS
    MIN_SAMPLES = 20

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        phases = run.json("phases.json", []) or []

        def window(rows, name):
            ph = next((p for p in phases if p["phase"] == name and p.get("end")), None)
            if ph is None:
                return [], 0.0
            return [r for r in rows if ph["start"] <= r.time < ph["end"]], ph["end"] - ph["start"]

        def probe_ms(rows):
            return [[r.response_ms for r in window(rows, phase)[0] if r.name == PROBE and r.ok]
                    for phase in ("baseline", "noisy")]
        own = bool(run.probe)
        b, n = probe_ms(run.probe if own else run.requests)
        noisy, noisy_s = window(run.requests, "noisy")
        orders = [r for r in noisy if r.name == "orders POST /orders"]
        metrics = {"probe": "own process" if own else "locust",
                   "baseline_p95_ms": percentile(b, 95), "noisy_p95_ms": percentile(n, 95),
                   "baseline_p50_ms": percentile(b, 50), "noisy_p50_ms": percentile(n, 50),
                   "probe_requests": [len(b), len(n)],
                   "neighbour_orders_per_s": round(len(orders) / noisy_s, 1) if noisy_s else None}
        if own:
            lb, ln = probe_ms(run.requests)
            metrics["locust_probe_p95_ratio"] = (round(percentile(ln, 95) / percentile(lb, 95), 2)
                                                 if lb and ln and percentile(lb, 95) else None)
        if len(b) < self.MIN_SAMPLES or len(n) < self.MIN_SAMPLES:
            return [Check("neighbour-p95-ratio", "unknown", None, slo["neighbour_p95_ratio_max"],
                          {"reason": f"too few probe samples ({len(b)} alone, {len(n)} with neighbours)"})], metrics
        ratio = round(metrics["noisy_p95_ms"] / metrics["baseline_p95_ms"], 2)
        metrics["p95_ratio"] = ratio
        return [at_most("neighbour-p95-ratio", ratio, slo["neighbour_p95_ratio_max"], endpoint=PROBE,
                        probe=metrics["probe"],
                        baseline_p95_ms=metrics["baseline_p95_ms"], noisy_p95_ms=metrics["noisy_p95_ms"],
                        locust_probe_p95_ratio=metrics.get("locust_probe_p95_ratio"),
                        neighbour_orders_per_s=metrics["neighbour_orders_per_s"])], metrics
