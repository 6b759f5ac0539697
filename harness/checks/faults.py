"""Checks of a run with faults: every fault injected and healed, faults seen
as clean errors (never a 500), errors during and after, recovery, pools
back to their minimum, and the fault's effect seen where it was injected
(`Latency`, `Slower`, `AcquireTimeouts`, `Errors`: a calibration of the
whole chain from the proxy to the client)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from statistics import median

from reports.measures import Window, fault_windows, healthy_since, overlaps
from reports.rundata import Run

from chaos.faults import ScheduleError, parse_schedule

from ..errors import ConfigError
from .core import Check, at_most

__all__ = ["check_schedule", "MIN_AFTER_HEAL_S", "FaultChecks", "Latency", "Slower", "AcquireTimeouts", "Errors", "FAULT_KEYS",
           "pools_after", "pool_min"]

FAULT_KEYS = ("healthy_after_s", "recovery_s", "heal_grace_s", "errors_after_heal_max",
              "fault_error_rate_max", "internal_errors_max")


MIN_SAMPLES = 5     # successful requests before and during, for a median to mean something


def _added_median(name: str, run: Run, endpoint: str, windows: list[Window], threshold: float,
                  accept) -> Check:
    """A check of the median latency the fault added to the endpoint's
    successful requests; `accept(added_ms)` -> (verdict, details)."""
    b, d = _ok_ms(run, endpoint, windows)
    if len(b) < MIN_SAMPLES or len(d) < MIN_SAMPLES:
        return Check(name, "unknown", None, threshold,
                     {"endpoint": endpoint, "reason": f"too few samples ({len(b)} before, {len(d)} during)"})
    added = median(d) - median(b)
    verdict, details = accept(added)
    return Check(name, verdict, round(added, 2), threshold,
                 {"endpoint": endpoint, "median_before_ms": round(median(b), 3),
                  "median_during_ms": round(median(d), 3), "samples_before": len(b),
                  "samples_during": len(d), **details})


@dataclass(frozen=True)
class Latency:
    """The endpoint's median grows by about `ms` (within the SLO's ratios)."""
    endpoint: str
    ms: float
    keys = ("latency_observed_min_ratio", "latency_observed_max_ratio")

    def check(self, run: Run, windows: list[Window], slo: dict) -> Check:
        lo = self.ms * slo["latency_observed_min_ratio"]
        hi = self.ms * slo["latency_observed_max_ratio"]
        return _added_median("injected-latency-observed", run, self.endpoint, windows, self.ms,
                             lambda added: ("pass" if lo <= added <= hi else "fail",
                                            {"accepted_ms": [lo, hi]}))


@dataclass(frozen=True)
class Slower:
    """The endpoint's median grows by at least `ms`."""
    endpoint: str
    ms: float
    keys = ()

    def check(self, run: Run, windows: list[Window], slo: dict) -> Check:
        return _added_median("fault-slowed-requests", run, self.endpoint, windows, self.ms,
                             lambda added: ("pass" if added >= self.ms else "fail", {}))


@dataclass(frozen=True)
class AcquireTimeouts:
    """Requests that waited for an exhausted pool fail as clean 503s after about
    the pool's acquire timeout."""
    endpoint: str
    acquire_ms: float
    keys = ()

    def check(self, run: Run, windows: list[Window], slo: dict) -> Check:
        d_all = [r for r in run.requests if r.name == self.endpoint
                 and any(w.contains(r.time) for w in windows)]
        failed = [r for r in d_all if not r.ok]
        not_503 = [r for r in failed if r.status != 503]
        if not failed:
            return Check("pool-timeouts-clean", "fail" if d_all else "unknown", 0, self.acquire_ms,
                         {"endpoint": self.endpoint, "reason": "no request timed out waiting for the pool"})
        med = median(r.response_ms for r in failed if r.status == 503) if len(not_503) < len(failed) else None
        lo, hi = self.acquire_ms * 0.9, self.acquire_ms * 2.0
        ok = not not_503 and med is not None and lo <= med <= hi
        return Check("pool-timeouts-clean", "pass" if ok else "fail",
                     None if med is None else round(med, 1), self.acquire_ms,
                     {"endpoint": self.endpoint, "timeouts": len(failed), "not_503": len(not_503),
                      "examples_not_503": [f"HTTP {r.status} {r.error}" for r in not_503[:5]],
                      "accepted_ms": [lo, hi],
                      "meaning": "median latency of the 503s vs the configured pool.acquire"})


