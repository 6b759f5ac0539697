"""`msdb up --tls` (issue 15): TLS 1.3 on every database link, on a fresh
stack of its own (base port MSDB_TEST_BASE_PORT + 700) running Debian's
PostgreSQL 15.

Everything is read from the servers (pg_stat_ssl joined with
pg_stat_activity, real refused logins), and every check of
harness.checks.security is shown to fail on a planted weakness.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.stack.pg import DEBIAN_PG_BIN, DEBIAN_PG_PACKAGE

if not (DEBIAN_PG_BIN / "postgres").exists():
    pytest.skip(f"--tls needs Debian's {DEBIAN_PG_PACKAGE} ({DEBIAN_PG_BIN} is missing; "
                f"apt-get install -y {DEBIAN_PG_PACKAGE})", allow_module_level=True)
pytest.importorskip("cryptography", reason="--tls makes its CA with the cryptography package")

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from harness.checks.security import (old_tls_refused, plaintext_refused,  # noqa: E402
                                     tls_versions)
from harness.stack.backend import fresh_stack  # noqa: E402
from harness.stack.embedded import StackOptions  # noqa: E402
from tests.fix_cli import msdb  # noqa: E402
from tests.fix_stack import wait_no_leftovers  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_PORT = int(os.environ.get("MSDB_TEST_BASE_PORT", "25400")) + 700
PLANTED_HBA = "host    all          all         127.0.0.1/32   scram-sha-256\n"


@pytest.fixture(scope="module")
def tls_backend(tmp_path_factory):
    state = tmp_path_factory.mktemp("msdb-tls")
    with fresh_stack(StackOptions(state_dir=state, base_port=BASE_PORT, tls=True),
                     log=lambda *a: None) as b:
        yield b
        final = b.info()
    left = wait_no_leftovers(final)
    assert not left, f"processes outlived the TLS stack: {left}"


@pytest.fixture(scope="module")
def info(tls_backend):
    return tls_backend.info()


def _admin(info, name: str) -> psycopg.Connection:
    return psycopg.connect(info.instance(name).admin_dsn, autocommit=True)


def _until(fn, verdict: str, timeout: float = 5.0):
    """A reload is asynchronous: ask until the check says `verdict`."""
    deadline = time.monotonic() + timeout
    while True:
        check = fn()
        if check.verdict == verdict or time.monotonic() > deadline:
            return check
        time.sleep(0.1)


def test_stack_json_says_tls_and_the_real_server(info):
    assert info.tls is True
    relational = next(e for e in info.engines if e.name == "relational")
    assert relational.version.startswith("15."), relational
    for dsn in [i.admin_dsn for i in info.instances] + [d.dsn for d in info.databases.values()] \
            + [d.dsn_via_proxy for d in info.databases.values()] + [info.replica.dsn]:
        params = conninfo_to_dict(dsn)
        assert params["sslmode"] == "verify-full" and Path(params["sslrootcert"]).is_file()


def test_every_service_connection_is_tls13(info):
    check = tls_versions(info)
    assert check.verdict == "pass", check.details
    conns = check.details["connections"]
    primary = info.replica.primary
    # the services' pools, the CDC relay's walsenders and the replica's walreceiver
    for role in ("user_service", "product_service", "order_service", "payment_service",
                 "search_service", "cdc_relay", "replicator"):
        assert conns[primary].get(role) and set(conns[primary][role]) == {"TLSv1.3"}, (role, conns)
    assert set(conns[info.replica.instance]["order_service"]) == {"TLSv1.3"}
    with _admin(info, primary) as c:
        rows = c.execute("SELECT s.ssl, s.version FROM pg_stat_replication r "
                         "JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = %s",
                         (info.replica.instance,)).fetchall()
    assert rows == [(True, "TLSv1.3")]


def test_a_role_that_is_not_connected_fails_the_check(info):
    check = tls_versions(info, expect={info.replica.primary: {"nobody_connects_as_me"}})
    assert check.verdict == "fail"
    assert check.details["missing_roles"] == [f"{info.replica.primary}: nobody_connects_as_me"]


def test_plaintext_is_refused_everywhere(info):
    check = plaintext_refused(info)
    assert check.verdict == "pass", check.details
    assert len(check.details["refused"]) == len(info.databases) + len(info.instances)
    assert all("no encryption" in m for m in check.details["refused"].values())


def test_a_client_offering_only_tls12_is_refused(info):
    check = old_tls_refused(info)
    assert check.verdict == "pass", check.details
    assert all("protocol version" in m for m in check.details["refused"].values())


def test_planted_plaintext_hba_line_fails_both_checks(info):
    """A `host` line (plaintext allowed) added and reloaded: plaintext_refused
    fails, and a plaintext session shows in tls_versions as a failure."""
    primary = info.instance(info.replica.primary)
    hba = Path(primary.datadir) / "pg_hba.conf"
    original = hba.read_text()
    try:
        hba.write_text(original + PLANTED_HBA)
        with _admin(info, primary.name) as c:
            assert c.execute("SELECT pg_reload_conf()").fetchone()[0]
        check = _until(lambda: plaintext_refused(info), "fail")
        assert check.verdict == "fail", check.details
        assert any(w.startswith(primary.name) for w in check.details["accepted"])
        db = info.databases["orders"]
        plain = make_conninfo(db.dsn, sslmode="disable")
        with psycopg.connect(plain, autocommit=True) as held:
            assert held.pgconn.ssl_in_use is False
            seen = tls_versions(info)
        assert seen.verdict == "fail"
        assert any("order_service" in b and "plaintext" in b for b in seen.details["not_tls"])
    finally:
        hba.write_text(original)
        with _admin(info, primary.name) as c:
            c.execute("SELECT pg_reload_conf()")
    assert _until(lambda: plaintext_refused(info), "pass").verdict == "pass"


def test_planted_tls12_minimum_fails_the_version_check(info):
    primary = info.replica.primary
    try:
        with _admin(info, primary) as c:
            c.execute("ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.2'")
            c.execute("SELECT pg_reload_conf()")
        check = _until(lambda: old_tls_refused(info), "fail")
        assert check.verdict == "fail", check.details
        assert any(w.startswith(primary) for w in check.details["accepted"])
    finally:
        with _admin(info, primary) as c:
            c.execute("ALTER SYSTEM RESET ssl_min_protocol_version")
            c.execute("SELECT pg_reload_conf()")
    assert _until(lambda: old_tls_refused(info), "pass").verdict == "pass"


def test_status_is_healthy(info):
    r = msdb("status", "--state-dir", info.state_dir, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_smoke_run_passes_over_tls(info, tmp_path):
    r = msdb("run", "smoke", "--state-dir", info.state_dir, "--duration", "20s", "--users", "20",
             "--out", tmp_path / "run", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # the run's samplers and lag monitor used the TLS admin DSNs
    assert (tmp_path / "run" / "results.json").is_file()
