"""Versioned per-service migrations (yoyo), and seed §4.1 tables exactly as given."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from harness.stack import migrations

pytestmark = pytest.mark.integration


def _conn(stack, svc):
    d = conninfo_to_dict(stack.databases[svc].dsn)
    return dict(host=d["host"], port=int(d["port"]), dbname=d["dbname"], user=d["user"],
                password=d["password"])


@pytest.mark.parametrize("svc", ["users", "orders", "payments", "catalog", "search"])
def test_every_migration_file_is_applied_once(stack, svc):
    files = sorted(p.stem for p in migrations.migrations_dir(svc).glob("*.sql"))
    assert files and files[0].startswith("001_")
    assert migrations.applied(svc, **_conn(stack, svc)) == files
    assert migrations.apply(svc, **_conn(stack, svc)) == []   # re-running is a no-op


# Seed §4.1, column by column: (name, type, nullable, default-contains)
SEED = {
    ("users", "users"): [
        ("id", "uuid", "NO", "gen_random_uuid()"),
        ("email", "character varying(255)", "NO", None),
        ("password_hash", "character varying(255)", "NO", None),
        ("first_name", "character varying(100)", "YES", None),
        ("last_name", "character varying(100)", "YES", None),
        ("created_at", "timestamp with time zone", "YES", "CURRENT_TIMESTAMP"),
        ("updated_at", "timestamp with time zone", "YES", "CURRENT_TIMESTAMP"),
        ("is_active", "boolean", "YES", "true"),
    ],
    ("users", "user_profiles"): [
        ("user_id", "uuid", "NO", None),
        ("avatar_url", "character varying(500)", "YES", None),
        ("preferences", "jsonb", "YES", None),
        ("last_login", "timestamp with time zone", "YES", None),
    ],
    ("orders", "orders"): [
        ("id", "uuid", "NO", "gen_random_uuid()"),
        ("user_id", "uuid", "NO", None),
        ("total_amount", "numeric(10,2)", "NO", None),
        ("status", "character varying(50)", "NO", None),
        ("created_at", "timestamp with time zone", "YES", "CURRENT_TIMESTAMP"),
    ],
    ("orders", "order_items"): [
        ("id", "uuid", "NO", "gen_random_uuid()"),
        ("order_id", "uuid", "YES", None),
        ("product_id", "uuid", "NO", None),
        ("quantity", "integer", "NO", None),
        ("unit_price", "numeric(10,2)", "NO", None),
    ],
}


@pytest.mark.parametrize("svc,table", list(SEED))
def test_seed_tables_are_exactly_as_given(stack, svc, table):
    with psycopg.connect(stack.databases[svc].dsn) as c:
        rows = c.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
            "CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END, pg_get_expr(d.adbin, d.adrelid) "
            "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (table,)).fetchall()
        assert [(r[0], r[1], r[2]) for r in rows] == [(n, t, nl) for n, t, nl, _ in SEED[(svc, table)]]
        for (name, _, _, default), row in zip(SEED[(svc, table)], rows):
            if default:
                assert row[3] is not None and default.lower() in row[3].lower(), (name, row[3])
            else:
                assert row[3] is None, (name, row[3])
        owner = c.execute("SELECT tableowner FROM pg_tables WHERE tablename = %s", (table,)).fetchone()[0]
        assert owner == stack.databases[svc].role


def test_seed_constraints(stack):
    with psycopg.connect(stack.databases["users"].dsn) as c:
        cons = {r[0] for r in c.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = ANY "
            "(ARRAY['users'::regclass, 'user_profiles'::regclass])").fetchall()}
    assert "UNIQUE (email)" in cons and "FOREIGN KEY (user_id) REFERENCES users(id)" in cons
    with psycopg.connect(stack.databases["orders"].dsn) as c:
        cons = {r[0] for r in c.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = ANY "
            "(ARRAY['orders'::regclass, 'order_items'::regclass])").fetchall()}
    assert "FOREIGN KEY (order_id) REFERENCES orders(id)" in cons
    # 参照のみ、外部キー制約は設定しない: no FK from orders.user_id or order_items.product_id
    assert not any("user_id" in c and "FOREIGN" in c for c in cons)
    assert not any("product_id" in c and "FOREIGN" in c for c in cons)
