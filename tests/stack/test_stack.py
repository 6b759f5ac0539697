"""The running embedded stack: health, stack.json, replica streaming, archiving, idempotent up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from chaos.client import ToxiproxyServer
from harness.errors import ConfigError
from harness.stack import procs
from harness.stack.embedded import StackOptions
from harness.stack.embedded_backend import EmbeddedBackend
from harness.stack.info import StackInfo

pytestmark = pytest.mark.integration


def test_every_part_is_healthy_and_the_replica_streams(stack, backend):
    parts = backend.status()
    assert all(p.healthy for p in parts), [(p.name, p.detail) for p in parts if not p.healthy]
    names = {p.name for p in parts}
    assert {"pg-main", "pg-replica", "replication", "redis", "users", "catalog", "orders",
            "payments", "search", "analytics"} <= names
    with psycopg.connect(stack.primaries[0].admin_dsn) as c:
        row = c.execute("SELECT state, sync_state FROM pg_stat_replication "
                        "WHERE application_name = 'pg-replica'").fetchone()
    assert row is not None and row[0] == "streaming"


def test_stack_json_records_every_endpoint_dsn_and_pid(backend):
    # Read it now: fault tests restart parts, and restarts rewrite stack.json.
    stack = backend.info()
    assert stack.schema == 2 and stack.state == "running" and stack.backend == "embedded"
    for name, svc in stack.services.items():
        assert svc.url.startswith("http://127.0.0.1:")
    for svc in ("users", "orders", "payments", "catalog", "search"):
        d = stack.databases[svc]
        assert d.dsn.startswith(f"postgresql://{d.role}:") and d.database.endswith("_db")
        assert d.link == f"{svc}-db" and d.dsn_via_proxy != d.dsn
    assert stack.replica.dsn.startswith("postgresql://order_service:")
    assert stack.redis.url.startswith("redis://")
    for inst in stack.instances:
        assert inst.admin_dsn.startswith("postgresql://postgres:")
    recs = [procs.ProcRecord.from_json(p.proc) for p in stack.parts if p.proc]
    assert len(recs) == 7 + 2 + 1 + 1      # services (with the CDC relay), postgres x2, redis, proxy
    assert all(procs.is_running(r) and r.pid > 0 for r in recs)
    assert {p.name for p in stack.parts} >= {"proxy", "redis", "pg-main", "pg-replica", "orders", "cdc"}
    names = stack.proxy.names
    assert names == {"users-db", "catalog-db", "orders-db", "payments-db", "search-db",
                     "orders-replica", "users-redis", "catalog-redis", "orders-redis",
                     "search-redis", "analytics-redis", "users-to-orders", "users-to-payments",
                     "orders-to-catalog", "orders-to-payments", "orders-replication",
                     "cdc-redis", "cdc-users-db", "cdc-catalog-db", "cdc-orders-db"}
    for p in stack.proxy.proxies:
        assert p.listen.startswith("127.0.0.1:") and p.upstream.startswith("127.0.0.1:")
    kinds = {e.name: e for e in stack.engines}
    assert kinds["relational"].stand_in is False and kinds["search"].stands_in_for == "elasticsearch"


def test_stack_json_is_read_strictly(tmp_path, state_dir):
    """A key missing or unknown, or another schema, is an error naming it (exit 2)."""
    good = json.loads((state_dir / "stack.json").read_text())
    for change, needle in ((lambda d: d.pop("redis"), "redis: missing key"),
                           (lambda d: d["services"]["users"].update(port=1), "services.users.port: unknown key"),
                           (lambda d: d.update(schema=1), "schema 1"),
                           (lambda d: d["databases"]["orders"].update(dsn=5), "databases.orders.dsn")):
        d = json.loads(json.dumps(good))
        change(d)
        (tmp_path / "stack.json").write_text(json.dumps(d))
        with pytest.raises(ConfigError, match=needle):
            StackInfo.load(tmp_path)
    assert StackInfo.from_json(good) == StackInfo.load(state_dir)


def test_replica_serves_what_the_primary_wrote(stack):
    primary = stack.databases["orders"].dsn
    with psycopg.connect(primary, autocommit=True) as c:
        lsn = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with psycopg.connect(stack.replica.dsn, autocommit=True) as r:
        assert r.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        deadline = time.monotonic() + 10
        while r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0] is not True:
            assert time.monotonic() < deadline, "replica did not replay the primary's WAL"
            time.sleep(0.05)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            r.execute("CREATE TABLE x (i int)")


def test_wal_archiving_writes_into_the_state_dir(stack, state_dir):
    inst = stack.instance_of("orders")
    archive = Path(inst.wal_archive)
    assert str(archive.resolve()).startswith(str((state_dir / "pg").resolve()))
    with psycopg.connect(inst.admin_dsn, autocommit=True) as c:
        assert c.execute("SHOW archive_mode").fetchone()[0] == "on"
        assert c.execute("SHOW archive_timeout").fetchone()[0] == "15min"
        c.execute("CREATE TEMP TABLE t AS SELECT 1")  # some WAL to switch away from
        seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        c.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 15
    while not (archive / seg).exists():
        assert time.monotonic() < deadline, f"{seg} never reached {archive}"
        time.sleep(0.1)


def test_up_is_idempotent(stack, backend):
    before = backend.info()
    opts = StackOptions(state_dir=backend.state_dir, topology="single", base_port=stack.base_port)
    info, started = EmbeddedBackend(opts).start(log=lambda *a: None)
    assert started is False
    assert info.parts == before.parts


def test_every_link_goes_through_its_proxy(stack, urls):
    """A toxic on a named proxy reaches the traffic of exactly that link."""
    api = ToxiproxyServer.at(stack.proxy.api)
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{urls['catalog']}/products", json={"sku": "p", "name": "Proxy probe",
                                                             "price": "1.00", "stock": 5})
        pid = r.json()["id"]
        def timed(url):
            t0 = time.perf_counter()
            assert http.get(url).status_code == 200
            return (time.perf_counter() - t0) * 1000
        base = min(timed(f"{urls['catalog']}/inventory/{pid}") for _ in range(5))
        api.add_toxic("catalog-db", "latency", attributes={"latency": 150})
        try:
            slowed = min(timed(f"{urls['catalog']}/inventory/{pid}") for _ in range(3))
            # users -> its own database is not affected
            other = min(timed(f"{urls['payments']}/users/{pid}/payments") for _ in range(3))
        finally:
            api.remove_toxic("catalog-db", "latency_downstream")
        assert slowed >= base + 140, (base, slowed)
        assert other < 140, other


@pytest.mark.slow   # several seconds: the full suite runs it, the fast loop does not
def test_replica_streams_through_the_replication_proxy(stack):
    api = ToxiproxyServer.at(stack.proxy.api)
    primary = stack.instance(stack.replica.primary)

    def state():
        with psycopg.connect(primary.admin_dsn, autocommit=True) as c:
            row = c.execute("SELECT state FROM pg_stat_replication WHERE application_name = 'pg-replica'").fetchone()
        return row[0] if row else None
    assert state() == "streaming"
    api.set_enabled("orders-replication", False)
    try:
        deadline = time.monotonic() + 15
        while state() is not None:
            assert time.monotonic() < deadline, "replication survived a disabled proxy: it bypasses it"
            time.sleep(0.1)
    finally:
        api.set_enabled("orders-replication", True)
    deadline = time.monotonic() + 30
    while state() != "streaming":
        assert time.monotonic() < deadline, "replication did not come back through the proxy"
        time.sleep(0.2)
