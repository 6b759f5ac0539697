"""The search index behind a small interface.

`SearchIndex.apply_changes(events)` (CDC events of the catalog's products,
idempotent by LSN) and `SearchIndex.search(q, limit, category, min_price,
max_price)`: every word of `q` must match (name, category or description),
and the filters narrow without scoring.  The seed uses Elasticsearch 7
(`index_es.ElasticsearchIndex`, selected by `engines.search`);
`PgFullTextIndex` uses PostgreSQL full-text search (tsvector + GIN) in
`search_service_db`.
"""

from __future__ import annotations

from dataclasses import dataclass

from decimal import Decimal
from typing import Protocol
from uuid import UUID

from ..common.db import Database

__all__ = ["SearchIndex", "PgFullTextIndex"]



@dataclass(frozen=True)
class ProductChange:
    """One CDC event of the catalog's `products` table, as both indexes apply it."""
    id: object
    lsn: int
    deleted: bool
    version: int = 0
    name: str = ""
    description: str = ""
    category: str = ""
    price: object = None


def product_change(e: dict) -> ProductChange | None:
    """The product change an event carries, or None for any other event (another
    table, no LSN, no row id): one reading of the envelope for every index."""
    src = e.get("source") or {}
    if src.get("table") != "products" or not isinstance(src.get("lsn"), int):
        return None
    deleted = e.get("op") == "d"
    row = e.get("before") if deleted else e.get("after")
    if not isinstance(row, dict) or "id" not in row:
        return None
    if deleted:
        return ProductChange(id=row["id"], lsn=src["lsn"], deleted=True)
    doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
    return ProductChange(id=row["id"], lsn=src["lsn"], deleted=False, version=row.get("version", 0),
                         name=str(doc.get("name", "")), description=str(doc.get("description", "")),
                         category=str(doc.get("category", "")), price=doc.get("price"))

class SearchIndex(Protocol):
    async def apply_changes(self, events: list[dict]) -> list[dict]: ...
    async def search(self, q: str, *, limit: int, category: str | None = None,
                     min_price: Decimal | None = None,
                     max_price: Decimal | None = None) -> list[dict]: ...
    async def get(self, product_id: UUID) -> dict | None: ...
    async def count(self) -> int: ...
    async def versions(self, *, limit: int, offset: int) -> list[dict]: ...


_UPSERT = (
    "INSERT INTO search_documents (product_id, version, name, description, category, price, "
    "source_lsn) SELECT %(id)s, %(version)s, %(name)s, %(description)s, %(category)s, %(price)s, "
    "%(lsn)s WHERE NOT EXISTS (SELECT 1 FROM search_tombstones WHERE product_id = %(id)s "
    "AND source_lsn >= %(lsn)s) "
    "ON CONFLICT (product_id) DO UPDATE SET version = EXCLUDED.version, name = EXCLUDED.name, "
    "description = EXCLUDED.description, category = EXCLUDED.category, price = EXCLUDED.price, "
    "source_lsn = EXCLUDED.source_lsn, indexed_at = now() "
    "WHERE search_documents.source_lsn < EXCLUDED.source_lsn RETURNING 1")
_DELETE = (
    "WITH t AS (INSERT INTO search_tombstones VALUES (%(id)s, %(lsn)s) "
    "ON CONFLICT (product_id) DO UPDATE SET source_lsn = EXCLUDED.source_lsn "
    "WHERE search_tombstones.source_lsn < EXCLUDED.source_lsn RETURNING 1) "
    "DELETE FROM search_documents WHERE product_id = %(id)s AND source_lsn < %(lsn)s "
    "AND EXISTS (SELECT 1 FROM t) RETURNING 1")


class PgFullTextIndex:
    def __init__(self, db: Database):
        self.db = db

    async def apply_changes(self, events: list[dict]) -> list[dict]:
        """Apply CDC events of the catalog's `products` table in one transaction.
        Each document keeps the LSN of the change it last applied; a change
        whose LSN is not newer is dropped.  Returns the events applied."""
        applied = []
        async with self.db.transaction("index_apply") as conn:
            for e in events:
                ch = product_change(e)
                if ch is None:
                    continue
                if ch.deleted:
                    cur = await conn.execute(_DELETE, {"id": ch.id, "lsn": ch.lsn})
                else:
                    cur = await conn.execute(_UPSERT, {
                        "id": ch.id, "version": ch.version, "name": ch.name,
                        "description": ch.description, "category": ch.category, "price": ch.price,
                        "lsn": ch.lsn})
                # RETURNING + fetch, not rowcount: transactions run pipelined,
                # and a pipelined cursor's rowcount is not known yet.
                if await cur.fetchone() is not None:
                    applied.append(e)
        return applied

    async def versions(self, *, limit: int, offset: int) -> list[dict]:
        return await self.db.fetchall(
            "index_versions", "SELECT product_id, version, source_lsn FROM search_documents "
            "ORDER BY product_id LIMIT %s OFFSET %s", (limit, offset))

    async def search(self, q: str, *, limit: int, category: str | None = None,
                     min_price: Decimal | None = None, max_price: Decimal | None = None) -> list[dict]:
        # Filters as `%s IS NULL OR ...`: one statement text for every
        # combination, so it stays one prepared statement and one metric name.
        return await self.db.fetchall(
            "search",
            "SELECT product_id, name, category, price, version, "
            "ts_rank(tsv, query) AS score FROM search_documents, "
            "websearch_to_tsquery('english', %s) query WHERE tsv @@ query "
            "AND (%s::text IS NULL OR category = %s::text) "
            "AND (%s::numeric IS NULL OR price >= %s::numeric) "
            "AND (%s::numeric IS NULL OR price <= %s::numeric) "
            "ORDER BY score DESC, product_id LIMIT %s",
            (q, category, category, min_price, min_price, max_price, max_price, limit))

    async def get(self, product_id: UUID) -> dict | None:
        return await self.db.fetchone(
            "index_get", "SELECT product_id, version, name, description, category, price, "
            "indexed_at FROM search_documents WHERE product_id = %s", (product_id,))

    async def count(self) -> int:
        row = await self.db.fetchone("index_count", "SELECT count(*) AS n FROM search_documents")
        return row["n"]
