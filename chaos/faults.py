"""Faults as data, and the journal of what actually happened.

A schedule is a list of faults, each `what`, `where`, `at` and `for`:

    - {kind: latency, target: orders-db, at: 30s, for: 60s, latency: 200, jitter: 50}
    - {kind: down,    target: catalog-db, at: 25%, for: 20s}
    - {kind: kill,    target: pg-main,    at: 40s, for: 5s}      # kill -9, restart after 5 s

`at` and `for` are seconds (`30s`, `1.5min`, `500ms`, `12`) or a share of
the run's duration (`25%`).  Network kinds are Toxiproxy toxic types plus
`down` (proxy disabled); `target` is a proxy name.  Process kinds act on a
stack part (`pg-main`, `redis`, `orders`, ...):

    kill     SIGKILL, then start the part again after `for`
    pause    SIGSTOP for `for`, then SIGCONT
    stop     a clean stop (SIGTERM / fast shutdown) for `for`, then start again

Every fault is a `Fault` pair of operations (start/stop) and leaves a
`FaultRecord` in `faults.jsonl`: name, kind, target, parameters, the
scheduled and the actual UTC start and end, and how it ended.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.utc import utc_now

from .toxics import TOXIC_TYPES

__all__ = ["FaultSpec", "FaultRecord", "Journal", "ScheduleError", "parse_schedule",
           "NETWORK_KINDS", "PROCESS_KINDS", "utc_now"]

NETWORK_KINDS = tuple(k for k in TOXIC_TYPES if k != "noop") + ("down",)
PROCESS_KINDS = ("kill", "pause", "stop")
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|%)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_TOXIC_KEYS = ("stream", "toxicity")


class ScheduleError(ValueError):
    """A fault schedule is wrong; the message names the fault and the field."""


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    name: str
    kind: str
    target: str
    at_s: float
    for_s: float
    params: dict = field(default_factory=dict)   # toxic attributes, stream, toxicity

    @property
    def network(self) -> bool:
        return self.kind in NETWORK_KINDS

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FaultRecord:
    name: str
    kind: str
    target: str
    params: dict
    scheduled_at_s: float
    scheduled_for_s: float
    start: str | None = None        # UTC, when the fault was actually in place
    end: str | None = None          # UTC, when it was actually healed
    status: str = "pending"         # active | healed | failed | heal-failed
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _seconds(value: Any, where: str, duration_s: float | None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ScheduleError(f"{where}: must be >= 0, got {value}")
        return float(value)
    m = _TIME.match(str(value))
    if not m:
        raise ScheduleError(f"{where}: {value!r} is not a time (30s, 1.5min, 500ms) or a share (25%)")
    n, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        if duration_s is None:
            raise ScheduleError(f"{where}: {value!r} needs the run's duration")
        return n / 100.0 * duration_s
    return n * _UNITS[unit]


def parse_schedule(items: Any, *, duration_s: float | None = None,
                   proxies: set[str] | None = None, parts: set[str] | None = None) -> list[FaultSpec]:
    """Validate a schedule; errors name the fault (by position) and the field."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise ScheduleError(f"faults: expected a list, got {type(items).__name__}")
    out: list[FaultSpec] = []
    names: set[str] = set()
    for i, item in enumerate(items, start=1):
        where = f"faults[{i}]"
        if not isinstance(item, dict):
            raise ScheduleError(f"{where}: expected a mapping, got {type(item).__name__}")
        kind = item.get("kind")
        if kind not in NETWORK_KINDS + PROCESS_KINDS:
            raise ScheduleError(f"{where}.kind: {kind!r} is not one of "
                                f"{', '.join(NETWORK_KINDS + PROCESS_KINDS)}")
        target = item.get("target")
        if not isinstance(target, str) or not target:
            raise ScheduleError(f"{where}.target: missing")
        if kind in NETWORK_KINDS and proxies is not None and target not in proxies:
            raise ScheduleError(f"{where}.target: no proxy named {target!r} "
                                f"(proxies: {', '.join(sorted(proxies))})")
        if kind in PROCESS_KINDS and parts is not None and target not in parts:
            raise ScheduleError(f"{where}.target: no part named {target!r} "
                                f"(parts: {', '.join(sorted(parts))})")
        if "at" not in item:
            raise ScheduleError(f"{where}.at: missing")
        if "for" not in item:
            raise ScheduleError(f"{where}.for: missing")
        at_s = _seconds(item["at"], f"{where}.at", duration_s)
        for_s = _seconds(item["for"], f"{where}.for", duration_s)
        allowed = ("kind", "target", "at", "for", "name")
        params: dict = {}
        if kind in TOXIC_TYPES:
            attrs = TOXIC_TYPES[kind]
            allowed += attrs + _TOXIC_KEYS
            for a in attrs:
                if a in item:
                    v = item[a]
                    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                        raise ScheduleError(f"{where}.{a}: expected an integer >= 0, got {v!r}")
                    params[a] = v
            stream = item.get("stream", "downstream")
            if stream not in ("upstream", "downstream"):
                raise ScheduleError(f"{where}.stream: {stream!r} is not upstream or downstream")
            tox = item.get("toxicity", 1.0)
            if isinstance(tox, bool) or not isinstance(tox, (int, float)) or not 0 <= tox <= 1:
                raise ScheduleError(f"{where}.toxicity: expected a number in 0..1, got {tox!r}")
            params["stream"], params["toxicity"] = stream, float(tox)
        for k in item:
            if k not in allowed:
                raise ScheduleError(f"{where}.{k}: unknown field for a {kind} fault "
                                    f"(allowed: {', '.join(allowed)})")
        name = item.get("name") or f"{kind}-{target}-{i}"
        if name in names:
            raise ScheduleError(f"{where}.name: {name!r} is used twice")
        names.add(name)
        out.append(FaultSpec(name=name, kind=kind, target=target, at_s=at_s, for_s=for_s,
                             params=params))
    if duration_s is not None:
        for f in out:
            if f.at_s > duration_s:
                raise ScheduleError(f"fault {f.name!r} starts at {f.at_s:g} s, after the run's "
                                    f"end ({duration_s:g} s)")
    return out


class Journal:
    """faults.jsonl: one line per change of a fault's record (start, then end).

    The last line for a fault name is its final record; a reader that sees
    `active` with no later line knows the fault was never confirmed healed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, record: FaultRecord) -> None:
        with self._lock, open(self.path, "a") as f:
            f.write(json.dumps(record.to_json()) + "\n")
            f.flush()

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The final record of each fault, in order of first appearance."""
        final: dict[str, dict] = {}
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            if line.strip():
                rec = json.loads(line)
                final[rec["name"]] = rec
        return list(final.values())
