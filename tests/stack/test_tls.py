"""`msdb up --tls` (issue 15): TLS 1.3 on every database link, on a fresh
stack of its own (base port MSDB_TEST_BASE_PORT + 700) running Debian's
PostgreSQL 15.

Everything is read from the servers (pg_stat_ssl joined with
pg_stat_activity, real refused logins), and every check of
harness.checks.security is shown to fail on a planted weakness.
"""

from __future__ import annotations

import json
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


def test_security_run_passes_on_the_tls_stack(info, tmp_path):
    """Issue 15's acceptance: `msdb up --tls`, then `msdb run security`: every
    check passes (the shop mix judged as smoke, TLS 1.3 read from pg_stat_ssl,
    plaintext and TLS 1.2 refused, isolation, N audited operations -> N
    records, each intrusion detected, no false alarm, no secret in outputs)."""
    out = tmp_path / "run"
    r = msdb("run", "security", "--state-dir", info.state_dir, "--duration", "30s",
             "--out", out, "--quiet", timeout=400)
    results = json.loads((out / "results.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in results["checks"]}
    assert r.returncode == 0, (verdicts, (r.stdout + r.stderr)[-3000:])
    for name in ("tls-on-every-connection", "plaintext-refused", "tlsv1.2-refused", "db-isolation",
                 "redis-isolation", "audit-trail-complete", "detects-cross-database",
                 "detects-failed-logins", "detects-bulk-read", "detects-odd-rate",
                 "false-positives", "no-secret-in-outputs"):
        assert verdicts.get(name) == "pass", (name, verdicts)
    checks = {c["name"]: c for c in results["checks"]}
    # judged again after the reports were written: every file of the run
    # directory was scanned, report.html and report.pdf included
    assert (out / "report.html").is_file() and (out / "report.pdf").is_file()
    on_disk = [p for p in out.rglob("*") if p.is_file() and p.name != "secrets.fingerprints.json"]
    assert checks["no-secret-in-outputs"]["details"]["run_files"] == len(on_disk), on_disk
    assert results["metrics"]["audit_records"] > 100      # the shop mix, audited live


def _pg_iso(info):
    from harness.checks.security import _isolation
    from harness.security.probes import pg_isolation
    return _isolation("db-isolation", pg_isolation(info), "ACCEPTED")


def test_planted_grant_across_services_fails_db_isolation(info):
    assert _pg_iso(info).verdict == "pass"
    users_role = info.databases["users"].role
    orders_db = info.databases["orders"].database
    with _admin(info, info.databases["orders"].instance) as c:
        c.execute(f'GRANT CONNECT ON DATABASE "{orders_db}" TO "{users_role}"')
        try:
            check = _pg_iso(info)
        finally:
            c.execute(f'REVOKE CONNECT ON DATABASE "{orders_db}" FROM "{users_role}"')
    assert check.verdict == "fail", check
    assert check.details["let_in"] == [f"{users_role} -> {orders_db}"]
    assert _pg_iso(info).verdict == "pass"


def _redis_iso(info):
    from harness.checks.security import _isolation
    from harness.security.probes import redis_isolation
    pw = json.loads((Path(info.state_dir) / "secrets.json").read_text())["redis"]
    return _isolation("redis-isolation", redis_isolation(info, pw), "ALLOWED")


def test_planted_redis_acl_with_every_key_fails_redis_isolation(info):
    import redis
    assert _redis_iso(info).verdict == "pass"
    with redis.Redis.from_url(info.redis.url) as r:
        r.execute_command("ACL", "SETUSER", "users", "allkeys")
        try:
            check = _redis_iso(info)
        finally:
            r.execute_command("ACL", "LOAD")      # back to the stack's users.acl
    assert check.verdict == "fail", check
    assert all(k.startswith("users -> ") for k in check.details["let_in"])
    assert _redis_iso(info).verdict == "pass"


def test_audit_probe_counts_every_operation_and_fails_with_audit_off(info):
    from harness.checks.security import _audit
    from harness.security.probes import AUDIT_OPS, audit_probe
    slo = {"audit_missing_max": 0}
    doc = audit_probe(info)
    roles = doc["roles"]
    assert all(r["found"] == r["expected"] == 2 * AUDIT_OPS for r in roles.values()), roles
    sample = next(r["sample"] for r in roles.values())
    assert {"time", "role", "db", "cls", "object"} <= set(sample), sample
    assert _audit(doc, [{"kind": "access", "role": r} for r in roles], set(roles), slo).verdict == "pass"
    users_role = info.databases["users"].role
    with _admin(info, info.databases["users"].instance) as c:
        c.execute(f'ALTER ROLE "{users_role}" SET pgaudit.log = \'none\'')
        try:
            off = audit_probe(info, wait_s=3)
        finally:
            c.execute(f'ALTER ROLE "{users_role}" RESET pgaudit.log')
    assert off["roles"][users_role]["found"] == 0
    check = _audit(off, [{"kind": "access", "role": r} for r in roles], set(roles), slo)
    assert check.verdict == "fail" and check.measured >= 2 * AUDIT_OPS, check


def test_a_password_written_into_a_run_directory_fails_the_secret_scan(info, tmp_path):
    from harness.checks.security import _secret_scan
    from harness.security.secretscan import fingerprints, secrets_of_stack
    from tests.rundirs import make_run
    fp = fingerprints(secrets_of_stack(info, info.state_dir))
    assert fp["secrets"] >= 10
    clean = make_run(tmp_path / "clean", scenario="security",
                     files={"secrets.fingerprints.json": fp, "run.log": "all good\n"})
    assert _secret_scan(clean, {}).verdict == "pass"
    leaky = make_run(tmp_path / "leaky", scenario="security",
                     files={"secrets.fingerprints.json": fp,
                            "run.log": f"could not connect: {info.databases['payments'].dsn}\n"})
    check = _secret_scan(leaky, {})
    assert check.verdict == "fail" and check.details["matches"][0]["file"] == "run.log", check
