"""Checks of a finished run, built from what the run recorded.

Inputs are the per-request samples (one tuple per request, as in
requests.csv), the fault journal's final records, the pool samples, and the
parts' health after the run.  Each builder returns `Check`s; none of them
ever passes something it could not measure (`unknown` instead).

Request sample tuple: (time, name, method, status, response_ms, bytes, ok, error)
where `time` is the request's start (Unix seconds).
"""

from __future__ import annotations

import math
from datetime import datetime
from statistics import median

from . import checks as C

__all__ = ["percentile", "endpoint_stats", "load_checks", "fault_checks", "fault_windows",
           "step_breach", "capacity_checks", "neighbour_checks", "saga_checks", "NEIGHBOUR_KEYS",
           "SAGA_KEYS", "SLO_KEYS", "LOAD_KEYS", "FAULT_KEYS", "LATENCY_KEYS",
           "CAPACITY_KEYS"]

T, NAME, METHOD, STATUS, MS, BYTES, OK, ERROR = range(8)

SLO_KEYS = {"error_rate_max": float, "server_errors_max": int, "p95_ms_max": float,
            "healthy_after_s": float, "recovery_s": float, "heal_grace_s": float,
            "errors_after_heal_max": int, "fault_error_rate_max": float,
            "internal_errors_max": int, "latency_observed_min_ratio": float,
            "latency_observed_max_ratio": float, "p99_ms_max": float, "knee_min_rps": float,
            # seed §7.2 and §9.1: recovery objectives and lag, for the drill and lag scenarios
            "rpo_seconds_max": float, "rto_seconds_max": float, "replica_lag_ms_max": float,
            "cdc_lag_p99_ms_max": float, "neighbour_p95_ratio_max": float, "min_sagas": int,
            "replica_caught_up_ms": float, "replica_catch_up_s_max": float,
            "replica_lag_effect_min_ratio": float, "stale_reads_ryw_max": int,
            "cdc_catch_up_s_max": float, "cdc_quiesce_s": float, "cdc_mismatches_max": int}
LOAD_KEYS = ("error_rate_max", "server_errors_max", "p95_ms_max", "healthy_after_s")
FAULT_KEYS = ("recovery_s", "heal_grace_s", "errors_after_heal_max", "fault_error_rate_max",
              "internal_errors_max")
LATENCY_KEYS = ("latency_observed_min_ratio", "latency_observed_max_ratio")
CAPACITY_KEYS = ("p99_ms_max", "error_rate_max", "knee_min_rps", "healthy_after_s")
NEIGHBOUR_KEYS = ("healthy_after_s", "neighbour_p95_ratio_max")
PROBE = "users GET /users/{id}"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (exact, no interpolation)."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[k - 1]


def _server_error(s) -> bool:
    return s[STATUS] == 0 or s[STATUS] >= 500


def endpoint_stats(samples: list) -> dict:
    by_name: dict[str, list[float]] = {}
    for s in samples:
        by_name.setdefault(s[NAME], []).append(s[MS])
    out = {}
    for name, vals in sorted(by_name.items()):
        vals.sort()
        out[name] = {"count": len(vals), "p50_ms": percentile(vals, 50), "p95_ms": percentile(vals, 95),
                     "p99_ms": percentile(vals, 99), "max_ms": vals[-1]}
    return out


def _sampled(scrapes: dict, failures: dict, duration_s: float, down_s: dict) -> C.Check:
    """Every service's /metrics was scraped for at least half of the time it was up."""
    if not scrapes:
        return C.at_least("metrics-sampled", 0, 1)
    need = {s: max(1, int((duration_s - down_s.get(s, 0.0)) * 0.5)) for s in scrapes}
    worst = min(scrapes, key=lambda s: scrapes[s] / need[s])
    return C.at_least("metrics-sampled", scrapes[worst], need[worst], service=worst,
                      scrapes=dict(scrapes), failures=dict(failures),
                      stopped_by_faults_s={k: round(v, 1) for k, v in down_s.items()})


