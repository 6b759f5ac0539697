"""Locust in library mode: one `Environment` per run, configured through it.

The Environment gets its own `Events` (so listeners that a module registered
on Locust's global events, e.g. locustfile.py's, do not fire inside a
harness run), the workload's `WorkloadContext` (service URLs, seeded data,
the history recorder), the host, and the load shape as an instance.
"""

from __future__ import annotations

import importlib
import time
from typing import Callable

import gevent
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_STOPPED, STATE_STOPPING

from scenarios.workload import WorkloadContext

__all__ = ["run_locust", "user_classes"]


def user_classes(specs: tuple[str, ...]) -> list:
    """`module:Class` names -> the classes."""
    out = []
    for spec in specs:
        mod, _, name = spec.partition(":")
        out.append(getattr(importlib.import_module(mod), name))
    return out


def run_locust(*, classes: list, ctx: WorkloadContext, host: str, users: int, spawn_rate: float,
               duration_s: float, on_request: Callable, shape=None,
               enough: Callable[[], bool] | None = None, max_extra_s: float = 0.0) -> dict:
    """Run the load for duration_s (or until the shape stops); returns Locust's
    own totals.

    enough: whether the load has done what the scenario needs (e.g. 2,000
    sagas).  If it is still False at duration_s, the load goes on until it is
    True, for at most max_extra_s more; `extended_s` says how long that took.
    A count that depends on the machine's speed thus never turns a slow
    machine into a failed run, while a system that really cannot reach the
    count still fails its check."""
    env = Environment(user_classes=classes, events=Events(), host=host, stop_timeout=10,
                      shape_class=shape)
    env.msdb = ctx
    runner = env.create_local_runner()
    env.events.request.add_listener(on_request)
    extended_s = 0.0
    try:
        if shape is not None:
            runner.start_shape()
        else:
            runner.start(users, spawn_rate=spawn_rate)
        t0 = time.monotonic()
        deadline = t0 + duration_s
        while time.monotonic() < deadline:
            gevent.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            if shape is not None and runner.state in (STATE_STOPPING, STATE_STOPPED) \
                    and time.monotonic() > t0 + 1:
                break
        end = deadline + max_extra_s
        while enough is not None and not enough() and time.monotonic() < end:
            gevent.sleep(0.25)
        extended_s = max(0.0, time.monotonic() - deadline)
        runner.stop()
    finally:
        runner.quit()
    total = env.stats.total
    return {"locust_requests": total.num_requests, "locust_failures": total.num_failures,
            "extended_s": round(extended_s, 2) if enough is not None else 0.0,
            "user_errors": {e["msg"][:200]: e["count"] for e in runner.exceptions.values()}}
