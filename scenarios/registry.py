"""The scenarios `msdb run` knows, with their default parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Scenario", "all", "get", "UnknownScenario"]


class UnknownScenario(LookupError):
    pass


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    summary: str
    duration_s: float = 30.0
    users: int = 20
    spawn_rate: float = 10.0
    seed_users: int = 50
    seed_products: int = 100
    user_classes: tuple[str, ...] = ("scenarios.workload:ShopUser",)
    extra: dict = field(default_factory=dict)


_SCENARIOS = {
    "smoke": Scenario(
        name="smoke",
        summary="the shop mix (browse, search, login, dashboard, orders) for a short run; "
                "checks no 5xx, error rate, p95 and health after the run"),
}


def all() -> list[Scenario]:  # noqa: A001  (the registry's natural name)
    return list(_SCENARIOS.values())


def get(name: str) -> Scenario:
    try:
        return _SCENARIOS[name]
    except KeyError:
        raise UnknownScenario(f"unknown scenario {name!r}; known: {', '.join(_SCENARIOS)}") from None
