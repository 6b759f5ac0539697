"""The fault desk: faults applied on demand during a UI test, one nemesis
process per fault.

Each fault is a one-entry schedule (`at` 0 unless given) run by the same
nemesis process as `msdb run`'s schedules (`python -m harness.run.nemesis`),
with the Locust process as its `--parent`.  So a fault heals at the end of
its `for`, when it is healed from the UI (SIGTERM to its process), when the
test stops, on Ctrl-C, and when the Locust process dies, even by SIGKILL:
the heal never depends on the process that asked for the fault.  Every
fault is journalled in the run's faults.jsonl with UTC times, and its spec
(with `at_s` counted from the test's start) in faults.schedule.json, so the
run is judged with the fault checks like a run given `--faults`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from chaos.faults import NETWORK_KINDS, PROCESS_KINDS, FaultSpec, Journal, ScheduleError, parse_schedule

from ..run.children import Child
from ..stack.backend import StackBackend
from .errors import ApiError

__all__ = ["FaultDesk", "fault_kinds"]

_WHERE = re.compile(r"^faults\[\d+\]\.?(\w+)?:\s*")


def fault_kinds() -> dict:
    """What the panel offers: each kind with its parameters (chaos.toxics' own list)."""
    from chaos.toxics import TOXIC_TYPES
    net = {k: list(TOXIC_TYPES.get(k, ())) for k in NETWORK_KINDS}
    return {"network": net, "process": {k: [] for k in PROCESS_KINDS}}


class FaultDesk:
    """The faults of one UI test.  `apply`, `heal`, `heal_all` and `faults`
    are called from Flask views (greenlets) and the test's stop."""

    START_TIMEOUT_S = 20.0      # the nemesis process imports the stack seam, then starts
    POLL_S = 0.1
    STOP_TIMEOUT_S = 60.0       # a process fault's heal restarts a part

    def __init__(self, run_dir: Path, backend: StackBackend, *, t0: float, parent: int | None = None):
        self.run_dir = Path(run_dir)
        self.backend = backend
        self.t0 = t0                          # the test's start (Unix seconds)
        self.parent = parent or os.getpid()
        self.journal = self.run_dir / "faults.jsonl"
        self.journal.touch()
        (self.run_dir / "faults").mkdir(exist_ok=True)
        self.specs: dict[str, FaultSpec] = {}          # name -> spec, in order applied
        self.children: dict[str, Child] = {}
        self.closed = False
        self._n = 0

    # -- validation --------------------------------------------------------------------

    def targets(self) -> tuple[set[str], set[str]]:
        """(proxies, parts) a fault may name.  The proxy is no process fault's
        target: every heal needs it (as in `msdb run`)."""
        info = self.backend.info()
        parts = {n for n in self.backend.actions().names() if n != "proxy"}
        return set(info.proxy.names), parts

    def parse(self, body) -> FaultSpec:
        """A fault-schedule entry (kind, target, for, the kind's params; `at`
        and `name` optional) -> its spec; ApiError 400 naming the field."""
        if not isinstance(body, dict):
            raise ApiError(400, "body", "expected a JSON object: {kind, target, for, ...}")
        item = dict(body)
        item.setdefault("at", 0)
        self._n += 1
        if "name" not in item:
            item["name"] = f"ui-{self._n}-{item.get('kind')}-{item.get('target')}"
        elif not isinstance(item["name"], str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", item["name"]):
            raise ApiError(400, "name", "letters, digits, '.', '_' and '-' only (1-80 characters)")
        proxies, parts = self.targets()
        try:
            [spec] = parse_schedule([item], proxies=proxies, parts=parts)
        except ScheduleError as e:
            m = _WHERE.match(str(e))
            field = (m.group(1) if m and m.group(1) else "body")
            raise ApiError(400, field, str(e)[m.end() if m else 0:]) from None
        if spec.for_s <= 0:
            raise ApiError(400, "for", f"must be more than 0 s, got {item['for']!r}")
        if spec.name in self.specs:
            raise ApiError(409, "name", f"a fault named {spec.name!r} was already applied in this test")
        return spec

    # -- the operations ----------------------------------------------------------------

    def apply(self, body) -> tuple[int, dict]:
        """Start a fault; returns (HTTP status, its record).  201 once it is in
        place, 202 while it waits for its `at`, 502 if it could not be injected."""
        if self.closed:
            raise ApiError(409, "state", "the test has stopped: start a test to apply faults")
        spec = self.parse(body)
        now = time.time()
        planned = replace(spec, at_s=round(now - self.t0 + spec.at_s, 3))
        self.specs[spec.name] = planned
        self._write_schedule()
        path = self.run_dir / "faults" / f"{spec.name}.json"
        path.write_text(json.dumps([spec.to_json()]) + "\n")
        self.children[spec.name] = Child(
            [sys.executable, "-m", "harness.run.nemesis", "--state-dir", str(self.backend.state_dir),
             "--schedule", str(path), "--journal", str(self.journal), "--t0", repr(now),
             "--parent", str(self.parent)],
            self.run_dir / "faults" / f"{spec.name}.log", stop_timeout_s=self.STOP_TIMEOUT_S)
        if spec.at_s > 0:
            return 202, self.record(spec.name)
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < deadline:
            rec = self.record(spec.name)
            if rec["status"] != "scheduled" or not self.children[spec.name].running():
                break
            time.sleep(self.POLL_S)
        rec = self.record(spec.name)
        if rec["status"] == "active":
            return 201, rec
        if rec["status"] == "scheduled":
            return 202, rec
        return 502, rec

    def heal(self, name: str) -> dict:
        """Heal one fault now (its nemesis heals on SIGTERM); a fault that has
        already ended answers its final record."""
        if name not in self.specs:
            raise ApiError(404, "id", f"no fault {name!r} in this test "
                                      f"(faults: {', '.join(self.specs) or 'none'})")
        child = self.children[name]
        child.stop()
        return self.record(name)

    def heal_all(self) -> list[dict]:
        """Heal every fault: SIGTERM to all first, so they heal side by side."""
        live = [c for c in self.children.values() if c.running()]
        for c in live:
            c.proc.terminate()
        for c in live:
            c.stop()
        return self.faults()

    def close(self) -> dict:
        """The test stopped: heal everything; returns each process's exit code."""
        self.closed = True
        self.heal_all()
        return {name: c.stop() for name, c in self.children.items()}

    # -- reading -----------------------------------------------------------------------

    def record(self, name: str) -> dict:
        """The fault's latest journal record, or its spec while it is not in place yet."""
        for rec in Journal.read(self.journal):
            if rec["name"] == name:
                return {**rec, "id": name}
        spec = self.specs[name]
        ended = not self.children[name].running()
        return {"id": name, "name": name, "kind": spec.kind, "target": spec.target,
                "params": spec.params, "scheduled_at_s": spec.at_s, "scheduled_for_s": spec.for_s,
                "start": None, "end": None, "status": "ended" if ended else "scheduled",
                "error": "the nemesis process ended before the fault started; see "
                         f"faults/{name}.log" if ended else None}

    def faults(self) -> list[dict]:
        """Every fault of the test, in order applied (final records)."""
        journal = {r["name"]: r for r in Journal.read(self.journal)}
        out = []
        for name in self.specs:
            out.append({**journal[name], "id": name} if name in journal else self.record(name))
        return out

    def active(self) -> list[dict]:
        return [f for f in self.faults() if f["status"] in ("active", "scheduled")]

    def _write_schedule(self) -> None:
        tmp = self.run_dir / "faults.schedule.json.tmp"
        tmp.write_text(json.dumps([s.to_json() for s in self.specs.values()], indent=2) + "\n")
        tmp.replace(self.run_dir / "faults.schedule.json")
