"""The running embedded stack: health, stack.json, replica streaming, archiving, idempotent up."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from harness import procs
from harness.stack import StackOptions, load_stack, status, up

pytestmark = pytest.mark.integration


def test_every_part_is_healthy_and_the_replica_streams(stack, state_dir):
    parts = status(state_dir)
    assert all(p.healthy for p in parts), [(p.name, p.detail) for p in parts if not p.healthy]
    names = {p.name for p in parts}
    assert {"pg-main", "pg-replica", "replication", "redis", "users", "catalog", "orders",
            "payments", "search", "analytics"} <= names
    primary = next(i for i in stack["postgres"]["instances"] if i["role"] == "primary")
    with psycopg.connect(primary["admin_dsn"]) as c:
        row = c.execute("SELECT state, sync_state FROM pg_stat_replication "
                        "WHERE application_name = 'pg-replica'").fetchone()
    assert row is not None and row[0] == "streaming"


def test_stack_json_records_every_endpoint_dsn_and_pid(state_dir):
    # Read it now: fault tests restart parts, and restarts rewrite stack.json.
    stack = load_stack(state_dir)
    assert stack["state"] == "running"
    for name, svc in stack["services"].items():
        assert svc["url"].startswith("http://127.0.0.1:") and svc["pid"] > 0
    for svc in ("users", "orders", "payments", "catalog", "search"):
        d = stack["databases"][svc]
        assert d["dsn"].startswith(f"postgresql://{d['role']}:") and d["database"].endswith("_db")
    assert stack["replica"]["dsn"].startswith("postgresql://order_service:")
    assert stack["redis"]["url"].startswith("redis://") and stack["redis"]["pid"] > 0
    for inst in stack["postgres"]["instances"]:
        assert inst["pid"] > 0 and inst["admin_dsn"].startswith("postgresql://postgres:")
    recs = [procs.ProcRecord.from_json(p) for p in stack["processes"]]
    assert len(recs) == 7 + 2 + 1 + 1      # services (with the CDC relay), postgres x2, redis, proxy
    assert all(procs.is_running(r) for r in recs)
    names = {p["name"] for p in stack["proxy"]["proxies"]}
    assert names == {"users-db", "catalog-db", "orders-db", "payments-db", "search-db",
                     "orders-replica", "users-redis", "catalog-redis", "orders-redis",
                     "search-redis", "analytics-redis", "users-to-orders", "users-to-payments",
                     "orders-to-catalog", "orders-to-payments", "orders-replication",
                     "cdc-redis", "cdc-users-db", "cdc-catalog-db", "cdc-orders-db"}
    for p in stack["proxy"]["proxies"]:
        assert p["listen"].startswith("127.0.0.1:") and p["upstream"].startswith("127.0.0.1:")


def test_replica_serves_what_the_primary_wrote(stack):
    primary = stack["databases"]["orders"]["dsn"]
    with psycopg.connect(primary, autocommit=True) as c:
        lsn = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with psycopg.connect(stack["replica"]["dsn"], autocommit=True) as r:
        assert r.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        deadline = time.monotonic() + 10
        while r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0] is not True:
            assert time.monotonic() < deadline, "replica did not replay the primary's WAL"
            time.sleep(0.05)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            r.execute("CREATE TABLE x (i int)")


def test_wal_archiving_writes_into_the_state_dir(stack, state_dir):
    inst = next(i for i in stack["postgres"]["instances"] if "orders" in i["services"] and i["role"] == "primary")
    archive = Path(inst["wal_archive"])
    assert str(archive.resolve()).startswith(str((state_dir / "pg").resolve()))
    with psycopg.connect(inst["admin_dsn"], autocommit=True) as c:
        assert c.execute("SHOW archive_mode").fetchone()[0] == "on"
        assert c.execute("SHOW archive_timeout").fetchone()[0] == "15min"
        c.execute("CREATE TEMP TABLE t AS SELECT 1")  # some WAL to switch away from
        seg = c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        c.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 15
    while not (archive / seg).exists():
        assert time.monotonic() < deadline, f"{seg} never reached {archive}"
        time.sleep(0.1)


def test_up_is_idempotent(stack, state_dir):
    before = load_stack(state_dir)
    opts = StackOptions(state_dir=state_dir, topology="single", base_port=stack["base_port"])
    info, started = up(opts, log=lambda *a: None)
    assert started is False
    assert info["processes"] == before["processes"]


def test_every_link_goes_through_its_proxy(stack, urls):
    """A toxic on a named proxy reaches the traffic of exactly that link."""
    import httpx
    from chaos.client import ToxiproxyServer
    api = ToxiproxyServer("127.0.0.1", stack["proxy"]["port"])
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


def test_replica_streams_through_the_replication_proxy(stack):
    from chaos.client import ToxiproxyServer
    api = ToxiproxyServer("127.0.0.1", stack["proxy"]["port"])
    primary = next(i for i in stack["postgres"]["instances"] if i["name"] == stack["replica"]["primary"])

    def state():
        with psycopg.connect(primary["admin_dsn"], autocommit=True) as c:
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
