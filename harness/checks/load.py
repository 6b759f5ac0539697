"""Checks of the load itself: requests made, errors, latency, health after
the run, the samplers' coverage, and the run's headline metrics."""

from __future__ import annotations

from dataclasses import dataclass

from reports.measures import endpoint_stats, fault_windows, percentile
from reports.rundata import Run

from .core import BUILT_IN, Check, at_least, at_most, too_few

__all__ = ["LoadChecks", "stopped_by_faults"]

STRICT_KEYS = ("error_rate_max", "server_errors_max", "p95_ms_max", "healthy_after_s",
               "min_samples_p95", "min_samples_p99")


def stopped_by_faults(run: Run) -> dict[str, float]:
    """Seconds a process fault kept each part stopped (it cannot answer then)."""
    out: dict[str, float] = {}
    for w in fault_windows(run.faults):
        if w.kind in ("kill", "stop", "pause") and w.end != float("inf"):
            out[w.target] = out.get(w.target, 0.0) + (w.end - w.start)
    return out


def _sampled(run: Run, duration_s: float) -> Check:
    """Every service's /metrics was scraped for at least half of the time it was up."""
    scrapes: dict[str, int] = {}
    failures: dict[str, int] = {}
    for r in run.metric_rows:
        if r["metric"] == "up":
            d = scrapes if r["value"] in ("1", "1.0") else failures
            d[r["service"]] = d.get(r["service"], 0) + 1
            (failures if d is scrapes else scrapes).setdefault(r["service"], 0)
    if not scrapes:
        return at_least("metrics-sampled", 0, 1)
    down = stopped_by_faults(run)
    need = {s: max(1, int((duration_s - down.get(s, 0.0)) * 0.5)) for s in scrapes}
    worst = min(scrapes, key=lambda s: scrapes[s] / need[s])
    return at_least("metrics-sampled", scrapes[worst], need[worst], service=worst,
                    scrapes=scrapes, failures=failures,
                    stopped_by_faults_s={k: round(v, 1) for k, v in down.items()})


def health_after(run: Run) -> tuple[float, bool, list[str]] | None:
    """The last health sample taken after the load (the stack's state at the end)."""
    end = run.load_end
    after = [s for s in run.health_samples if end is None or s[0] >= end]
    return after[-1] if after else None


