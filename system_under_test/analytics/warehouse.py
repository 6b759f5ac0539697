"""The analytics warehouse behind a small interface (DuckDB; Redshift in the seed).

Fed by CDC from the orders database (`orders` and `order_items` rows).
Facts are keyed by order id (and product id); every fact row remembers the
LSN of the change it last applied, and a change whose LSN is not newer is
dropped.  `sales_totals` is maintained incrementally from each change's
before and after images (after - before), the way a stream processor keeps
an aggregate: applying a change twice would count it twice, so the totals
are the proof that effects happened exactly once.
"""

from __future__ import annotations

import os
import threading
from decimal import Decimal
from pathlib import Path

import duckdb

__all__ = ["Warehouse"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS order_facts (
    order_id UUID PRIMARY KEY, user_id UUID, status VARCHAR, total_amount DECIMAL(12,2),
    item_count INTEGER, created_at TIMESTAMPTZ, loaded_at TIMESTAMPTZ DEFAULT current_timestamp,
    source_lsn BIGINT);
CREATE TABLE IF NOT EXISTS order_item_facts (
    order_id UUID, product_id UUID, quantity INTEGER, unit_price DECIMAL(10,2),
    source_lsn BIGINT, PRIMARY KEY (order_id, product_id));
CREATE TABLE IF NOT EXISTS sales_totals (
    k VARCHAR PRIMARY KEY, orders BIGINT, confirmed BIGINT, cancelled BIGINT,
    revenue DECIMAL(18,2));
INSERT OR IGNORE INTO sales_totals VALUES ('all', 0, 0, 0, 0);
ALTER TABLE order_facts ADD COLUMN IF NOT EXISTS source_lsn BIGINT;
ALTER TABLE order_item_facts ADD COLUMN IF NOT EXISTS source_lsn BIGINT;
"""


def _guard_disabled() -> bool:
    """Test-only mutation (MSDB_MUTATION=cdc-no-lsn-guard with MSDB_ALLOW_MUTATIONS=1):
    apply every delivered change, so a re-delivery counts twice."""
    return (os.environ.get("MSDB_ALLOW_MUTATIONS") == "1"
            and os.environ.get("MSDB_MUTATION") == "cdc-no-lsn-guard")


NO_GUARD = _guard_disabled()

# A batch's keys and rows go to DuckDB as one list per column, unnested in
# SQL: DuckDB binds every `?` on its own, and a multi-row VALUES list of
# placeholders cost 2.5x the CPU (18 against 7 ms for 180 rows, measured
# 2026-12-02; docs/performance.md).  For the keys an IN list of `?::UUID`
# was no cheaper, with 40 thousand facts or 700 thousand.
_IDS = "SELECT unnest(?::UUID[])"


def _columns(rows: list[list]) -> list[list]:
    """Rows -> one list per column."""
    return [list(c) for c in zip(*rows)]


def _contribution(row: dict | None) -> tuple[int, int, int, Decimal]:
    """What one order row adds to the totals: (orders, confirmed, cancelled, revenue)."""
    if not row:
        return (0, 0, 0, Decimal(0))
    st = row.get("status")
    return (1, int(st == "CONFIRMED"), int(st == "CANCELLED"),
            Decimal(str(row.get("total_amount") or 0)) if st == "CONFIRMED" else Decimal(0))


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

    def apply_changes(self, events: list[dict]) -> list[dict]:
        """Apply a batch of CDC events in one transaction (DuckDB commits are
        expensive: one per event cost ~5 ms of CPU each under load); returns
        the events applied, in order.  Idempotent by LSN."""
        orders = [e for e in events if (e.get("source") or {}).get("table") == "orders"
                  and isinstance(e["source"].get("lsn"), int)]
        items = [e for e in events if (e.get("source") or {}).get("table") == "order_items"
                 and isinstance(e["source"].get("lsn"), int)]
        if not orders and not items:
            return []
        with self.lock:
            self.con.execute("BEGIN")
            try:
                applied = self._apply_orders(orders) + self._apply_items(items)
                touched = sorted({str(r[k]) for e in applied
                                  for r, k in [(e.get("after") or e.get("before") or {},
                                                "id" if e["source"]["table"] == "orders" else "order_id")]
                                  if r.get(k)})
                if touched:
                    self.con.execute(
                        "UPDATE order_facts SET item_count = s.n FROM (SELECT order_id, sum(quantity) AS n "
                        f"FROM order_item_facts WHERE order_id IN ({_IDS}) GROUP BY order_id) s "
                        "WHERE order_facts.order_id = s.order_id", [touched])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
        return applied

    def _known_lsns(self, table: str, order_ids: list[str]) -> dict:
        """(order_id[, product_id]) -> the LSN last applied, for the batch's orders.
        Typed UUID parameters keep the primary-key lookup an index probe (a cast
        of the column to text made every batch scan the whole table)."""
        if not order_ids:
            return {}
        if table == "order_facts":
            rows = self.con.execute("SELECT order_id::VARCHAR, source_lsn FROM order_facts "
                                    f"WHERE order_id IN ({_IDS})", [order_ids]).fetchall()
            return {r[0]: r[1] for r in rows}
        rows = self.con.execute("SELECT order_id::VARCHAR, product_id::VARCHAR, source_lsn "
                                f"FROM order_item_facts WHERE order_id IN ({_IDS})", [order_ids]).fetchall()
        return {f"{r[0]}|{r[1]}": r[2] for r in rows}

    def _apply_orders(self, events: list[dict]) -> list[dict]:
        keys = sorted({str(r["id"]) for e in events for r in [e.get("after") or e.get("before")]
                       if isinstance(r, dict) and r.get("id")})
        known = self._known_lsns("order_facts", keys)
        applied, delta, final = [], [0, 0, 0, Decimal(0)], {}
        for e in events:   # commit order; a key's later change has a larger LSN
            row = e.get("after") if e["op"] != "d" else e.get("before")
            if not isinstance(row, dict) or "id" not in row:
                continue
            key, lsn = str(row["id"]), e["source"]["lsn"]
            if known.get(key) is not None and known[key] >= lsn and not NO_GUARD:
                continue
            known[key] = lsn
            before = _contribution(e.get("before"))
            after = _contribution(e.get("after") if e["op"] != "d" else None)
            for i in range(4):
                delta[i] += after[i] - before[i]
            final[key] = (e["op"], row, lsn)
            applied.append(e)
        upserts = [[k, row.get("user_id"), row.get("status"), row.get("total_amount"),
                    row.get("created_at"), lsn] for k, (op, row, lsn) in final.items() if op != "d"]
        if upserts:
            # One statement (DuckDB's executemany runs row by row and cost ~5 ms
            # of CPU per order under load), its rows as one list per column.
            self.con.execute(
                "INSERT OR REPLACE INTO order_facts (order_id, user_id, status, total_amount, "
                "created_at, source_lsn) SELECT unnest(?::UUID[]), unnest(?::UUID[]), "
                "unnest(?::VARCHAR[]), unnest(?::DECIMAL(12,2)[]), unnest(?::TIMESTAMPTZ[]), "
                "unnest(?::BIGINT[])", _columns(upserts))
        for k, (op, row, lsn) in final.items():
            if op == "d":
                self.con.execute("UPDATE order_facts SET status = 'DELETED', source_lsn = ? "
                                 "WHERE order_id = ?", [lsn, k])
        if applied:
            self.con.execute("UPDATE sales_totals SET orders = orders + ?, confirmed = confirmed + ?, "
                             "cancelled = cancelled + ?, revenue = revenue + ? WHERE k = 'all'",
                             [delta[0], delta[1], delta[2], str(delta[3])])
        return applied

    def _apply_items(self, events: list[dict]) -> list[dict]:
        def key(row):
            return f"{row.get('order_id')}|{row.get('product_id')}"
        rows = [(e, e.get("after") if e["op"] != "d" else e.get("before")) for e in events]
        known = self._known_lsns("order_item_facts", sorted({str(r.get("order_id")) for _, r in rows
                                                             if isinstance(r, dict) and r.get("order_id")}))
        applied, final = [], {}
        for e, row in rows:
            if not isinstance(row, dict) or not row.get("order_id"):
                continue
            k, lsn = key(row), e["source"]["lsn"]
            if known.get(k) is not None and known[k] >= lsn:
                continue
            known[k] = lsn
            final[k] = (e["op"], row, lsn)
            applied.append(e)
        ups = [[r["order_id"], r["product_id"], r.get("quantity"), r.get("unit_price"), lsn]
               for op, r, lsn in final.values() if op != "d"]
        if ups:
            self.con.execute("INSERT OR REPLACE INTO order_item_facts SELECT unnest(?::UUID[]), "
                             "unnest(?::UUID[]), unnest(?::INTEGER[]), unnest(?::DECIMAL(10,2)[]), "
                             "unnest(?::BIGINT[])", _columns(ups))
        for op, r, lsn in final.values():
            if op == "d":
                self.con.execute("DELETE FROM order_item_facts WHERE order_id = ? AND product_id = ?",
                                 [r["order_id"], r["product_id"]])
        return applied

    def totals(self) -> dict:
        with self.lock:
            row = self.con.execute("SELECT orders, confirmed, cancelled, revenue FROM sales_totals "
                                   "WHERE k = 'all'").fetchone()
        return {"orders": int(row[0]), "confirmed": int(row[1]), "cancelled": int(row[2]),
                "revenue": str(row[3])}

    def facts(self, limit: int, offset: int) -> list[dict]:
        with self.lock:
            rows = self.con.execute(
                "SELECT order_id, status, total_amount, item_count, source_lsn FROM order_facts "
                "ORDER BY order_id LIMIT ? OFFSET ?", [limit, offset]).fetchall()
        return [{"order_id": str(r[0]), "status": r[1], "total_amount": str(r[2]),
                 "item_count": r[3], "source_lsn": r[4]} for r in rows]

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
