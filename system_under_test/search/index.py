"""The search index behind a small interface.

`SearchIndex.upsert(doc)` (newer versions only) and `SearchIndex.search(q)`.
The seed uses Elasticsearch 7; `PgFullTextIndex` uses PostgreSQL full-text
search (tsvector + GIN) in `search_service_db`.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from ..common.db import Database

__all__ = ["SearchIndex", "PgFullTextIndex"]


class SearchIndex(Protocol):
    async def upsert(self, doc: dict) -> bool: ...
    async def search(self, q: str, *, limit: int) -> list[dict]: ...
    async def get(self, product_id: UUID) -> dict | None: ...
    async def count(self) -> int: ...


class PgFullTextIndex:
    def __init__(self, db: Database):
        self.db = db

    async def upsert(self, doc: dict) -> bool:
        """Index a product document; an older version never overwrites a newer one."""
        n = await self.db.execute(
            "index_upsert",
            "INSERT INTO search_documents (product_id, version, name, description, category, price) "
            "VALUES (%(id)s, %(version)s, %(name)s, %(description)s, %(category)s, %(price)s) "
            "ON CONFLICT (product_id) DO UPDATE SET version = EXCLUDED.version, name = EXCLUDED.name, "
            "description = EXCLUDED.description, category = EXCLUDED.category, "
            "price = EXCLUDED.price, indexed_at = now() "
            "WHERE search_documents.version < EXCLUDED.version",
            {"id": doc["id"], "version": doc["version"], "name": doc.get("name", ""),
             "description": doc.get("description", ""), "category": doc.get("category", ""),
             "price": doc.get("price")})
        return n > 0

    async def search(self, q: str, *, limit: int) -> list[dict]:
        return await self.db.fetchall(
            "search",
            "SELECT product_id, name, category, price, version, "
            "ts_rank(tsv, query) AS score FROM search_documents, "
            "websearch_to_tsquery('english', %s) query WHERE tsv @@ query "
            "ORDER BY score DESC, product_id LIMIT %s", (q, limit))

    async def get(self, product_id: UUID) -> dict | None:
        return await self.db.fetchone(
            "index_get", "SELECT product_id, version, name, description, category, price, "
            "indexed_at FROM search_documents WHERE product_id = %s", (product_id,))

    async def count(self) -> int:
        row = await self.db.fetchone("index_count", "SELECT count(*) AS n FROM search_documents")
        return row["n"]