@dataclass(frozen=True)
class LoadChecks:
    """`strict`: judge errors and latency against the SLO, over the whole run,
    or, when the run was given faults, over the requests that started outside
    every fault window and its heal grace (the fault checks judge the rest).
    Not strict (scenarios with their own load checks: faults, steps, phases):
    latencies are reported and the scenario's own checks judge them."""
    strict: bool = True

    @property
    def keys(self) -> tuple[str, ...]:
        return STRICT_KEYS if self.strict else ("healthy_after_s", "min_samples_p95", "min_samples_p99")

    def _judged(self, run: Run, slo: dict) -> tuple[list, dict]:
        """The requests the strict checks judge, and a note saying which."""
        windows = fault_windows(run.faults)
        if not windows:
            return run.requests, {}
        grace = slo.get("heal_grace_s", 0.0)
        return ([r for r in run.requests if not any(w.start <= r.time <= w.end + grace for w in windows)],
                {"judged": f"outside the {len(windows)} fault window(s) and {grace:g} s after each"})

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        reqs = run.requests
        out = [at_least("requests-made", len(reqs), 1)]
        judged, where = self._judged(run, slo) if self.strict else (reqs, {})
        total = len(judged)
        failures = sum(1 for r in judged if not r.ok)
        by_endpoint = endpoint_stats(judged)
        if self.strict:
            # The slowest endpoint among those with enough samples for a p95;
            # the others are named, and if none qualifies the check is unknown.
            need95 = slo.get("min_samples_p95", BUILT_IN["min_samples_p95"])
            sized = {k: v for k, v in by_endpoint.items() if v["requests"] >= need95}
            worst_ep = max(sized, key=lambda k: sized[k]["p95_ms"]) if sized else None
            few = {k: v["requests"] for k, v in by_endpoint.items() if k not in sized}
            p95 = (at_most("p95-latency", by_endpoint[worst_ep]["p95_ms"], slo["p95_ms_max"],
                           worst_endpoint=worst_ep, unit="ms", **where,
                           **({"too_few_samples": few} if few else {})) if worst_ep else
                   too_few("p95-latency", max(few.values(), default=0), need95, "min_samples_p95",
                           slo["p95_ms_max"], unit="ms", **where))
            out += [
                at_most("no-server-errors", sum(1 for r in judged if r.server_error) if total else None,
                        slo["server_errors_max"], **where,
                        by_endpoint={n: sum(1 for r in judged if r.name == n and r.server_error)
                                     for n in by_endpoint}),
                at_most("error-rate", round(failures / total, 5) if total else None,
                        slo["error_rate_max"], failures=failures, requests=total, **where),
                p95,
            ]
        for ep, th in sorted((slo.get("endpoints") or {}).items()):
            st = by_endpoint.get(ep)
            n = st["requests"] if st else 0
            for q in ("p95", "p99"):
                if f"{q}_ms_max" in th:
                    key = f"min_samples_{q}"
                    out.append(too_few(f"{q}[{ep}]", n, slo.get(key, BUILT_IN[key]), key, th[f"{q}_ms_max"], unit="ms",
                                       **where)
                               or at_most(f"{q}[{ep}]", st[f"{q}_ms"], th[f"{q}_ms_max"], unit="ms",
                                          **where))
            if "error_rate_max" in th:
                out.append(at_most(f"error-rate[{ep}]", st["error_rate"] if st else None,
                                   th["error_rate_max"], requests=st["requests"] if st else 0, **where))
        load = run.info.get("load") or {}
        errors = load.get("user_errors") or {}
        after = health_after(run)
        duration = load.get("duration_s") or 0.0
        out += [
            # A crash inside the workload code is never a pass.
            at_most("workload-errors", sum(errors.values()) if load else None, 0, errors=errors),
            Check("healthy-after-run", "unknown", None, 0, {"reason": "no health sample after the load"})
            if after is None else
            at_most("healthy-after-run", len(after[2]), 0, unhealthy=after[2]),
            _sampled(run, duration),
        ]
        if load.get("workers"):
            out.append(_workers_complete(load["workers"]))
        ms = [r.response_ms for r in reqs]
        total = len(reqs)
        orders = {"ok": 0, "fail": 0, "info": 0}
        for op in run.history:
            if op.get("f") == "create_order" and op["type"] in orders:
                orders[op["type"]] += 1
        metrics = {
            "requests_total": total, "failures_total": sum(1 for r in reqs if not r.ok),
            "server_errors": sum(1 for r in reqs if r.server_error),
            "throughput_rps": round(total / duration, 2) if duration else None,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "endpoints": endpoint_stats(reqs),
            "orders_ok": orders["ok"], "orders_fail": orders["fail"], "orders_info": orders["info"],
            "locust_requests": load.get("locust_requests"), "duration_s": duration,
            "load_extended_s": load.get("extended_s", 0.0), "users": run.info.get("parameters", {}).get("users"),
        }
        return out, metrics


def _workers_complete(workers: list[dict]) -> Check:
    """A distributed run (`--workers N`): every worker reported after its
    users stopped, and everything it said it sent arrived.  A worker that died
    mid-run took its last samples with it, so the run's figures are partial."""
    bad = {}
    for w in workers:
        why = []
        if not w.get("complete"):
            why.append("never reported after its users stopped (it died or hung mid-run)")
        if w.get("problem"):
            why.append(w["problem"])
        if w.get("lost_requests") or w.get("lost_history"):
            why.append(f"{w.get('lost_requests', 0)} request sample(s) and "
                       f"{w.get('lost_history', 0)} history entries sent but not received")
        if why:
            bad[f"{w.get('id')} (pid {w.get('pid')}, exit {w.get('exit')})"] = "; ".join(why)
    return Check("workers-complete", "fail" if bad else "pass", len(bad), 0,
                 {"workers": len(workers), "incomplete": bad,
                  "requests_by_worker": {w.get("id"): w.get("requests") for w in workers}})