@dataclass(frozen=True)
class Errors:
    """The fault made requests on the endpoint fail, or held them until it was
    healed (in flight at the heal, after waiting out at least half of the
    fault).  Requests in flight when the fault began count too: with a kill,
    every client may be stuck in a request that started before it, so none
    starts inside the window.

    `instance_wide`: the fault takes a PostgreSQL instance down, so requests to
    every service whose database it holds (run.json's stack placement) feel
    it, not only the endpoint's: which endpoint a client happens to be in when
    the instance dies is chance."""
    endpoint: str
    min: int = 1
    instance_wide: bool = False
    keys = ()

    def _endpoints(self, run: Run, windows: list[Window]) -> Callable[[str], bool]:
        if not self.instance_wide:
            return lambda name: name == self.endpoint
        placement = (run.info.get("stack") or {}).get("databases") or {}
        hit = {w.target for w in windows}
        services = {svc for svc, inst in placement.items() if inst in hit}
        return lambda name: name == self.endpoint or name.split(" ", 1)[0] in services

    def check(self, run: Run, windows: list[Window], slo: dict) -> Check:
        wanted = self._endpoints(run, windows)
        touching, held = [], 0
        for r in run.requests:
            if not wanted(r.name):
                continue
            t0, t1 = r.time, r.time + r.response_ms / 1000.0
            hit = overlaps(t0, t1, windows)
            if hit:
                touching.append(r)
                held += r.ok and any(t1 >= w.end and t1 - max(t0, w.start) >= 0.5 * (w.end - w.start)
                                     for w in hit)
        failed = sum(1 for r in touching if not r.ok)
        felt = failed + held
        return Check("fault-had-effect", "pass" if felt >= self.min else
                     ("unknown" if not touching else "fail"), felt, self.min,
                     {"endpoint": self.endpoint, "requests_during": len(touching), "failed": failed,
                      "held_through_fault": held,
                      **({"endpoints": sorted({r.name for r in touching})} if self.instance_wide else {}),
                      "meaning": "requests in flight during the fault that failed, or that were "
                                 "held until the heal after waiting out at least half of it"})


def _ok_ms(run: Run, endpoint: str, windows: list[Window]) -> tuple[list[float], list[float]]:
    """Successful latencies on the endpoint before the first fault and during any."""
    first = min((w.start for w in windows), default=None)
    before = [r.response_ms for r in run.requests
              if r.name == endpoint and r.ok and first is not None and r.time < first]
    during = [r.response_ms for r in run.requests
              if r.name == endpoint and r.ok and any(w.contains(r.time) for w in windows)]
    return before, during


def pools_after(run: Run) -> dict[str, float]:
    """Each pool's last sampled size: `service/pool` -> connections."""
    out: dict[str, float] = {}
    for r in run.metric_rows:
        if r["metric"] == "psycopg_pool_pool_size":
            pool = dict(kv.split("=", 1) for kv in r["labels"].split(";") if "=" in kv).get("pool", "")
            out[f"{r['service']}/{pool}"] = float(r["value"])
    return out


def pool_min(run: Run) -> dict[str, int]:
    """The configured pool minimum per service (`*` for the default)."""
    stack = run.info.get("stack") or {}
    mins = {"*": int((stack.get("pool") or {}).get("min", 0))}
    for svc, env in (run.info.get("overrides") or {}).items():
        if "DB_POOL_MIN" in env:
            mins[svc] = int(env["DB_POOL_MIN"])
    return mins


