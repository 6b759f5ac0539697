"""The scenarios `msdb run` knows: defaults, load shape, fault schedule, what
to record after the load, and the checks that judge the run directory.

A scenario is a Jepsen-style bundle: a workload (Locust user classes), a
nemesis schedule (data, chaos/faults.py: `at`/`for` as shares of the run's
duration scale with `--duration`; `--faults FILE` replaces a schedule), what
to record once the load stops (harness.run.endstate), and its check groups
(harness.checks), each naming the SLO keys it needs.  A run given faults
that its scenario does not declare is judged with the fault checks too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from harness.checks.capacity import Capacity, Neighbour
from harness.checks.core import keys_of
from harness.checks.faults import AcquireTimeouts, Errors, FaultChecks, Latency, Slower
from harness.checks.lag import CdcChecks, ReplicationChecks
from harness.checks.load import LoadChecks
from harness.checks.matrix import MatrixChecks
from harness.checks.saga import SagaChecks
from harness.checks.security import SecurityChecks
from harness.run.children import start_audit_watch, start_intruder, start_probe
from harness.run.endstate import cdc_end_state, lag_tail, saga_final_state
from harness.security.probes import security_probe

__all__ = ["Scenario", "StepLoad", "PhasedLoad", "all", "get", "UnknownScenario"]


class UnknownScenario(LookupError):
    pass


@dataclass(frozen=True, kw_only=True)
class StepLoad:
    """Users stepped up, each step held `step_s`; the first `settle_s` of a step
    are not judged (users still arriving)."""
    steps: tuple[int, ...]
    step_s: float
    settle_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PhasedLoad:
    """The probe users alone for `baseline_share` of the run, then with
    `noisy_users` neighbours beside them."""
    baseline_share: float
    noisy_users: int


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    summary: str
    duration_s: float = 30.0
    users: int = 20
    spawn_rate: float = 10.0
    seed_users: int = 50
    seed_products: int = 100
    # new products for this run alone (a checker that audits stock sees only its orders)
    fresh_products: bool = False
    user_classes: tuple[str, ...] = ("scenarios.workload:ShopUser",)
    shape: StepLoad | PhasedLoad | None = None
    faults: tuple[dict, ...] = ()
    # service settings for this run only (services.yaml variables), restored afterwards
    service_env: dict = field(default_factory=dict)
    # the load goes on past its duration until the orders service answered min_sagas orders
    until_min_sagas: bool = False
    after_load: tuple[Callable, ...] = ()
    checks: tuple = (LoadChecks(),)
    # run `matrix_of` once per topology, each on a fresh stack, and compare
    matrix: tuple[str, ...] = ()
    matrix_of: str | None = None
    # processes beside the load: (run_dir, state_dir, t0, duration_s) -> Child,
    # stopped when the load ends, before the after-load recorders
    beside_load: tuple[Callable, ...] = ()
    # a fresh stack for this scenario is started with TLS (and pgaudit)
    tls: bool = False
    # a fresh stack for this scenario runs these engines (seed: the stand-ins)
    engines: str | None = None
    # judged again once its reports exist (a check reads the reports)
    judge_reports: bool = False

    def check_groups(self, *, has_faults: bool) -> tuple:
        """The groups that judge a run of this scenario: given faults it does not
        declare, the fault checks judge the fault windows too (and the load
        checks judge what lies outside them)."""
        if not has_faults or self.matrix or any(isinstance(g, FaultChecks) for g in self.checks):
            return self.checks      # (a matrix takes no fault file: its runs are its children)
        return self.checks + (FaultChecks(),)

    def slo_keys(self, *, has_faults: bool) -> tuple[str, ...]:
        return keys_of(self.check_groups(has_faults=has_faults))

    def default_duration_s(self) -> float:
        """How long its load runs without --duration (a stepped load: every step)."""
        if isinstance(self.shape, StepLoad):
            return len(self.shape.steps) * self.shape.step_s
        return self.duration_s

    def stack_needs(self) -> set[str]:
        """What the stack must offer beyond services and proxies (replica,
        redis, cdc): a targets file that lacks it cannot run this scenario."""
        return {n for g in self.checks for n in getattr(g, "needs", ())}

    def with_(self, **changes) -> "Scenario":
        return replace(self, **changes)


def _faulty(effect) -> tuple:
    return (LoadChecks(strict=False), FaultChecks(effect=effect))


_FAULTY = dict(duration_s=60.0, users=10)

_SCENARIOS = {s.name: s for s in (
    Scenario(
        name="smoke",
        summary="the shop mix (browse, search, login, dashboard, orders) for a short run; "
                "checks no 5xx, error rate, p95 and health after the run"),
    Scenario(
        name="capacity", users=160, duration_s=6 * 15.0,
        summary="steps users up 5, 10, 20, 40, 80, 160 (15 s each) until p99 or errors break "
                "the SLO; finds the knee per endpoint and sizes the pools by Little's law",
        shape=StepLoad(steps=(5, 10, 20, 40, 80, 160), step_s=15, settle_s=3),
        checks=(LoadChecks(strict=False), Capacity())),
    Scenario(
        name="pool-exhaustion", duration_s=60.0, users=30,
        summary="catalog's pool cut to 4 connections with a 2 s acquire timeout, then 500 ms of "
                "latency on catalog-db: requests queue for connections, time out at the acquire "
                "timeout as clean 503s, and all recovers after the heal",
        service_env={"catalog": {"DB_POOL_MAX": "4", "DB_POOL_MIN": "2", "DB_POOL_ACQUIRE": "2000"}},
        faults=({"kind": "latency", "target": "catalog-db", "at": "25%", "for": "50%",
                 "latency": 500},),
        checks=_faulty(AcquireTimeouts("catalog GET /products", acquire_ms=2000))),
    Scenario(
        name="noisy-neighbour", duration_s=40.0,
        summary="heavy order and analytics load beside the users service's own traffic, on each of "
                "the seed's three topologies in turn (single, grouped, dedicated; fresh stacks on "
                "--base-port, default 15800); one table compares how much the users service suffers",
        matrix=("single", "grouped", "dedicated"), matrix_of="noisy-neighbour-one",
        checks=(MatrixChecks(),)),
    Scenario(
        name="noisy-neighbour-one", duration_s=40.0, users=35,
        summary="one topology of noisy-neighbour: the users service alone (baseline), then with "
                "30 back-to-back order/analytics clients beside it; compares its p95",
        user_classes=("scenarios.workload:ProbeUser", "scenarios.workload:NoisyUser"),
        shape=PhasedLoad(baseline_share=0.4, noisy_users=30),
        # The probe Neighbour judges runs in a process of its own (harness/run/probe.py);
        # Locust's ProbeUser stays, for comparison.
        beside_load=(start_probe,),
        checks=(LoadChecks(strict=False), Neighbour())),
    Scenario(
        name="saga", duration_s=60.0, users=20, seed_products=30,
        summary="at least 2,000 create-order sagas from concurrent clients (1 in 10 retried with "
                "the same Idempotency-Key), 20% of payments declined, latency and resets on "
                "orders->payments and orders->catalog, a kill -9 of the orchestrator; then a "
                "Jepsen-style checker audits stock, orders, payments and the history",
        user_classes=("scenarios.workload:SagaUser",),
        service_env={"payments": {"PAYMENT_DECLINE_RATE": "0.2"}, "orders": {"PEER_TIMEOUT_MS": "1000"}},
        faults=({"kind": "latency", "target": "orders-to-payments", "at": "10%", "for": "20%",
                 "latency": 400, "jitter": 400},
                {"kind": "reset_peer", "target": "orders-to-catalog", "at": "35%", "for": "8%",
                 "timeout": 0},
                {"kind": "kill", "target": "orders", "at": "50%", "for": "2s"}),
        fresh_products=True, until_min_sagas=True, after_load=(saga_final_state,),
        checks=(*_faulty(None), SagaChecks())),
    Scenario(
        name="db-latency", **_FAULTY,
        summary="200 ms latency on catalog's database link (catalog-db) for the middle half of "
                "the run; the catalog endpoints must show it, nothing may 500, all recovers",
        faults=({"kind": "latency", "target": "catalog-db", "at": "25%", "for": "50%",
                 "latency": 200, "jitter": 0},),
        checks=_faulty(Latency("catalog GET /products", ms=200))),
    Scenario(
        name="connection-reset", **_FAULTY,
        summary="every connection on orders' database link is reset (reset_peer) for 30% of "
                "the run; orders fail cleanly with 503, the pool reconnects after the heal",
        faults=({"kind": "reset_peer", "target": "orders-db", "at": "25%", "for": "30%",
                 "timeout": 0},),
        checks=_faulty(Errors("orders POST /orders"))),
    Scenario(
        name="db-down", **_FAULTY,
        summary="orders' database link is down (proxy disabled) for 20 s; requests fail or wait "
                "within the pool's acquire timeout, never 500, and recover",
        faults=({"kind": "down", "target": "orders-db", "at": "25%", "for": "20s"},),
        checks=_faulty(Errors("orders POST /orders"))),
    Scenario(
        name="db-restart", **_FAULTY,
        summary="kill -9 of the PostgreSQL instance holding order_service_db, restarted after "
                "5 s; pools reconnect, the replica resumes streaming",
        faults=({"kind": "kill", "target": "@orders-instance", "at": "25%", "for": "5s"},),
        checks=_faulty(Errors("orders POST /orders", instance_wide=True))),
    Scenario(
        name="service-down", **_FAULTY,
        summary="the catalog service is stopped for 20 s, then started again; orders fail "
                "with clean 503s, the dashboard still answers",
        faults=({"kind": "stop", "target": "catalog", "at": "25%", "for": "20s"},),
        checks=_faulty(Errors("catalog GET /products"))),
    Scenario(
        name="replica-lag", duration_s=60.0, users=10,
        summary="orders placed and their history read back at once, while the replica's "
                "streaming link (orders-replication) gets 250 ms of latency, then a 16 KB/s "
                "bandwidth limit; heartbeat lag, catch-up after each heal, and stale reads "
                "with replica routing vs read-your-writes routing",
        user_classes=("scenarios.workload:RywUser",),
        service_env={"orders": {"ORDER_HISTORY_READ": "replica"}},
        faults=({"kind": "latency", "target": "orders-replication", "at": "20%", "for": "25%",
                 "latency": 250, "jitter": 0},
                {"kind": "bandwidth", "target": "orders-replication", "at": "60%", "for": "20%",
                 "rate": 16}),
        after_load=(lag_tail,),
        checks=(*_faulty(None), ReplicationChecks())),
    Scenario(
        name="cdc-lag", duration_s=75.0, users=10,
        summary="product edits, orders and sign-ups under load while the search service (the "
                "catalog's CDC consumer) is killed for 30 s; backlog, catch-up rate and CDC lag "
                "per consumer, then the end state: search = catalog, analytics has every order "
                "once, orders' user replica = users",
        user_classes=("scenarios.workload:CdcUser",),
        faults=({"kind": "kill", "target": "search", "at": "20%", "for": "30s"},),
        after_load=(cdc_end_state, lag_tail),
        checks=(*_faulty(None), CdcChecks())),
    Scenario(
        name="broker-restart", duration_s=60.0, users=10,
        summary="kill -9 of the Kafka broker (part kafka; --engines seed) under product edits, "
                "orders and sign-ups, restarted after 10 s; the relay replays from its slots and "
                "change stream, the consumers rejoin: no event lost or applied twice "
                "(search = catalog, analytics has every order once), no 500s, all recovers",
        user_classes=("scenarios.workload:CdcUser",),
        faults=({"kind": "kill", "target": "kafka", "at": "25%", "for": "10s"},), engines="seed",
        after_load=(cdc_end_state, lag_tail),
        checks=(*_faulty(None), CdcChecks(outage_targets=("kafka",)))),
    Scenario(
        name="document-db-down", **_FAULTY,
        summary="the catalog's MongoDB link (catalog-mongo; --engines seed) is down for 20 s; "
                "catalog requests fail as clean 503s, never 500, and recover",
        faults=({"kind": "down", "target": "catalog-mongo", "at": "25%", "for": "20s"},),
        engines="seed",
        checks=_faulty(Errors("catalog GET /products"))),
    Scenario(
        name="security", duration_s=60.0, users=10,
        summary="seed §8 measured on the live stack under the shop mix: TLS 1.3 on every database "
                "connection (pg_stat_ssl), plaintext and TLS 1.2 refused, every cross-service "
                "database login and Redis key-space access refused, N audited operations give N "
                "pgaudit records, a scripted intruder (cross-database logins, failed logins, a bulk "
                "read of every email, an odd rate) detected in time with no false alarm, and no "
                "password or key in any output; a fresh stack for it runs with --tls",
        beside_load=(start_audit_watch, start_intruder), after_load=(security_probe,),
        tls=True, judge_reports=True,
        checks=(LoadChecks(), SecurityChecks())),
    Scenario(
        name="slow-network", **_FAULTY,
        summary="catalog's database link limited to 50 KB/s for the middle half of the run; "
                "product listings slow down, nothing fails",
        faults=({"kind": "bandwidth", "target": "catalog-db", "at": "25%", "for": "50%",
                 "rate": 50},),
        checks=_faulty(Slower("catalog GET /products", ms=20))),
)}


def all() -> list[Scenario]:  # noqa: A001  (the registry's natural name)
    return list(_SCENARIOS.values())


def get(name: str) -> Scenario:
    try:
        return _SCENARIOS[name]
    except KeyError:
        raise UnknownScenario(f"unknown scenario {name!r}; known: {', '.join(_SCENARIOS)}") from None