def load_checks(*, samples: list, duration_s: float, slo: dict, scrapes: dict, scrape_failures: dict,
                health_after: list, workload_errors: dict, strict_errors: bool = True,
                down_s: dict | None = None) -> list[C.Check]:
    """Checks of a run without faults (or of the whole run, `strict_errors` off under faults).
    `down_s`: seconds a fault kept a service stopped (it cannot be scraped then)."""
    total = len(samples)
    failures = sum(1 for s in samples if not s[OK])
    server_errors = sum(1 for s in samples if _server_error(s))
    endpoints = endpoint_stats(samples)
    worst_ep = max(endpoints, key=lambda k: endpoints[k]["p95_ms"]) if endpoints else None
    unhealthy = [p for p in health_after if not p["healthy"]]
    out = [C.at_least("requests-made", total, 1)]
    if strict_errors:
        out += [
            C.at_most("no-server-errors", server_errors if total else None, slo["server_errors_max"],
                      by_endpoint={n: sum(1 for s in samples if s[NAME] == n and _server_error(s))
                                   for n in endpoints}),
            C.at_most("error-rate", round(failures / total, 5) if total else None,
                      slo["error_rate_max"], failures=failures, requests=total),
            C.at_most("p95-latency", endpoints[worst_ep]["p95_ms"] if worst_ep else None,
                      slo["p95_ms_max"], worst_endpoint=worst_ep, unit="ms", endpoints=endpoints),
        ]
    else:
        out.append(C.Check("endpoint-latencies", "pass" if total else "unknown", len(endpoints), None,
                           {"endpoints": endpoints, "note": "latencies are reported here and judged by the scenario's own checks"}))
    for ep, th in sorted((slo.get("endpoints") or {}).items()):
        st = endpoints.get(ep)
        if "p95_ms_max" in th:
            out.append(C.at_most(f"p95[{ep}]", st["p95_ms"] if st else None, th["p95_ms_max"], unit="ms"))
        if "p99_ms_max" in th:
            out.append(C.at_most(f"p99[{ep}]", st["p99_ms"] if st else None, th["p99_ms_max"], unit="ms"))
        if "error_rate_max" in th:
            n = [s for s in samples if s[NAME] == ep]
            out.append(C.at_most(f"error-rate[{ep}]",
                                 round(sum(1 for s in n if not s[OK]) / len(n), 5) if n else None,
                                 th["error_rate_max"], requests=len(n)))
    out += [
        # A crash inside the workload code is never a pass.
        C.at_most("workload-errors", sum(workload_errors.values()), 0, errors=workload_errors),
        C.at_most("healthy-after-run", len(unhealthy), 0,
                  unhealthy={p["name"]: p["detail"] for p in unhealthy}),
        _sampled(scrapes, scrape_failures, duration_s, down_s or {}),
    ]
    return out


def _epoch(utc: str | None) -> float | None:
    if not utc:
        return None
    return datetime.fromisoformat(utc.replace("Z", "+00:00")).timestamp()


def fault_windows(records: list[dict]) -> list[tuple[float, float, dict]]:
    """(start, end, record) in Unix seconds for every fault that was in place."""
    out = []
    for r in records:
        s, e = _epoch(r.get("start")), _epoch(r.get("end"))
        if s is not None and r.get("status") in ("healed", "heal-failed", "active"):
            out.append((s, e if e is not None else float("inf"), r))
    return out


