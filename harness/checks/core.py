"""Checks and verdicts.

A check compares one measured figure with a threshold and returns
`pass`, `fail` or `unknown`.  A run's verdict is the worst of its checks
(fail > unknown > pass), as in Jepsen's checker composition; a checker that
crashes yields `unknown`, never a pass.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

__all__ = ["BUILT_IN", "Check", "worst", "at_most", "at_least", "too_few", "guarded", "keys_of", "results_doc", "exit_code"]

_RANK = {"pass": 0, "unknown": 1, "fail": 2}

# SLO keys with a built-in value, used when neither the SLO file's `defaults`
# nor the scenario's section gives one (a file of your own need not repeat them).
BUILT_IN = {"min_samples_p95": 20, "min_samples_p99": 100, "min_samples_step": 100}


@dataclass
class Check:
    name: str
    verdict: str
    measured: Any
    threshold: Any
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in _RANK:
            raise ValueError(f"verdict {self.verdict!r} is not pass, fail or unknown")

    def to_json(self) -> dict:
        return asdict(self)


def worst(verdicts) -> str:
    verdicts = list(verdicts)
    if not verdicts:
        return "unknown"   # nothing was checked: no pass
    return max(verdicts, key=_RANK.__getitem__)


def at_most(name: str, measured, threshold, **details) -> Check:
    if measured is None:
        return Check(name, "unknown", None, threshold, {"reason": "not measured", **details})
    return Check(name, "pass" if measured <= threshold else "fail", measured, threshold, details)


def at_least(name: str, measured, threshold, **details) -> Check:
    if measured is None:
        return Check(name, "unknown", None, threshold, {"reason": "not measured", **details})
    return Check(name, "pass" if measured >= threshold else "fail", measured, threshold, details)


def too_few(name: str, n: int, need: int, key: str, threshold=None, **details) -> Check | None:
    """`unknown` when a figure rests on fewer than `need` samples (SLO `key`),
    else None: a percentile of a handful of requests is not a measurement."""
    if n >= need:
        return None
    return Check(name, "unknown", None, threshold,
                 {"reason": f"only {n} samples; judging this needs at least {need} ({key})",
                  "samples": n, **details})


def guarded(name: str, fn: Callable[[], Check], threshold=None) -> Check:
    """Run a checker; if it raises, the check is `unknown` with the error."""
    try:
        return fn()
    except Exception as e:  # a crashing checker must never pass
        return Check(name, "unknown", None, threshold,
                     {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]})


def keys_of(groups) -> tuple[str, ...]:
    """The SLO keys a set of check groups needs, each once, in order."""
    return tuple(dict.fromkeys(k for g in groups for k in g.keys))


def results_doc(scenario: str, checks: list[Check], metrics: dict) -> dict:
    return {"scenario": scenario, "verdict": worst(c.verdict for c in checks),
            "checks": [c.to_json() for c in checks], "metrics": metrics}


def exit_code(verdict: str) -> int:
    return {"pass": 0, "fail": 1}.get(verdict, 3)
