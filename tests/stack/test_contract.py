"""Every service honours its published contract, as Schemathesis judges it.

Schemathesis reads each service's /openapi.json and sends generated
requests, valid (positive) and invalid (negative), to every operation.  Each
answer must pass four checks: no 5xx, a documented status, a documented
content type, and a body that matches the documented schema (so errors carry
`{error, message, field, errors}`).

Real ids (a user, products, an order, a session) are fixed as path
parameters and put into every valid body, so that requests get past the 404s
to the handlers' own logic (unknown ids are test_bad_input's business).  The seed is fixed: a failure
replays.  A planted bug proves that the harness catches what it claims to.

The fast loop runs a few examples per operation; the slow test many more.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from fastapi import Query
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

pytestmark = pytest.mark.integration

SERVICES = ("users", "catalog", "orders", "payments", "search", "analytics", "cdc")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
SEED = 17
FAST_EXAMPLES = 3      # per operation and mode: the whole fast test takes a few seconds
SLOW_EXAMPLES = 100


@dataclass
class FuzzReport:
    """What one service's fuzzing sent and what failed (operation, mode, status, message)."""
    service: str
    cases: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{self.service}: {self.cases} cases in {self.seconds:.1f} s, statuses "
                f"{dict(sorted(self.statuses.items()))}, {len(self.failures)} failures")


@dataclass(frozen=True)
class World:
    """Real ids for path parameters and for ids inside bodies."""
    user_id: str
    product_ids: tuple[str, ...]
    order_id: str
    token: str

    def path_parameters(self) -> dict[str, str]:
        return {"user_id": self.user_id, "product_id": self.product_ids[0],
                "order_id": self.order_id, "token": self.token}

    def into_body(self, body):
        """The body with its user and product ids made real (a fresh copy)."""
        if not isinstance(body, dict):
            return body
        body = dict(body)
        if isinstance(body.get("user_id"), str):
            body["user_id"] = self.user_id
        items = body.get("items")
        if isinstance(items, list):
            body["items"] = [
                {**it, "product_id": self.product_ids[i]}
                if isinstance(it, dict) and i < len(self.product_ids) else it
                for i, it in enumerate(items)]
        return body


def _with_real_ids(world: World | None, strategy):
    if world is None:
        return strategy

    def apply(case):
        if isinstance(case.body, dict):
            case.body = world.into_body(case.body)
        return case
    return strategy.map(apply)


def fuzz(schema, name: str, *, examples: int, world: World | None = None) -> FuzzReport:
    """Positive and negative cases for every operation of `schema`, each
    answer judged by CHECKS; failures are collected, not raised."""
    report = FuzzReport(name)
    start = time.monotonic()
    fixed = world.path_parameters() if world else {}
    for result in schema.get_all_operations():
        op = result.ok()
        names = {p.name for p in op.path_parameters}
        path_parameters = {k: v for k, v in fixed.items() if k in names} or None
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            if mode is GenerationMode.POSITIVE:
                strategy = _with_real_ids(world, strategy)

            @hypothesis.seed(SEED)
            @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(case=strategy)
            def one(case):
                response = case.call(timeout=30)
                report.cases += 1
                report.statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except (Failure, FailureGroup) as e:
                    report.failures.append((op.label, mode.value, response.status_code, str(e)[:500]))

            try:
                one()
            except hypothesis.errors.Unsatisfiable:
                pass   # negative mode, and nothing to make invalid (no parameters, no body)
    report.seconds = time.monotonic() - start
    return report


@pytest.fixture(scope="module")
def world(urls) -> World:
    with httpx.Client(timeout=30) as c:
        products = []
        for _ in range(3):
            r = c.post(f"{urls['catalog']}/products", json={
                "sku": uuid.uuid4().hex[:12], "name": "Contract widget", "price": "2.50",
                "stock": 1_000_000, "category": "contract"})
            assert r.status_code == 201, r.text
            products.append(r.json()["id"])
        email = f"contract-{uuid.uuid4().hex[:10]}@example.com"
        r = c.post(f"{urls['users']}/users", json={"email": email, "password": "contract-pass"})
        assert r.status_code == 201, r.text
        user = r.json()["id"]
        r = c.post(f"{urls['orders']}/orders", json={
            "user_id": user, "items": [{"product_id": products[0], "quantity": 1}]})
        assert r.status_code == 201, r.text
        order = r.json()["order"]["id"]
        r = c.post(f"{urls['users']}/sessions", json={"email": email, "password": "contract-pass"})
        assert r.status_code == 201, r.text
        return World(user, tuple(products), order, r.json()["token"])


@pytest.fixture
def run_time_settings(urls):
    """The fuzzer also changes run-time settings (decline rate, history routing):
    put them back for the tests that follow."""
    rate_url = f"{urls['payments']}/admin/decline-rate"
    routing_url = f"{urls['orders']}/admin/history-routing"
    rate = httpx.get(rate_url).json()["rate"]
    mode = httpx.get(routing_url).json()["mode"]
    yield
    assert httpx.put(rate_url, json={"rate": rate}).status_code == 200
    assert httpx.put(routing_url, json={"mode": mode}).status_code == 200


def _judge(report: FuzzReport) -> None:
    print(report)
    assert report.cases > 0
    shown = "\n".join(f"{op} [{mode}] -> {status}: {msg}" for op, mode, status, msg in report.failures[:5])
    assert not report.failures, f"{report}\n{shown}"


@pytest.mark.parametrize("svc", SERVICES)
def test_service_honours_its_contract(urls, world, run_time_settings, svc):
    schema = schemathesis.openapi.from_url(f"{urls[svc]}/openapi.json")
    _judge(fuzz(schema, svc, examples=FAST_EXAMPLES, world=world))


@pytest.mark.slow
@pytest.mark.parametrize("svc", SERVICES)
def test_service_honours_its_contract_at_length(urls, world, run_time_settings, svc):
    schema = schemathesis.openapi.from_url(f"{urls[svc]}/openapi.json")
    _judge(fuzz(schema, svc, examples=SLOW_EXAMPLES, world=world))


# -- the harness catches what it claims to ---------------------------------------


def planted_app():
    """A service on the same skeleton, with two planted bugs: a 500 for some
    inputs, and a status its schema does not document."""
    from system_under_test.common.app import Service

    service = Service("planted", database=False, redis_user=False)

    @service.app.get("/squares")
    async def square(n: Annotated[int, Query(ge=0, le=20)]):
        if n > 12:
            raise RuntimeError("planted: overflow")      # the skeleton answers 500
        return {"n": n, "square": n * n}

    @service.app.get("/teapot")
    async def teapot():
        from system_under_test.common.app import JSON
        return JSON({"error": "teapot", "message": "planted"}, status_code=418)

    return service.app


@contextmanager
def serve(app):
    """`app` on 127.0.0.1 (an ephemeral port), in a thread, without its lifespan."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, name="planted-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "planted server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive()


def test_a_planted_500_and_an_undocumented_status_are_caught():
    with serve(planted_app()) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        report = fuzz(schema, "planted", examples=FAST_EXAMPLES * 10)
    print(report)
    caught = {(op, status) for op, _, status, _ in report.failures}
    assert ("GET /squares", 500) in caught, report.failures
    assert ("GET /teapot", 418) in caught, report.failures
    assert all(op in ("GET /squares", "GET /teapot") for op, _ in caught), report.failures
    assert "Server error" in next(m for op, _, s, m in report.failures if s == 500)
