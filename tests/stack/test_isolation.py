"""Seed 2.1 / 接続設定と権限管理: each service role opens only its own database."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

pytestmark = pytest.mark.integration

SERVICES = ("users", "orders", "payments", "catalog", "search")


def _dsn_for(stack, role_of: str, db_of: str) -> str:
    """The role and password of `role_of`, aimed at the database of `db_of`."""
    mine = conninfo_to_dict(stack.databases[role_of].dsn)
    target = conninfo_to_dict(stack.databases[db_of].dsn)
    return make_conninfo(host=target["host"], port=target["port"], dbname=target["dbname"],
                         user=mine["user"], password=mine["password"], connect_timeout=5)


@pytest.mark.parametrize("svc", SERVICES)
def test_role_opens_its_own_database(stack, svc):
    with psycopg.connect(_dsn_for(stack, svc, svc)) as c:
        assert c.execute("SELECT current_database()").fetchone()[0] == stack.databases[svc].database


@pytest.mark.parametrize("svc,other", [(a, b) for a in SERVICES for b in SERVICES if a != b])
def test_role_is_refused_by_every_other_database(stack, svc, other):
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(_dsn_for(stack, svc, other))
    msg = str(e.value)
    # Single topology: the role exists but lacks CONNECT.  Other topologies:
    # the role does not even exist on the other instance.
    assert "permission denied for database" in msg or "authentication failed" in msg, msg


def test_public_has_no_connect_privilege(stack):
    admin = stack.instances[0].admin_dsn
    with psycopg.connect(admin) as c:
        for svc in SERVICES:
            db = stack.databases[svc].database
            role = stack.databases[svc].role
            acl = c.execute("SELECT datacl::text FROM pg_database WHERE datname = %s", (db,)).fetchone()[0]
            assert acl is not None and "=Tc/" not in acl.split(",")[0], acl  # PUBLIC entry gone
            grantees = [a.split("=")[0] for a in acl.strip("{}").split(",")]
            assert "" not in grantees, f"PUBLIC still has privileges on {db}: {acl}"
            assert role in grantees
            assert c.execute("SELECT has_database_privilege(%s, %s, 'CONNECT')",
                             (role, db)).fetchone()[0] is True


def test_psql_as_one_role_on_another_database_is_refused(stack):
    """The acceptance check, with a real psql (PG 18 from the wheel)."""
    import subprocess
    from harness.stack.pg import wheel_bin
    mine = conninfo_to_dict(stack.databases["orders"].dsn)
    target = conninfo_to_dict(stack.databases["users"].dsn)
    r = subprocess.run([str(wheel_bin() / "psql"), "-h", target["host"], "-p", str(target["port"]),
                        "-U", mine["user"], "-d", target["dbname"], "-c", "SELECT 1", "-w"],
                       env={"PGPASSWORD": mine["password"], "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "permission denied for database" in r.stderr, r.stderr
