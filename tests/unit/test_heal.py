"""heal(): every part resumed and asked at once, dead parts started in order."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from harness.errors import InfraError
from harness.stack.backend import heal


class Actions:
    def __init__(self, names, dead=(), fail=None):
        self._names, self.dead, self.fail = list(names), set(dead), fail
        # Each resume waits until every part's resume has begun: done one
        # after the other, the first would wait for good (BrokenBarrierError).
        self.barrier = threading.Barrier(len(self._names), timeout=10)
        self.started: list[str] = []

    def names(self):
        return self._names

    def resume(self, part):
        self.barrier.wait()
        if part == self.fail:
            raise InfraError(f"parts.{part}.resume: refused")

    def running(self, part):
        return part not in self.dead

    def start(self, part):
        self.started.append(part)


def backend(actions):
    # port 1: nothing listens, so the proxy step reports the API unreachable and goes on
    info = SimpleNamespace(overrides={}, proxy=SimpleNamespace(api="http://127.0.0.1:1"))
    return SimpleNamespace(info=lambda: info, actions=lambda: actions)


def test_parts_are_resumed_at_once_and_dead_ones_started_in_the_stacks_order():
    names = ["pg-main", "redis", "users", "orders", "catalog", "search"]
    acts = Actions(names, dead={"orders", "pg-main", "search"})
    fixed = heal(backend(acts))
    assert acts.started == ["pg-main", "orders", "search"]
    assert fixed[-3:] == ["pg-main restarted", "orders restarted", "search restarted"]
    assert fixed[0].startswith("proxy API unreachable")


def test_a_failing_part_is_reported_and_nothing_is_started_after_it():
    acts = Actions(["a", "b", "c"], dead={"c"}, fail="b")
    with pytest.raises(InfraError, match="parts.b.resume: refused"):
        heal(backend(acts))
    assert acts.started == []
