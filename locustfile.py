"""Locust entry point: `locust -f locustfile.py` opens the web UI against the
stack that `msdb up` started (endpoints from .msdb/stack.json, or the state
dir in MSDB_STATE_DIR).  The workload itself lives in scenarios/workload.py.
"""

from scenarios.workload import ShopUser  # noqa: F401  (Locust collects User classes)