def fault_checks(*, samples: list, records: list[dict], expected: int, slo: dict,
                 recovery_s: float | None, pools_after: dict, pool_min,
                 effect: dict | None) -> tuple[list[C.Check], dict]:
    """Checks of a run with faults: injected and healed, clean errors, recovery, effect seen."""
    windows = fault_windows(records)
    healed = [r for r in records if r.get("status") == "healed"]
    not_healed = [r["name"] for r in records if r.get("status") in ("heal-failed", "active")]
    failed = {r["name"]: r.get("error") for r in records if r.get("status") in ("failed", "skipped")}
    out = [
        C.Check("faults-injected", "pass" if len(healed) == expected and not failed else "fail",
                len(healed), expected, {"not_injected": failed}),
        C.at_most("faults-healed", len(not_healed), 0, not_healed=not_healed),
    ]
    in_window = lambda t: any(s <= t <= e for s, e, _ in windows)  # noqa: E731
    first_start = min((s for s, _, _ in windows), default=None)
    last_end = max((e for _, e, _ in windows), default=None)
    during = [s for s in samples if in_window(s[T])]
    before = [s for s in samples if first_start is not None and s[T] < first_start]
    grace = slo["heal_grace_s"]
    after = [s for s in samples if last_end is not None and s[T] > last_end + grace]
    internal = [s for s in samples if s[STATUS] == 500]
    out.append(C.at_most("no-internal-errors", len(internal) if samples else None,
                         slo["internal_errors_max"],
                         examples=[f"{s[NAME]} at {s[T]}" for s in internal[:10]],
                         note="faults must surface as clean 4xx/503s, never a 500"))
    fails_during = sum(1 for s in during if not s[OK])
    out.append(C.at_most("error-rate-during-fault",
                         round(fails_during / len(during), 4) if during else None,
                         slo["fault_error_rate_max"], failures=fails_during, requests=len(during)))
    errs_after = [s for s in after if not s[OK]]
    out.append(C.at_most("no-errors-after-heal", len(errs_after) if after else None,
                         slo["errors_after_heal_max"], requests_after=len(after), grace_s=grace,
                         examples=[f"{s[NAME]} HTTP {s[STATUS]} {s[ERROR]}" for s in errs_after[:10]]))
    out.append(C.at_most("healthy-again-after-heal", recovery_s, slo["recovery_s"], unit="s"))
    mins = pool_min if isinstance(pool_min, dict) else {}
    floor = lambda svc: mins.get(svc, mins.get("*", pool_min if isinstance(pool_min, int) else 0))  # noqa: E731
    low = {f"{svc}/{pool}": v for (svc, pool), v in pools_after.items() if v < floor(svc)}
    out.append(C.Check("pools-recovered", "unknown" if not pools_after else ("pass" if not low else "fail"),
                       len(low) if pools_after else None, 0,
                       {"pool_size_after": {f"{s}/{p}": v for (s, p), v in pools_after.items()},
                        "below_min": low, "pool_min": pool_min}))
    metrics = {"fault_windows": [{"name": r["name"], "kind": r["kind"], "target": r["target"],
                                  "start": r.get("start"), "end": r.get("end")} for _, _, r in windows],
               "requests_during_faults": len(during), "failures_during_faults": fails_during,
               "requests_after_heal": len(after), "failures_after_heal": len(errs_after)}
    if effect:
        out.append(_effect_check(effect, before, during, slo, windows=windows, samples=samples))
    return out, metrics


