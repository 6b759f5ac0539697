"""Locust entry point: `locust -f locustfile.py` opens the web UI against the
stack that `msdb up` started (endpoints from .msdb/stack.json, or the state
dir in MSDB_STATE_DIR).  The workload itself lives in scenarios/workload.py.

Under the plain Locust UI nothing has seeded the stack, so the first test
start seeds a small data set through the APIs (MSDB_SEED_USERS and
MSDB_SEED_PRODUCTS, default 50 and 100).
"""

import os

from locust import events

from harness.stack.info import StackInfo
from scenarios.seed import seed
from scenarios.workload import ShopUser, context  # noqa: F401  (Locust collects the User classes here)


@events.init.add_listener
def _point_at_the_stack(environment, **kw):
    try:
        info = StackInfo.load(os.environ.get("MSDB_STATE_DIR", ".msdb"))
    except Exception as e:  # no stack (yet): the UI still opens; the host can be typed in
        print(f"msdb: no stack to point at ({e})")
        return
    context(environment).urls = info.urls
    if not environment.host:
        environment.host = info.urls["users"]


@events.test_start.add_listener
def _seed_once(environment, **kw):
    ctx = context(environment)
    if ctx.products or not ctx.urls:
        return
    data = seed(ctx.urls,
                users=int(os.environ.get("MSDB_SEED_USERS", "50")),
                products=int(os.environ.get("MSDB_SEED_PRODUCTS", "100")))
    ctx.products, ctx.seeded_users = list(data["products"]), len(data["users"])
