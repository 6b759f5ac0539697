"""Load shapes for Locust (LoadTestShape.tick() -> (users, spawn_rate) or None).

`StepLoadShape` steps users up (5, 10, 20, 40, 80, ...) and holds each step;
at the end of each step it asks `judge(step)` whether the step broke the
SLO, and stops after the first step that did.  Every step is recorded (users,
UTC-epoch start and end, and the judge's reason) so the analysis can find
the knee from the exact per-request samples.
"""

from __future__ import annotations

import time
from typing import Callable

from locust import LoadTestShape

__all__ = ["StepLoadShape", "PhasedShape"]


class StepLoadShape(LoadTestShape):
    steps: tuple[int, ...] = (5, 10, 20, 40, 80, 160)
    step_s: float = 15.0
    spawn_rate: float = 50.0
    judge: Callable[[dict], str | None] | None = None   # set by the harness
    recorded: list[dict] = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.recorded = []
        self._index = -1
        self._stopped = False

    @classmethod
    def configure(cls, *, steps, step_s: float, judge) -> None:
        # staticmethod: a plain function stored on the class would be bound to the shape
        cls.steps, cls.step_s, cls.judge = tuple(steps), float(step_s), staticmethod(judge)

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
    baseline_s: float = 15.0
    noisy_s: float = 25.0
    probe_users: int = 5
    noisy_users: int = 30
    spawn_rate: float = 50.0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.phases: list[dict] = []

    @classmethod
    def configure(cls, *, baseline_s: float, noisy_s: float, noisy_users: int) -> None:
        cls.baseline_s, cls.noisy_s, cls.noisy_users = baseline_s, noisy_s, noisy_users

    def _enter(self, name: str) -> None:
        if not self.phases or self.phases[-1]["phase"] != name:
            if self.phases:
                self.phases[-1]["end"] = time.time()
            self.phases.append({"phase": name, "start": time.time(), "end": None})

    def tick(self):
        from .workload import NoisyUser, ProbeUser
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