@dataclass(frozen=True)
class FaultChecks:
    effect: Latency | Slower | AcquireTimeouts | Errors | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return FAULT_KEYS + (self.effect.keys if self.effect else ())

    def __call__(self, run: Run, slo: dict) -> tuple[list[Check], dict]:
        records = run.faults
        expected = len(run.schedule)
        windows = fault_windows(records)
        healed = [r for r in records if r.get("status") == "healed"]
        not_healed = [r["name"] for r in records if r.get("status") in ("heal-failed", "active")]
        failed = {r["name"]: r.get("error") for r in records if r.get("status") in ("failed", "skipped")}
        out = [
            Check("faults-injected", "pass" if len(healed) == expected and not failed else "fail",
                  len(healed), expected, {"not_injected": failed}),
            at_most("faults-healed", len(not_healed), 0, not_healed=not_healed),
        ]
        reqs = run.requests
        last_end = max((w.end for w in windows), default=None)
        during = [r for r in reqs if any(w.contains(r.time) for w in windows)]
        grace = slo["heal_grace_s"]
        after = [r for r in reqs if last_end is not None and r.time > last_end + grace]
        internal = [r for r in reqs if r.status == 500]
        out.append(at_most("no-internal-errors", len(internal) if reqs else None,
                           slo["internal_errors_max"],
                           examples=[f"{r.name} at {r.time}" for r in internal[:10]],
                           note="faults must surface as clean 4xx/503s, never a 500"))
        fails_during = sum(1 for r in during if not r.ok)
        out.append(at_most("error-rate-during-fault",
                           round(fails_during / len(during), 4) if during else None,
                           slo["fault_error_rate_max"], failures=fails_during, requests=len(during)))
        errs_after = [r for r in after if not r.ok]
        out.append(at_most("no-errors-after-heal", len(errs_after) if after else None,
                           slo["errors_after_heal_max"], requests_after=len(after), grace_s=grace,
                           examples=[f"{r.name} HTTP {r.status} {r.error}" for r in errs_after[:10]]))
        recovery = healthy_since([(t, ok) for t, ok, _ in run.health_samples], last_end) \
            if last_end is not None and last_end != float("inf") else None
        out.append(at_most("healthy-again-after-heal", recovery, slo["recovery_s"], unit="s"))
        sizes, mins = pools_after(run), pool_min(run)
        low = {k: v for k, v in sizes.items() if v < mins.get(k.split("/")[0], mins["*"])}
        out.append(Check("pools-recovered", "unknown" if not sizes else ("pass" if not low else "fail"),
                         len(low) if sizes else None, 0,
                         {"pool_size_after": sizes, "below_min": low, "pool_min": mins}))
        nemesis = (run.info.get("children") or {}).get("nemesis")
        if nemesis not in (0, None):
            out.append(Check("nemesis-exited-cleanly", "fail", nemesis, 0, {"log": "nemesis.log"}))
        if self.effect is not None:
            out.append(self.effect.check(run, windows, slo))
        metrics = {"fault_windows": [{"name": w.name, "kind": w.kind, "target": w.target,
                                      "start": r.get("start"), "end": r.get("end")}
                                     for w in windows for r in records if r["name"] == w.name],
                   "requests_during_faults": len(during), "failures_during_faults": fails_during,
                   "requests_after_heal": len(after), "failures_after_heal": len(errs_after),
                   "recovery_s": recovery}
        return out, metrics


MIN_AFTER_HEAL_S = 2.0


def check_schedule(raw: list, duration_s: float, slo: dict, where: str) -> list:
    """Before any stack starts: the schedule parses (its targets are checked
    against the stack later), and its last heal plus the heal grace leaves
    room in the run for `no-errors-after-heal` to measure something."""
    try:
        specs = parse_schedule(raw, duration_s=duration_s)
    except ScheduleError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not specs or "heal_grace_s" not in slo:
        return specs
    grace = slo["heal_grace_s"]

    def room(d: float) -> float:
        return d - max(f.at_s + f.for_s for f in parse_schedule(raw, duration_s=d)) - grace
    if room(duration_s) >= MIN_AFTER_HEAL_S:
        return specs
    need = next((d for d in range(int(duration_s) + 1, int(duration_s) * 10 + 600)
                 if room(d) >= MIN_AFTER_HEAL_S), None)
    last = max(f.at_s + f.for_s for f in specs)
    raise ConfigError(
        f"{where}: the last fault heals at {last:g} s and the heal grace is {grace:g} s, which "
        f"leaves {max(room(duration_s), 0):g} s of the {duration_s:g} s run to check that errors "
        f"stopped (no-errors-after-heal needs {MIN_AFTER_HEAL_S:g} s)"
        + (f"; give --duration {need}s or more" if need else "; shorten the faults"))
