"""The shop workload: a realistic mix over the seed's services, for Locust.

Weights (per user, relative): browse products 30, search 15, log in 10,
dashboard 10, place an order of 1-3 items 15, order history 5, stock 3,
register 2.  Expected business outcomes (402 declined, 409 out of stock)
count as successes for Locust and as `fail` in the history; anything else
non-2xx is a Locust failure.

What a user needs (service URLs, seeded products and users, the history
recorder) is a `WorkloadContext` on Locust's `Environment` (`environment.msdb`),
set by `msdb run` when it builds its Environment, and by locustfile.py's
`init` listener under the plain Locust UI.  Nothing is configured through
class attributes or module globals, so two Environments in one process
(a test, a run) never share state.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from dataclasses import dataclass, field

from locust import FastHttpUser, between, constant, task

from .data import SEARCH_WORDS, LOAD_PASSWORD, user_credentials

__all__ = ["WorkloadContext", "context", "ShopUser", "ProbeUser", "NoisyUser", "SagaUser", "RywUser",
           "CdcUser", "create_order", "read_history"]


class _NoHistory:
    """The recorder when nobody records (the plain Locust UI)."""

    def invoke(self, *a): pass
    def ok(self, *a): pass
    def fail(self, *a): pass
    def info(self, *a): pass


@dataclass
class WorkloadContext:
    """Test data and recorder of one Locust Environment.

    `process_prefix` keeps history process ids unique across the Locust
    workers of one distributed run (each worker gets its own, e.g. `w1-`);
    within a process, ids come from a counter, so no two users share one."""
    urls: dict[str, str] = field(default_factory=dict)     # service -> base URL
    products: list[str] = field(default_factory=list)
    seeded_users: int = 0
    history: object = field(default_factory=_NoHistory)   # invoke/ok/fail/info(process, f, value)
    process_prefix: str = ""
    _ids: itertools.count = field(default_factory=itertools.count, repr=False, compare=False)

    def process_id(self, kind: str) -> str:
        """A history process id no other user of this run has (`w1-u000003`)."""
        return f"{self.process_prefix}{kind}{next(self._ids):06d}"

    def shareable(self) -> dict:
        """What a Locust worker needs to rebuild this context (sent by the master)."""
        return {"urls": dict(self.urls), "products": list(self.products),
                "seeded_users": self.seeded_users}


def context(environment) -> WorkloadContext:
    ctx = getattr(environment, "msdb", None)
    if ctx is None:
        ctx = environment.msdb = WorkloadContext()
    return ctx


def http_status(r) -> str:
    """`HTTP 503`, or for no answer at all (status 0) the client's error, so
    that a reset, a refused connection and a timeout can be told apart."""
    err = getattr(r, "error", None) if not r.status_code else None
    return f"HTTP {r.status_code}" + (f" ({type(err).__name__}: {str(err)[:120]})" if err else "")


class ShopUser(FastHttpUser):
    wait_time = between(0.05, 0.5)
    # Every service is called with an absolute URL from the context; Locust
    # sets `host` from the Environment's (the users service).
    connection_timeout = 10.0
    network_timeout = 35.0   # longer than the pools' 30 s acquire timeout

    def on_start(self):
        self.ctx = context(self.environment)
        self.urls = self.ctx.urls
        self.user_id = None
        self.token = None
        self.process = self.ctx.process_id("u")
        if self.ctx.seeded_users:
            self.login()

    # -- helpers ---------------------------------------------------------------

    def _u(self, service: str, path: str) -> str:
        return self.urls[service] + path

    def _product(self) -> str | None:
        return random.choice(self.ctx.products) if self.ctx.products else None

    # -- tasks -------------------------------------------------------------------

    @task(30)
    def browse(self):
        offset = random.randint(0, max(0, len(self.ctx.products) - 20))
        self.client.get(self._u("catalog", f"/products?limit=20&offset={offset}"),
                        name="catalog GET /products")
        for _ in range(2):
            pid = self._product()
            if pid:
                self.client.get(self._u("catalog", f"/products/{pid}"),
                                name="catalog GET /products/{id}")

    @task(15)
    def search(self):
        q = random.choice(SEARCH_WORDS)
        self.client.get(self._u("search", f"/search?q={q}&limit=20"), name="search GET /search")

    @task(10)
    def login(self):
        if not self.ctx.seeded_users:
            return
        cred = user_credentials(random.randrange(self.ctx.seeded_users))
        with self.client.post(self._u("users", "/sessions"), name="users POST /sessions",
                              json={"email": cred["email"], "password": LOAD_PASSWORD},
                              catch_response=True) as r:
            if r.status_code == 201:
                body = r.json()
                self.user_id, self.token = body["user_id"], body["token"]
            else:
                r.failure(f"login {http_status(r)}")
                return
        self.client.get(self._u("users", f"/sessions/{self.token}"), name="users GET /sessions/{token}")

    @task(2)
    def register(self):
        email = f"new-{uuid.uuid4().hex[:16]}@msdb.test"
        self.client.post(self._u("users", "/users"), name="users POST /users",
                         json={"email": email, "password": "new-user-password",
                               "first_name": "New", "last_name": "User"})

    @task(10)
    def dashboard(self):
        if self.user_id:
            self.client.get(self._u("users", f"/dashboard/{self.user_id}"),
                            name="users GET /dashboard/{id}")

    @task(5)
    def history(self):
        if self.user_id:
            self.client.get(self._u("orders", f"/users/{self.user_id}/orders?limit=10"),
                            name="orders GET /users/{id}/orders")

    @task(3)
    def stock(self):
        pid = self._product()
        if pid:
            self.client.get(self._u("catalog", f"/inventory/{pid}"), name="catalog GET /inventory/{id}")

    @task(15)
    def place_order(self):
        if not self.user_id or len(self.ctx.products) < 3:
            return
        items = [{"product_id": pid, "quantity": random.randint(1, 3)}
                 for pid in random.sample(self.ctx.products, random.randint(1, 3))]
        create_order(self, items, uuid.uuid4().hex)


def create_order(user, items: list[dict], key: str) -> str:
    """POST /orders as one history operation; returns its completion type.

    ok: an order was confirmed.  fail: definitely no confirmed order
    (declined, out of stock, or compensated in full).  info: unknown
    (5xx, no response, or the key's first request is still in flight).
    """
    value = {"user_id": user.user_id, "items": items, "idempotency_key": key}
    history = user.ctx.history
    history.invoke(user.process, "create_order", value)
    with user.client.post(user.urls["orders"] + "/orders", name="orders POST /orders",
                          json={"user_id": user.user_id, "items": items},
                          headers={"Idempotency-Key": key}, catch_response=True) as r:
        status = r.status_code
        try:
            body = r.json()
        except Exception:  # a non-JSON body (e.g. a proxy's) is recorded as None
            body = None
        body = body if isinstance(body, dict) else {}
        order = body.get("order") or {}
        result = {**value, "status": status, "order_id": order.get("id"),
                  "order_status": order.get("status")}
        if status in (200, 201):
            kind = "ok"
        elif status == 409 and body.get("field") == "Idempotency-Key":
            kind = "info"          # the same key's first request is still running
            r.success()
        elif status in (402, 409):
            kind = "fail"          # declined / out of stock: definitely no order
            r.success()
        elif status == 0 or status >= 500:
            # Unknown outcome, unless the saga says it compensated everything.
            kind = "fail" if body.get("compensated") is True else "info"
            r.failure(http_status(r))
        else:
            kind = "fail"
            r.failure(f"HTTP {status}: {str(body)[:200]}")
        getattr(history, kind)(user.process, "create_order", result)
    return kind


class _Base(FastHttpUser):
    abstract = True
    connection_timeout = 10.0
    network_timeout = 35.0

    def on_start(self):
        self.ctx = context(self.environment)
        self.urls = self.ctx.urls
        self.user_id = None
        self.process = self.ctx.process_id(type(self).__name__[0].lower())
        if self.ctx.seeded_users:
            cred = user_credentials(random.randrange(self.ctx.seeded_users))
            r = self.client.post(self.urls["users"] + "/sessions", name="users POST /sessions",
                                 json={"email": cred["email"], "password": LOAD_PASSWORD})
            if r.status_code == 201:
                self.user_id = r.json()["user_id"]


    def post_order(self, items: list[dict]) -> str | None:
        """POST /orders with a fresh Idempotency-Key; declined and out of stock
        are expected outcomes, not Locust failures.  Returns the new order's id."""
        with self.client.post(self.urls["orders"] + "/orders", name="orders POST /orders",
                              json={"user_id": self.user_id, "items": items},
                              headers={"Idempotency-Key": uuid.uuid4().hex}, catch_response=True) as r:
            if r.status_code in (402, 409):
                r.success()
            if r.status_code != 201:
                return None
            try:
                return ((r.json() or {}).get("order") or {}).get("id")
            except ValueError:
                return None


class ProbeUser(_Base):
    """The users service's own steady traffic, whose latency the noisy-neighbour
    scenario measures (a DB read per request)."""
    fixed_count = 5
    wait_time = between(0.05, 0.15)

    @task
    def read_user(self):
        if self.user_id:
            self.client.get(self.urls["users"] + f"/users/{self.user_id}", name="users GET /users/{id}")


class NoisyUser(_Base):
    """A heavy neighbour: orders placed back to back, order history, analytics."""
    wait_time = constant(0)

    @task(6)
    def order(self):
        if not self.user_id or len(self.ctx.products) < 3:
            return
        items = [{"product_id": pid, "quantity": 1} for pid in random.sample(self.ctx.products, 2)]
        self.post_order(items)

    @task(2)
    def history(self):
        if self.user_id:
            self.client.get(self.urls["orders"] + f"/users/{self.user_id}/orders?limit=50&read=primary",
                            name="orders GET /users/{id}/orders")

    @task(1)
    def sales(self):
        self.client.get(self.urls["analytics"] + "/sales/top-products?limit=20",
                        name="analytics GET /sales/top-products")


class SagaUser(_Base):
    """Orders back to back, for the saga scenario; one in ten is sent again with
    the same Idempotency-Key, as a client retrying after a lost answer would."""
    wait_time = between(0.0, 0.02)
    REPEAT = 0.1

    @task
    def order(self):
        if not self.user_id or len(self.ctx.products) < 3:
            return
        items = [{"product_id": pid, "quantity": random.randint(1, 3)}
                 for pid in random.sample(self.ctx.products, random.randint(1, 3))]
        key = uuid.uuid4().hex
        create_order(self, items, key)
        if random.random() < self.REPEAT:
            create_order(self, items, key)


class RywUser(_Base):
    """Read-your-writes: place an order, then read the order history at once,
    both as the service routes it and with `read-your-writes` routing; a read
    that misses the order this client just placed is a stale read.  Every
    read is a `read_history` operation in the history:
    ok {order_id, routing, served_by, stale, after_write_ms}."""
    wait_time = between(0.05, 0.2)

    @task
    def order_then_read(self):
        if not self.user_id or len(self.ctx.products) < 3:
            return
        order_id = self.post_order([{"product_id": random.choice(self.ctx.products), "quantity": 1}])
        if not order_id:
            return
        written = time.monotonic()
        for routing in (None, "read-your-writes"):
            read_history(self, order_id, routing, written)


def read_history(user, order_id: str, routing: str | None, written: float) -> None:
    value = {"user_id": user.user_id, "order_id": order_id, "routing": routing or "service"}
    history = user.ctx.history
    history.invoke(user.process, "read_history", value)
    q = "?limit=5" + (f"&read={routing}" if routing else "")
    name = "orders GET /users/{id}/orders" + (f" ({routing})" if routing else "")
    with user.client.get(user.urls["orders"] + f"/users/{user.user_id}/orders{q}", name=name,
                         catch_response=True) as r:
        if r.status_code != 200:
            r.failure(http_status(r))
            history.fail(user.process, "read_history", {**value, "status": r.status_code})
            return
        body = r.json()
        seen = any(str(o.get("id")) == order_id for o in body.get("items") or [])
        history.ok(user.process, "read_history", {
                **value, "served_by": body.get("served_by"), "stale": not seen,
                "after_write_ms": round((time.monotonic() - written) * 1000, 2)})


class CdcUser(_Base):
    """Writes that CDC carries: product edits (to search), orders (to
    analytics), new users (to orders' user replica)."""
    wait_time = between(0.02, 0.1)

    @task(5)
    def edit_product(self):
        pid = random.choice(self.ctx.products) if self.ctx.products else None
        if pid:
            self.client.patch(self.urls["catalog"] + f"/products/{pid}", name="catalog PATCH /products/{id}",
                              json={"description": f"edited {uuid.uuid4().hex[:8]}"})

    @task(4)
    def order(self):
        if not self.user_id or len(self.ctx.products) < 3:
            return
        items = [{"product_id": pid, "quantity": 1} for pid in random.sample(self.ctx.products, 2)]
        self.post_order(items)

    @task(1)
    def register(self):
        self.client.post(self.urls["users"] + "/users", name="users POST /users",
                         json={"email": f"cdc-{uuid.uuid4().hex[:16]}@msdb.test",
                               "password": "new-user-password", "first_name": "C", "last_name": "D"})
