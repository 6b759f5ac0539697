"""Search service: product full-text search, fed from catalog changes.

Store: PostgreSQL full-text search in `search_service_db` (Elasticsearch in
the seed).  The feed is the bus topic `catalog.products`, consumed by the
group `search`; the CDC pipeline replaces this simple feed later.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated
from uuid import UUID

from fastapi import Path, Query

from ..common.app import Service
from ..common.errors import BadRequest, NotFound
from .index import PgFullTextIndex

service = Service("search", description="Product full-text search")
app = service.app
index: PgFullTextIndex | None = None


@service.on_startup
async def _index():
    global index
    index = PgFullTextIndex(service.db)


@service.background
async def _feed(stop):
    async def handle(event: dict) -> None:
        product = event.get("product")
        if isinstance(product, dict) and "id" in product and "version" in product:
            await index.upsert(product)
    await service.bus.consume("catalog.products", "search",
                              f"{socket.gethostname()}-{os.getpid()}", handle, stop)


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