def _effect_check(effect: dict, before: list, during: list, slo: dict, *,
                  windows: list = (), samples: list = ()) -> C.Check:
    """The fault was really felt where it was injected (a calibration of the whole chain)."""
    ep = effect["endpoint"]
    b = [s[MS] for s in before if s[NAME] == ep and s[OK]]
    d_all = [s for s in during if s[NAME] == ep]
    if effect["kind"] == "latency":
        d = [s[MS] for s in d_all if s[OK]]
        if len(b) < 5 or len(d) < 5:
            return C.Check("injected-latency-observed", "unknown", None, effect["ms"],
                           {"endpoint": ep, "reason": f"too few samples ({len(b)} before, {len(d)} during)"})
        added = median(d) - median(b)
        lo, hi = effect["ms"] * slo["latency_observed_min_ratio"], effect["ms"] * slo["latency_observed_max_ratio"]
        return C.Check("injected-latency-observed", "pass" if lo <= added <= hi else "fail",
                       round(added, 2), effect["ms"],
                       {"endpoint": ep, "median_before_ms": round(median(b), 3),
                        "median_during_ms": round(median(d), 3), "accepted_ms": [lo, hi],
                        "samples_before": len(b), "samples_during": len(d)})
    if effect["kind"] == "acquire-timeouts":
        # Failed requests on the endpoint: clean 503s, after about the acquire timeout.
        failed = [s for s in d_all if not s[OK]]
        not_503 = [s for s in failed if s[STATUS] != 503]
        if not failed:
            return C.Check("pool-timeouts-clean", "fail" if d_all else "unknown", 0, effect["acquire_ms"],
                           {"endpoint": ep, "reason": "no request timed out waiting for the pool"})
        med = median(s[MS] for s in failed if s[STATUS] == 503) if len(not_503) < len(failed) else None
        lo, hi = effect["acquire_ms"] * 0.9, effect["acquire_ms"] * 2.0
        ok = not not_503 and med is not None and lo <= med <= hi
        return C.Check("pool-timeouts-clean", "pass" if ok else "fail",
                       None if med is None else round(med, 1), effect["acquire_ms"],
                       {"endpoint": ep, "timeouts": len(failed), "not_503": len(not_503),
                        "examples_not_503": [f"HTTP {s[STATUS]} {s[ERROR]}" for s in not_503[:5]],
                        "accepted_ms": [lo, hi],
                        "meaning": "median latency of the 503s vs the configured pool.acquire"})
    if effect["kind"] == "slower":
        d = [s[MS] for s in d_all if s[OK]]
        if len(b) < 5 or len(d) < 5:
            return C.Check("fault-slowed-requests", "unknown", None, effect["ms"],
                           {"endpoint": ep, "reason": f"too few samples ({len(b)} before, {len(d)} during)"})
        added = median(d) - median(b)
        return C.Check("fault-slowed-requests", "pass" if added >= effect["ms"] else "fail",
                       round(added, 2), effect["ms"],
                       {"endpoint": ep, "median_before_ms": round(median(b), 3),
                        "median_during_ms": round(median(d), 3)})
    # kind == "errors": the fault made some of these requests fail (or be
    # refused), or held them for the whole fault.  Requests in flight when the
    # fault began count too: with a kill, every client may be stuck in a
    # request that started before it, so none starts inside the window.
    touching, held = [], 0
    for s in samples:
        if s[NAME] != ep:
            continue
        t0, t1 = s[T], s[T] + s[MS] / 1000.0
        hit = [(ws, we) for ws, we, _ in windows if t0 <= we and t1 >= ws]
        if hit:
            touching.append(s)
            held += s[OK] and any(t0 <= ws and t1 >= we for ws, we in hit)
    failed = sum(1 for s in touching if not s[OK])
    felt = failed + held
    return C.Check("fault-had-effect", "pass" if felt >= effect.get("min", 1) else
                   ("unknown" if not touching else "fail"), felt, effect.get("min", 1),
                   {"endpoint": ep, "requests_during": len(touching), "failed": failed,
                    "held_through_fault": held,
                    "meaning": "requests in flight during the fault that failed, or that were "
                               "held for the whole fault"})


def step_breach(samples: list, step: dict, *, settle_s: float, p99_ms: float,
                error_rate: float) -> str | None:
    """Why a load step broke the SLO (all endpoints together), or None."""
    lo, hi = step["start"] + settle_s, step["end"]
    win = [s for s in samples if lo <= s[T] < hi]
    if not win:
        return None
    errors = sum(1 for s in win if not s[OK])
    if errors / len(win) > error_rate:
        return f"error rate {errors / len(win):.1%} > {error_rate:.1%}"
    p99 = percentile(sorted(s[MS] for s in win), 99)
    if p99 > p99_ms:
        return f"p99 {p99:.0f} ms > {p99_ms:g} ms"
    return None


def capacity_checks(*, samples: list, steps: list[dict], settle_s: float, slo: dict) -> tuple[list[C.Check], dict]:
    """The knee (all endpoints): the last step before the first breach."""
    rows = []
    knee = None
    for st in steps:
        lo, hi = st["start"] + settle_s, st["end"]
        win = [s for s in samples if lo <= s[T] < hi]
        if hi <= lo or not win:
            continue
        ms = sorted(s[MS] for s in win)
        rows.append({"users": st["users"], "throughput": round(len(win) / (hi - lo), 2),
                     "p99_ms": percentile(ms, 99),
                     "error_rate": round(sum(1 for s in win if not s[OK]) / len(win), 4),
                     "breach": st.get("breach")})
        if st.get("breach"):
            break
        knee = rows[-1]
    crashed = [st["breach"] for st in steps if st.get("judge_error")]
    checks = [
        C.Check("load-stepped", "unknown" if crashed or not rows else "pass", len(rows), None,
                {"steps": rows, **({"error": crashed[0]} if crashed else {})}),
        C.at_least("knee-throughput", knee["throughput"] if knee else (0.0 if rows else None),
                   slo["knee_min_rps"], unit="req/s", knee=knee,
                   first_breach=next((r for r in rows if r["breach"]), None)),
    ]
    metrics = {"knee_rps": knee["throughput"] if knee else None,
               "knee_users": knee["users"] if knee else None,
               "knee_p99_ms": knee["p99_ms"] if knee else None, "steps": rows}
    return checks, metrics


