"""The analytics warehouse behind a small interface (DuckDB; Redshift in the seed).

Facts are keyed by order id and each event carries the order's whole state,
so applying an event twice leaves one row: consumers may be re-delivered.
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb

__all__ = ["Warehouse"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS order_facts (
    order_id UUID PRIMARY KEY, user_id UUID, status VARCHAR, total_amount DECIMAL(12,2),
    item_count INTEGER, created_at TIMESTAMPTZ, loaded_at TIMESTAMPTZ DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS order_item_facts (
    order_id UUID, product_id UUID, quantity INTEGER, unit_price DECIMAL(10,2),
    PRIMARY KEY (order_id, product_id));
"""


class Warehouse:
    """One DuckDB connection; DuckDB is in-process, so calls run in a thread."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(path)
        self.lock = threading.Lock()
        with self.lock:
            self.con.execute(_SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.con.close()

    def apply_orders(self, orders: list[dict]) -> None:
        """Apply a batch of order events in one transaction (DuckDB commits are
        expensive: one per event cost ~5 ms of CPU each under load)."""
        latest = {}
        for o in orders:   # the last event of an order wins
            latest[o["id"]] = o
        facts = [[o["id"], o["user_id"], o["status"], o["total_amount"],
                  sum(int(i["quantity"]) for i in o.get("items") or []), o.get("created_at")]
                 for o in latest.values()]
        items = [[o["id"], i["product_id"], i["quantity"], i["unit_price"]]
                 for o in latest.values() for i in o.get("items") or []]
        if not facts:
            return
        with self.lock:
            self.con.execute("BEGIN")
            try:
                # One multi-row statement per table: DuckDB's executemany runs
                # row by row and cost ~5 ms of CPU per order under load.
                self.con.execute(
                    "INSERT OR REPLACE INTO order_facts (order_id, user_id, status, total_amount, "
                    "item_count, created_at) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(facts)),
                    [v for row in facts for v in row])
                if items:
                    self.con.execute(
                        "INSERT OR REPLACE INTO order_item_facts VALUES "
                        + ", ".join(["(?, ?, ?, ?)"] * len(items)), [v for row in items for v in row])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise

    def summary(self) -> dict:
        with self.lock:
            row = self.con.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'CONFIRMED'), "
                "count(*) FILTER (WHERE status = 'CANCELLED'), "
                "coalesce(sum(total_amount) FILTER (WHERE status = 'CONFIRMED'), 0) "
                "FROM order_facts").fetchone()
        return {"orders": row[0], "confirmed": row[1], "cancelled": row[2], "revenue": str(row[3])}

    def top_products(self, limit: int) -> list[dict]:
        with self.lock:
            rows = self.con.execute(
                "SELECT i.product_id, sum(i.quantity) AS units, sum(i.quantity * i.unit_price) AS revenue "
                "FROM order_item_facts i JOIN order_facts o USING (order_id) "
                "WHERE o.status = 'CONFIRMED' GROUP BY 1 ORDER BY units DESC, 1 LIMIT ?",
                [limit]).fetchall()
        return [{"product_id": str(r[0]), "units": int(r[1]), "revenue": str(r[2])} for r in rows]

    def order(self, order_id: str) -> dict | None:
        with self.lock:
            row = self.con.execute("SELECT order_id, status, total_amount FROM order_facts "
                                   "WHERE order_id = ?", [order_id]).fetchone()
        return None if row is None else {"order_id": str(row[0]), "status": row[1],
                                         "total_amount": str(row[2])}

    def ping(self) -> bool:
        with self.lock:
            return self.con.execute("SELECT 1").fetchone()[0] == 1
