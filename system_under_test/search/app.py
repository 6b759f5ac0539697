"""Search service: product full-text search, fed by CDC from the catalog.

Store: PostgreSQL full-text search in `search_service_db` by default, or
Elasticsearch (`engines.search: elasticsearch`, ELASTICSEARCH_URL; the seed's
engine), behind `SearchIndex`.  The feed is the CDC topic `cdc.catalog`
(changes of the catalog's `products` table; with the catalog on MongoDB,
Debezium-MongoDB envelopes, mapped by `envelopes.normalize`), consumed by the
group `search`, idempotent by LSN.  `GET /search?q=` takes optional filters: `category`
(exact), `min_price`, `max_price`.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from fastapi import Path, Query

from .. import config as config_mod
from ..common.app import Service
from ..common.cdc import CdcConsumer
from ..common.errors import BadRequest, NotFound
from .envelopes import normalize
from .index import PgFullTextIndex, SearchIndex

service = Service("search", description="Product full-text search")
app = service.app
index: SearchIndex | None = None


@service.on_startup
async def _index():
    global index
    # Strict: a bad SEARCH_ENGINE stops the service at start-up, naming it.
    engines = config_mod.load(os.environ.get("MSDB_CONFIG"), requires=("engines",)).engines
    if engines.search == "elasticsearch":
        from .index_es import ElasticsearchIndex   # the elasticsearch client only where chosen
        index = ElasticsearchIndex(engines.elasticsearch_url)
        await index.open()
        service.health_check(_index_health)
    else:
        index = PgFullTextIndex(service.db)


@service.on_shutdown
async def _close():
    if hasattr(index, "close"):
        await index.close()


async def _index_health():
    return "index", await index.health()


async def _apply(events: list[dict]) -> list[dict]:
    # The applied events are the normalized ones: their lag samples carry the
    # table and position the index used.
    return await index.apply_changes([n for n in map(normalize, events) if n is not None])


feed = CdcConsumer(service, "catalog", "search", _apply)


@app.get("/search", tags=["search"])
async def search(q: Annotated[str, Query(min_length=1, max_length=200)],
                 limit: Annotated[int, Query(ge=1, le=100)] = 20,
                 category: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
                 min_price: Annotated[Decimal | None, Query(ge=0, le=10**8)] = None,
                 max_price: Annotated[Decimal | None, Query(ge=0, le=10**8)] = None):
    for name, v in (("q", q), ("category", category)):
        if v is not None and "\x00" in v:
            raise BadRequest(f"{name}: must not contain NUL characters", field=name)
    return {"q": q, "items": await index.search(q, limit=limit, category=category,
                                                min_price=min_price, max_price=max_price)}


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