def neighbour_checks(*, samples: list, phases: list[dict], slo: dict) -> tuple[list[C.Check], dict]:
    """The users service's p95 alone and beside the noisy neighbours."""
    def window(name):
        ph = next((p for p in phases if p["phase"] == name and p.get("end")), None)
        if ph is None:
            return [], None, 0.0
        rows = [s for s in samples if ph["start"] <= s[T] < ph["end"]]
        return rows, ph, ph["end"] - ph["start"]
    base, _, _ = window("baseline")
    noisy, _, noisy_s = window("noisy")
    b = sorted(s[MS] for s in base if s[NAME] == PROBE and s[OK])
    n = sorted(s[MS] for s in noisy if s[NAME] == PROBE and s[OK])
    orders = [s for s in noisy if s[NAME] == "orders POST /orders"]
    metrics = {"baseline_p95_ms": percentile(b, 95), "noisy_p95_ms": percentile(n, 95),
               "baseline_p50_ms": percentile(b, 50), "noisy_p50_ms": percentile(n, 50),
               "probe_requests": [len(b), len(n)],
               "neighbour_orders_per_s": round(len(orders) / noisy_s, 1) if noisy_s else None}
    if len(b) < 20 or len(n) < 20:
        return [C.Check("neighbour-p95-ratio", "unknown", None, slo["neighbour_p95_ratio_max"],
                        {"reason": f"too few probe samples ({len(b)} alone, {len(n)} with neighbours)"})], metrics
    ratio = round(metrics["noisy_p95_ms"] / metrics["baseline_p95_ms"], 2)
    metrics["p95_ratio"] = ratio
    return [C.at_most("neighbour-p95-ratio", ratio, slo["neighbour_p95_ratio_max"], endpoint=PROBE,
                      baseline_p95_ms=metrics["baseline_p95_ms"], noisy_p95_ms=metrics["noisy_p95_ms"],
                      neighbour_orders_per_s=metrics["neighbour_orders_per_s"])], metrics


SAGA_KEYS = FAULT_KEYS + ("healthy_after_s", "min_sagas")


def saga_checks(*, history: list[dict], final: dict | None, slo: dict,
                quiescence_error: str | None) -> tuple[list[C.Check], dict]:
    """The saga checker's invariants as checks; a crash or a missing state is unknown."""
    from scenarios.saga_checker import INVARIANTS, check
    if final is None:
        reason = quiescence_error or "the final state could not be read"
        return [C.Check(n, "unknown", None, 0, {"reason": reason}) for n in INVARIANTS], {}
    try:
        results = check(history, final)
    except Exception as e:  # a crashing checker must never pass
        return [C.Check(n, "unknown", None, 0, {"error": f"{type(e).__name__}: {e}"})
                for n in INVARIANTS], {}
    checks = [C.Check(r["name"], r["verdict"], r["measured"], r["threshold"], r["details"])
              for r in results]
    states: dict[str, int] = {}
    for s in final["sagas"]:
        states[s["state"]] = states.get(s["state"], 0) + 1
    kinds: dict[str, int] = {}
    for op in history:
        if op.get("f") == "create_order" and op["type"] != "invoke":
            kinds[op["type"]] = kinds.get(op["type"], 0) + 1
    total = len(final["sagas"])
    checks.append(C.at_least("enough-sagas", total, slo["min_sagas"], by_state=states))
    metrics = {"sagas_total": total, "sagas_completed": states.get("COMPLETED", 0),
               "sagas_compensated": states.get("COMPENSATED", 0), "sagas_failed": states.get("FAILED", 0),
               "sagas_by_state": states, "client_ok": kinds.get("ok", 0),
               "client_fail": kinds.get("fail", 0), "client_info": kinds.get("info", 0),
               "orders_confirmed": sum(1 for o in final["orders"] if o["status"] == "CONFIRMED"),
               "orders_cancelled": sum(1 for o in final["orders"] if o["status"] == "CANCELLED")}
    return checks, metrics
