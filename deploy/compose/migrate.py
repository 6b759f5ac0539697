"""The compose stack's one-shot `migrate` service: every service's versioned
migrations (system_under_test/<service>/migrations, yoyo), each applied as the
service's own role to its own database, straight to the instance that holds
it (migrations are set-up, not traffic: no fault proxy), over TLS.

The databases and roles exist already (deploy/compose/postgres/initdb).  The
services start only once this exits 0 (depends_on: service_completed_successfully).

Environment: MSDB_MIGRATE_HOSTS ("users=pg-main,orders=pg-main,...") and
MSDB_PG_<ROLE>_PASSWORD for each role.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import quote

import psycopg
from psycopg.conninfo import make_conninfo
from yoyo import get_backend, read_migrations

from harness.stack.compose import role_env
from harness.stack.migrations import migrations_dir
from harness.stack.topology import SERVICE_BY_NAME

WAIT_S = 180.0


def wait_for(conninfo: str, what: str) -> None:
    """Until the role can log in: the instance may still be in its first start."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with psycopg.connect(conninfo, connect_timeout=3):
                return
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"migrate: {what} did not accept its role within {WAIT_S:.0f} s: "
                                 f"{str(e).strip()}") from None
            time.sleep(1)


def main() -> int:
    hosts = dict(item.split("=", 1) for item in os.environ["MSDB_MIGRATE_HOSTS"].split(","))
    for name, host in hosts.items():
        svc = SERVICE_BY_NAME[name]
        password = os.environ[role_env(svc.role)]
        wait_for(make_conninfo(host=host, port=5432, dbname=svc.database,
                                user=svc.role, password=password,
                                sslmode="require"),
                 f"{host}/{svc.database}")
        # harness.stack.migrations.apply() speaks to the embedded stack, whose
        # PostgreSQL has no TLS (sslmode=disable); here pg_hba.conf takes TLS only.
        backend = get_backend(f"postgresql+psycopg://{quote(svc.role, safe='')}:"
                              f"{quote(password, safe='')}@{host}:5432/"
                              f"{quote(svc.database, safe='')}?sslmode=require")
        migrations = read_migrations(str(migrations_dir(svc.migrations)))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        print(f"migrate: {name} on {host}/{svc.database}: "
              f"{len(pending)} applied, {len(migrations) - len(pending)} already there", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
