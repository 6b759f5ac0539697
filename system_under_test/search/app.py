"""Search service: product full-text search, fed by CDC from the catalog.

Store: PostgreSQL full-text search in `search_service_db` (Elasticsearch in
the seed).  The feed is the CDC topic `cdc.catalog` (changes of the
catalog's `products` table), consumed by the group `search`, idempotent by
LSN.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Path, Query

from ..common.app import Service
from ..common.cdc import CdcConsumer
from ..common.errors import BadRequest, NotFound
from .index import PgFullTextIndex

service = Service("search", description="Product full-text search")
app = service.app
index: PgFullTextIndex | None = None


@service.on_startup
async def _index():
    global index
    index = PgFullTextIndex(service.db)


async def _apply(events: list[dict]) -> list[dict]:
    return await index.apply_changes(events)


feed = CdcConsumer(service, "catalog", "search", _apply)


@app.get("/search", tags=["search"])
async def search(q: Annotated[str, Query(min_length=1, max_length=200)],
                 limit: Annotated[int, Query(ge=1, le=100)] = 20):
    if "\x00" in q:
        raise BadRequest("q: must not contain NUL characters", field="q")
    return {"q": q, "items": await index.search(q, limit=limit)}


@app.get("/documents/{product_id}", tags=["search"])
async def document(product_id: Annotated[UUID, Path()]):
    doc = await index.get(product_id)
    if doc is None:
        raise NotFound(f"product {product_id} is not indexed", field="product_id")
    return doc


@app.get("/documents", tags=["search"])
async def count():
    return {"count": await index.count()}


@app.get("/admin/documents", tags=["admin"])
async def versions(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                   offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """Every indexed product's version and LSN, for checkers reading the final state."""
    return {"items": await index.versions(limit=limit, offset=offset), "limit": limit, "offset": offset}
