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

__all__ = ["StepLoadShape"]


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
