"""Load shapes for Locust (LoadTestShape.tick() -> (users, spawn_rate) or None).

`StepLoadShape` steps users up (5, 10, 20, 40, 80, ...) and holds each step;
at the end of each step it asks `judge(step)` whether the step broke the
SLO, and stops after the first step that did.  Every step is recorded (users,
UTC-epoch start and end, and the judge's reason) so the checks can find the
knee from the exact per-request samples.

Shapes are instances configured through their constructor and handed to
Locust's `Environment(shape_class=...)`: no class attributes are changed.
"""

from __future__ import annotations

import time
from typing import Callable

from locust import LoadTestShape

from .workload import NoisyUser, ProbeUser

__all__ = ["StepLoadShape", "PhasedShape"]


class StepLoadShape(LoadTestShape):
    SPAWN_RATE = 50.0

    def __init__(self, *, steps, step_s: float, judge: Callable[[dict], str | None] | None = None):
        super().__init__()
        self.steps = tuple(steps)
        self.step_s = float(step_s)
        self.judge = judge
        self.spawn_rate = self.SPAWN_RATE
        self.recorded: list[dict] = []
        self._index = -1
        self._stopped = False

    def _close_step(self) -> str | None:
        if not self.recorded:
            return None
        st = self.recorded[-1]
        if st.get("end") is None:
            st["end"] = time.time()
            try:
                st["breach"] = self.judge(st) if self.judge else None
            except Exception as e:  # a judge that crashes stops the load: never a silent pass
                st["breach"] = f"judge failed: {type(e).__name__}: {e}"
                st["judge_error"] = True
        return st.get("breach")

    def tick(self):
        if self._stopped:
            return None
        idx = int(self.get_run_time() // self.step_s)
        if idx != self._index:
            if self._close_step() is not None or idx >= len(self.steps):
                self._stopped = True
                return None
            self._index = idx
            self.recorded.append({"users": self.steps[idx], "start": time.time(), "end": None,
                                  "breach": None})
        return self.steps[self._index], self.spawn_rate

    def finish(self) -> list[dict]:
        """Close the last step (when the run ended by its duration) and return all steps."""
        self._close_step()
        return self.recorded


class PhasedShape(LoadTestShape):
    """Baseline, then noise: the probe users alone for `baseline_s`, then the
    probe users plus `noisy_users` neighbours for `noisy_s`.  Phases are
    recorded (UTC-epoch start/end) to split the samples."""
    PROBE_USERS = 5
    SPAWN_RATE = 50.0

    def __init__(self, *, baseline_s: float, noisy_s: float, noisy_users: int):
        super().__init__()
        self.baseline_s, self.noisy_s = baseline_s, noisy_s
        self.probe_users, self.noisy_users = self.PROBE_USERS, noisy_users
        self.spawn_rate = self.SPAWN_RATE
        self.phases: list[dict] = []

    def _enter(self, name: str) -> None:
        if not self.phases or self.phases[-1]["phase"] != name:
            if self.phases:
                self.phases[-1]["end"] = time.time()
            self.phases.append({"phase": name, "start": time.time(), "end": None})

    def tick(self):
        t = self.get_run_time()
        if t < self.baseline_s:
            self._enter("baseline")
            return self.probe_users, self.spawn_rate, [ProbeUser]
        if t < self.baseline_s + self.noisy_s:
            self._enter("noisy")
            return self.probe_users + self.noisy_users, self.spawn_rate, [ProbeUser, NoisyUser]
        if self.phases and self.phases[-1]["end"] is None:
            self.phases[-1]["end"] = time.time()
        return None

    def finish(self) -> list[dict]:
        if self.phases and self.phases[-1]["end"] is None:
            self.phases[-1]["end"] = time.time()
        return self.phases
