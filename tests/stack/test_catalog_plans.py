"""The saga's catalog statements read one order's rows, however many orders came before.

A confirmation moves a reservation out of RESERVED in a non-HOT update; the
old version's entry stays in any index that holds RESERVED rows until
vacuum.  With an index on the state alone, the confirmation's plan read all
of them (a BitmapAnd over ~18,000 entries a minute into an order load), and
catalog's database CPU per order doubled between two autovacuums
(docs/performance.md, 2026-12-03; migration 006).  Here 20,000 reservations
are made and confirmed inside a transaction that is rolled back, so their
old versions are all still indexed, and the confirmation of another order
must not read them.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from system_under_test.catalog.store import Inventory

pytestmark = pytest.mark.integration

PLANTED = 20_000


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _plan(conn: psycopg.Connection, sql: str) -> dict:
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql).fetchone()[0]
    return (row if isinstance(row, list) else json.loads(row))[0]["Plan"]


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
def test_confirming_an_order_reads_only_its_own_index_entries(stack, plan_mode):
    with psycopg.connect(stack.databases["catalog"].dsn) as conn:
        try:
            pid = conn.execute("INSERT INTO products (doc) VALUES ('{\"name\": \"planted\"}') "
                               "RETURNING id").fetchone()[0]
            conn.execute("INSERT INTO reservations (order_id, product_id, quantity, state) "
                         "SELECT gen_random_uuid(), %s, 1, 'RESERVED' FROM generate_series(1, %s)",
                         (pid, PLANTED))
            conn.execute("UPDATE reservations SET state = 'CONFIRMED' WHERE product_id = %s", (pid,))
            conn.execute("ANALYZE reservations")
            conn.execute(f"SET LOCAL plan_cache_mode = {plan_mode}")
            # The service's own statement, as a server-side prepared statement
            # (psycopg prepares it after a few runs).
            sql = Inventory.CONFIRM.replace("%(o)s", "$1")
            conn.execute(f"PREPARE confirm_probe(uuid) AS {sql}")
            plan = _plan(conn, f"EXECUTE confirm_probe('{uuid.uuid4()}')")
        finally:
            conn.rollback()
    # Blocks, not rows: a scan returns only the rows its filter keeps, and the
    # old index's plan returned 0 rows while it touched 245 (custom) and 505
    # (generic) blocks of entries other orders left.
    blocks = plan["Shared Hit Blocks"] + plan.get("Shared Read Blocks", 0)
    scans = [f"{n['Node Type']} {n.get('Index Name', n.get('Relation Name', ''))}".strip()
             for n in _nodes(plan) if "Scan" in n["Node Type"]]
    assert blocks < 20, f"the confirmation touched {blocks} blocks ({PLANTED} planted; scans {scans})"
