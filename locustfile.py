"""Locust entry point: `locust -f locustfile.py` opens the web UI against the
stack that `msdb up` started (endpoints from .msdb/stack.json, the state dir
in MSDB_STATE_DIR, or a deployment's targets file in MSDB_TARGET), with
msdb's cockpit in it (harness/cockpit, docs/cockpit.md): the scenario user
classes in Locust's class picker, live panels (health, pools, lag, faults)
as extra tabs, a fault panel and HTTP API under /msdb/, and a judged run
directory with its report for every test started in the UI.

The workload itself lives in scenarios/workload.py.  Every user class is
imported here so that Locust offers them all; without the UI (`--headless`)
and without class names on the command line, only ShopUser runs.

Under the plain Locust UI nothing has seeded the stack, so the first test
start seeds a small data set through the APIs (MSDB_SEED_USERS and
MSDB_SEED_PRODUCTS, default 50 and 100).
"""

import os
import sys

from locust import events
from locust.runners import WorkerRunner

from harness.cockpit import install, open_stack
from scenarios.seed import seed
from scenarios.workload import CdcUser, NoisyUser, ProbeUser, RywUser, SagaUser, ShopUser, context

# Locust collects the User classes from this module: all of them go to its class picker.
__all__ = ["ShopUser", "SagaUser", "NoisyUser", "ProbeUser", "RywUser", "CdcUser"]


@events.init.add_listener
def _point_at_the_stack(environment, **kw):
    opts = environment.parsed_options
    if environment.web_ui is None and not getattr(opts, "user_classes", None) \
            and len(environment.user_classes) > 1:
        environment.user_classes = [ShopUser]     # headless, no class named: the shop mix
    try:
        backend = open_stack()
        info = backend.info()
    except Exception as e:  # every task needs the stack's URLs: without one, nothing can run
        print(f"msdb: no stack to drive ({e}).\nStart one with `msdb up`, or point at one with "
              f"MSDB_STATE_DIR=DIR or MSDB_TARGET=FILE; then run locust again.", file=sys.stderr)
        raise SystemExit(3)     # as `msdb status` with no stack (Locust re-raises SystemExit)
    context(environment).urls = info.urls
    if not environment.host:
        environment.host = info.urls["users"]
    if environment.web_ui is not None and not isinstance(environment.runner, WorkerRunner):
        install(environment, backend)


@events.test_start.add_listener
def _seed_once(environment, **kw):
    ctx = context(environment)
    if ctx.products or not ctx.urls:
        return
    data = seed(ctx.urls,
                users=int(os.environ.get("MSDB_SEED_USERS", "50")),
                products=int(os.environ.get("MSDB_SEED_PRODUCTS", "100")))
    ctx.products, ctx.seeded_users = list(data["products"]), len(data["users"])
