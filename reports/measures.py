"""The measures msdb reports, one implementation each.

Checks (harness.checks), the live step judge of a capacity run
(scenarios.shapes) and the report all call these, so a figure printed in a
verdict, a table and a chart is one computation on the same records.

- Percentiles are nearest-rank: every reported percentile is a latency that
  was actually observed (numpy's `inverted_cdf` gives the same).
- A fault window is a fault that was in place: it has a start time and did
  not fail to start.  One filter, everywhere.
- A load step is judged on the requests that *started* inside it, after the
  first `settle_s` seconds (users still arriving).
- The knee is the last step before the first step that broke the SLO; a
  later lucky step does not count.
- Little's law: busy connections L = checkouts per second x mean hold time.

Inputs are plain records (`reports.rundata.Request` tuples, fault records as
dicts), so every measure is unit-tested on made-up data with known answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from harness.utc import epoch

__all__ = ["percentile", "Window", "fault_windows", "overlaps", "endpoint_stats", "window_stats",
           "breach", "step_rows", "knee", "healthy_since", "little", "ALL"]

ALL = "(all)"          # the row of a table that takes every endpoint together
INF = float("inf")


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (exact: an observed value, no interpolation)."""
    v = sorted(values)
    if not v:
        return None
    k = max(1, math.ceil(q / 100.0 * len(v)))
    return v[k - 1]


# -- fault windows ---------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """A fault that was in place, in Unix seconds (`end` is inf while it lasts)."""
    name: str
    kind: str
    target: str
    start: float
    end: float
    status: str
    params: dict

    def contains(self, t: float) -> bool:
        return self.start <= t <= self.end

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "target": self.target, "start": self.start,
                "end": None if self.end == INF else self.end, "status": self.status}


def fault_windows(records: Iterable[dict], targets: Iterable[str] | None = None) -> list[Window]:
    """The windows of faults that were in place (started; not failed or skipped),
    sorted by start; only those on `targets` if given."""
    want = set(targets) if targets is not None else None
    out = []
    for r in records:
        s = epoch(r.get("start"))
        if s is None or r.get("status") in ("failed", "skipped", "pending"):
            continue
        if want is not None and r.get("target") not in want:
            continue
        e = epoch(r.get("end"))
        out.append(Window(r["name"], r["kind"], r["target"], s, INF if e is None else e,
                          r.get("status", ""), dict(r.get("params") or {})))
    return sorted(out, key=lambda w: w.start)


def overlaps(t0: float, t1: float, windows: Sequence[Window]) -> list[Window]:
    """The windows that [t0, t1] touches."""
    return [w for w in windows if t0 <= w.end and t1 >= w.start]


# -- latency and errors ------------------------------------------------------------------

def _stats(reqs: Sequence) -> dict:
    ms = [r.response_ms for r in reqs]
    errors = sum(1 for r in reqs if not r.ok)
    return {"requests": len(reqs), "errors": errors,
            "error_rate": round(errors / len(reqs), 5) if reqs else None,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else None}


def endpoint_stats(requests: Sequence) -> dict[str, dict]:
    """Per endpoint (request name), sorted by name: count, errors, p50/p95/p99/max in ms."""
    by: dict[str, list] = {}
    for r in requests:
        by.setdefault(r.name, []).append(r)
    return {name: _stats(rs) for name, rs in sorted(by.items())}


def window_stats(requests: Sequence, lo: float, hi: float) -> dict:
    """Every endpoint together, over the requests that started in [lo, hi)."""
    win = [r for r in requests if lo <= r.time < hi]
    out = _stats(win)
    out["seconds"] = hi - lo
    out["throughput"] = round(len(win) / (hi - lo), 2) if hi > lo else None
    return out


def breach(stats: dict, *, p99_ms: float, error_rate: float) -> str | None:
    """Why a window broke the SLO, or None.  Errors first: a step that fails
    fast has a low p99, and that must not read as a pass."""
    if not stats["requests"]:
        return None
    if stats["error_rate"] > error_rate:
        return f"error rate {stats['error_rate']:.1%} > {error_rate:.1%}"
    if stats["p99_ms"] > p99_ms:
        return f"p99 {stats['p99_ms']:.1f} ms > {p99_ms:g} ms"
    return None


# -- load steps and the knee -----------------------------------------------------------

def step_rows(requests: Sequence, steps: Sequence[dict], *, settle_s: float, p99_ms: float,
              error_rate: float) -> list[dict]:
    """Per load step and endpoint (and ALL): users, window, throughput,
    percentiles, error rate, and why it broke the SLO (None if it did not)."""
    rows = []
    for st in steps:
        lo, hi = st["start"] + settle_s, st["end"]
        if hi is None or hi <= lo:
            continue
        win = [r for r in requests if lo <= r.time < hi]
        groups = endpoint_stats(win)
        groups[ALL] = _stats(win)
        for name, s in groups.items():
            rows.append({"users": st["users"], "endpoint": name, "start": lo, "end": hi,
                         "seconds": round(hi - lo, 3),
                         "throughput": round(s["requests"] / (hi - lo), 2), **s,
                         "breach": breach(s, p99_ms=p99_ms, error_rate=error_rate)})
    return rows


def knee(rows: Sequence[dict], *, min_requests: int = 0) -> dict[str, dict]:
    """Per endpoint: the last step before its first breach (`knee`, None if the
    first step already broke the SLO) and that breach (None if none did).
    A step with fewer than min_requests requests judges nothing: the search
    stops there, and `undersampled` names that step."""
    out: dict[str, dict] = {}
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["endpoint"], []).append(r)
    for name, rs in by.items():
        best = first = thin = None
        for r in sorted(rs, key=lambda r: r["users"]):
            if min_requests and r.get("requests", 0) < min_requests:
                thin = r
                break
            if r["breach"]:
                first = r
                break
            best = r
        out[name] = {"knee": best, "breach": first, "undersampled": thin}
    return out


# -- health ------------------------------------------------------------------------------

def healthy_since(samples: Sequence[tuple[float, bool]], t: float) -> float | None:
    """Seconds from t to the first all-parts-healthy sample at or after t."""
    for ts, ok in samples:
        if ts >= t and ok:
            return round(ts - t, 2)
    return None


# -- pools -------------------------------------------------------------------------------

def little(*, checkouts: float, usage_ms: float, seconds: float, headroom: float = 1.5) -> dict | None:
    """Little's law over one window of a pool's counters: L = lambda x W.

    checkouts: connections handed out in the window; usage_ms: the time they
    were held, summed; seconds: the window's length."""
    if checkouts <= 0 or seconds <= 0:
        return None
    lam = checkouts / seconds
    hold_ms = usage_ms / checkouts
    busy = lam * hold_ms / 1000.0
    return {"checkouts_per_s": lam, "hold_ms": hold_ms, "busy_connections": busy,
            "recommended_max": max(1, math.ceil(busy * headroom))}
