"""Mutation tests: put back one of the seed pseudo-code's saga bugs at a time
(test-only switches in the orders service) and prove the checker catches it,
with a counterexample; the correct orders service, driven the same way,
comes out valid.  Real stack, real faults through the proxies."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from chaos.client import ToxiproxyServer
from harness.errors import UsageError
from harness.run.rundir import HistoryWriter
from scenarios.saga import read_final_state, scoped, wait_quiescent
from scenarios.saga_checker import check

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Driver:
    """Concurrent clients placing orders, recorded as a Jepsen history."""

    def __init__(self, urls: dict, tmp: Path, products: list[str], user: str):
        self.urls, self.products, self.user = urls, products, user
        self.history_path = tmp / "history.jsonl"
        self.history = HistoryWriter(self.history_path)
        self.acks = threading.Event()

    def one(self, i: int) -> None:
        proc = f"c{i}"
        items = [{"product_id": p, "quantity": 1} for p in self.products[i % 2: i % 2 + 2]]
        key = uuid.uuid4().hex
        self.history.invoke(proc, "create_order", {"idempotency_key": key, "items": items})
        try:
            with httpx.Client(timeout=30) as c:
                r = c.post(f"{self.urls['orders']}/orders", json={"user_id": self.user, "items": items},
                           headers={"Idempotency-Key": key})
        except httpx.HTTPError as e:
            self.history.info(proc, "create_order", {"idempotency_key": key, "error": type(e).__name__})
            return
        body = r.json() if r.content else {}
        value = {"idempotency_key": key, "status": r.status_code,
                 "order_id": (body.get("order") or {}).get("id")}
        if r.status_code in (200, 201):
            self.acks.set()
            self.history.ok(proc, "create_order", value)
        elif r.status_code in (402, 409) or body.get("compensated") is True:
            self.history.fail(proc, "create_order", value)
        else:
            self.history.info(proc, "create_order", value)

    def run(self, n: int, concurrency: int = 8) -> None:
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(self.one, range(n)))

    def verdicts(self, stack) -> dict:
        self.history.close()
        wait_quiescent(stack.urls, timeout_s=90)
        final = scoped(read_final_state(stack.urls), set(self.products))
        history = [json.loads(x) for x in self.history_path.read_text().splitlines()]
        return {r["name"]: r for r in check(history, final)}


@pytest.fixture
def orders_switch(stack, backend):
    """Restart orders with a test-only switch (and settings); restore it afterwards."""
    def restart(mutation: str | None, **settings):
        env = {"MSDB_MUTATION": mutation, "MSDB_ALLOW_MUTATIONS": "1"} if mutation else {}
        backend.set_overrides({"orders": {k: str(v) for k, v in settings.items()}} if settings else {})
        backend.actions().stop("orders")
        backend.stack().start_part("orders", extra_env=env)
    yield restart
    ToxiproxyServer.at(stack.proxy.api).reset()
    httpx.put(f"{stack.urls['payments']}/admin/decline-rate", json={"rate": 0.0})
    backend.set_overrides({})
    backend.actions().stop("orders")
    backend.stack().start_part("orders")


def world(urls, tmp_path, stock=1000):
    with httpx.Client(timeout=30) as c:
        products = [c.post(f"{urls['catalog']}/products", json={
            "sku": uuid.uuid4().hex[:10], "name": "Saga widget", "price": "3.00", "stock": stock}).json()["id"]
            for _ in range(3)]
        user = c.post(f"{urls['users']}/users", json={"email": f"{uuid.uuid4().hex[:10]}@x.com",
                                                      "password": "saga-password"}).json()["id"]
    return Driver(urls, tmp_path, products, user)


def decline_all(stack):
    httpx.put(f"{stack.urls['payments']}/admin/decline-rate", json={"rate": 1.0})


@pytest.mark.parametrize("mutation", [None, "skip-release"])
def test_skip_release_is_caught(stack, urls, tmp_path, orders_switch, mutation):
    orders_switch(mutation)
    decline_all(stack)          # every saga compensates
    d = world(urls, tmp_path)
    d.run(12)
    v = d.verdicts(stack)
    if mutation is None:
        assert all(r["verdict"] == "pass" for r in v.values()), v
    else:
        r = v["stock-conservation"]
        assert r["verdict"] == "fail"
        assert "still reserved" in str(r["details"]["counterexamples"])
        assert r["details"]["counterexamples"][0]["orders_with_reserved_stock"]


def _slow_payments(stack, latency, jitter=0):
    api = ToxiproxyServer.at(stack.proxy.api)
    api.add_toxic("orders-to-payments", "latency", attributes={"latency": latency, "jitter": jitter})


@pytest.mark.parametrize("mutation", [None, "no-refund"])
def test_no_refund_is_caught(stack, urls, tmp_path, orders_switch, mutation):
    # Every charge answers after the orders service gave up waiting (300 ms): the
    # outcome is unknown, the saga compensates, and the charge did happen.
    orders_switch(mutation, PEER_TIMEOUT_MS=300)
    _slow_payments(stack, 700)
    d = world(urls, tmp_path)
    d.run(6, concurrency=6)
    ToxiproxyServer.at(stack.proxy.api).reset()
    v = d.verdicts(stack)
    if mutation is None:
        assert all(r["verdict"] == "pass" for r in v.values()), v
    else:
        r = v["payments-match-orders"]
        assert r["verdict"] == "fail" and "still charged" in str(r["details"]["counterexamples"])


@pytest.mark.parametrize("mutation", [None, "double-charge"])
def test_double_charge_is_caught(stack, urls, tmp_path, orders_switch, mutation):
    # Some charges time out and are retried, and some retries succeed.
    orders_switch(mutation, PEER_TIMEOUT_MS=400)
    _slow_payments(stack, 350, jitter=300)
    d = world(urls, tmp_path)
    d.run(24, concurrency=8)
    ToxiproxyServer.at(stack.proxy.api).reset()
    v = d.verdicts(stack)
    if mutation is None:
        assert all(r["verdict"] == "pass" for r in v.values()), v
    else:
        r = v["payments-match-orders"]
        assert r["verdict"] == "fail" and "captured payments" in str(r["details"]["counterexamples"])


def _kill_mid_saga(stack, backend, d, link, latency, n=8, after_ack=False):
    api = ToxiproxyServer.at(stack.proxy.api)
    api.add_toxic(link, "latency", attributes={"latency": latency})
    t = threading.Thread(target=d.run, args=(n, n))
    t.start()
    if after_ack:
        assert d.acks.wait(30), "no order was acknowledged"
    else:
        time.sleep(latency / 1000 * 0.6)
    backend.actions().kill("orders")
    t.join(60)
    api.reset()
    backend.actions().start("orders")   # restarts it; its recovery pass runs at once


@pytest.mark.parametrize("mutation", [None, "drop-saga-log"])
def test_dropped_saga_log_is_caught(stack, backend, urls, tmp_path, orders_switch, mutation):
    orders_switch(mutation)
    d = world(urls, tmp_path)
    # Sagas wait on a slow charge (after reserving stock and writing the order)
    # when the orchestrator is killed.
    _kill_mid_saga(stack, backend, d, "orders-to-payments", 2000)
    v = d.verdicts(stack)
    if mutation is None:
        assert all(r["verdict"] == "pass" for r in v.values()), v
    else:
        bad = [k for k, r in v.items() if r["verdict"] == "fail"]
        assert "stock-conservation" in bad or "orders-end" in bad, v


@pytest.mark.parametrize("mutation", [None, "ack-before-commit"])
def test_ack_before_commit_is_caught(stack, backend, urls, tmp_path, orders_switch, mutation):
    orders_switch(mutation)
    d = world(urls, tmp_path)
    # Confirming the stock is slow; the orchestrator is killed as soon as a
    # client has its answer.
    _kill_mid_saga(stack, backend, d, "orders-to-catalog", 1500, after_ack=True)
    v = d.verdicts(stack)
    if mutation is None:
        assert all(r["verdict"] == "pass" for r in v.values()), v
    else:
        r = v["outcomes-match-history"]
        assert r["verdict"] == "fail" and "acknowledged" in str(r["details"]["counterexamples"])


def test_mutations_cannot_be_switched_on_by_configuration(backend):
    with pytest.raises(UsageError, match="MSDB_MUTATION"):
        backend.set_overrides({"orders": {"MSDB_MUTATION": "no-refund"}})
