"""Catalog service (with inventory): product documents, cache-aside reads in
Redis, and stock reservations for the order saga.

Store: PostgreSQL JSONB in `product_service_db` by default, or MongoDB
(`engines.catalog: mongodb`, MONGODB_URL; the seed's engine, store_mongo.py),
behind the same two interfaces.  On MongoDB the service has no PostgreSQL
pool at all.  Product changes reach the search index through CDC (logical decoding of
the `products` table), not through the service: a write that committed is
never lost to the index, and nothing is published for a write that did not.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Path, Query, Response
from pydantic import Field

from .. import config as config_mod
from ..common.app import JSON, Service
from ..common.contract import errors
from ..common.errors import BadRequest, NotFound
from ..common.metrics import CACHE
from ..common.types import Model, Money, Quantity, text
from .store import Inventory, PgJsonbProductRepository, check_items

log = logging.getLogger("msdb.catalog")
# Strict: a bad CATALOG_ENGINE (or a missing MONGODB_URL) stops the service
# at start-up, naming it.  Read before the Service exists, because the
# engine decides whether the service has a PostgreSQL pool.
ENGINES = config_mod.load(os.environ.get("MSDB_CONFIG"), requires=("engines",)).engines
service = Service("catalog", description="Product documents, cache-aside reads, inventory",
                  database=ENGINES.catalog == "postgres")
app = service.app

CACHE_TTL_S = 60
products = None    # ProductRepository
inventory = None   # Inventory or MongoInventory
mongo = None       # MongoCatalog, when engines.catalog is mongodb


@service.on_startup
async def _stores():
    global products, inventory, mongo
    if ENGINES.catalog == "mongodb":
        from .store_mongo import MongoCatalog, MongoInventory, MongoProductRepository  # pymongo only where chosen
        mongo = MongoCatalog(ENGINES.mongodb_url)
        await mongo.open()
        products, inventory = MongoProductRepository(mongo), MongoInventory(mongo)
        service.health_check(_mongo_health)
    else:
        products = PgJsonbProductRepository(service.db)
        inventory = Inventory(service.db)


async def _mongo_health():
    return "database", await mongo.health()


@service.on_shutdown
async def _close():
    if mongo is not None:
        await mongo.close()


class NewProduct(Model):
    sku: text(64, 1)
    name: text(200, 1)
    description: text(4000) = ""
    category: text(100) = ""
    price: Money
    stock: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class ProductChange(Model):
    name: text(200, 1) | None = None
    description: text(4000) | None = None
    category: text(100) | None = None
    price: Money | None = None


class Item(Model):
    product_id: UUID
    quantity: Quantity


class ReserveRequest(Model):
    order_id: UUID
    items: Annotated[list[Item], Field(min_length=1, max_length=50)]


ProductId = Annotated[UUID, Path(description="product id")]
OrderId = Annotated[UUID, Path(description="order id")]


def _cache_key(pid) -> str:
    return f"catalog:product:{pid}"


@app.post("/products", status_code=201, tags=["products"], responses=errors(409))
async def create_product(body: NewProduct):
    doc = body.model_dump(exclude={"stock"}, mode="json")
    product = await products.create(doc, body.stock)
    return product


@app.get("/products", tags=["products"])
async def list_products(limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                        category: Annotated[str | None, Query(max_length=100)] = None):
    if category is not None and "\x00" in category:
        raise BadRequest("category: must not contain NUL characters", field="category")
    return {"items": await products.list(limit=limit, offset=offset, category=category),
            "limit": limit, "offset": offset}


@app.get("/products/{product_id}", tags=["products"])
async def get_product(product_id: ProductId):
    key = _cache_key(product_id)
    cached = None
    try:
        cached = await service.redis.get(key)
    except Exception as e:  # a cache outage degrades to database reads
        log.debug("cache get failed: %s", e)
    if cached is not None:
        CACHE.labels("hit").inc()
        return Response(cached, media_type="application/json", headers={"X-Cache": "hit"})
    CACHE.labels("miss").inc()
    product = await products.get(product_id)
    if product is None:
        raise NotFound(f"product {product_id} does not exist", field="product_id")
    resp = JSON(product, headers={"X-Cache": "miss"})
    try:
        await service.redis.set(key, resp.body, ex=CACHE_TTL_S)
    except Exception as e:  # a cache outage degrades to database reads
        log.debug("cache set failed: %s", e)
    return resp


@app.patch("/products/{product_id}", tags=["products"])
async def update_product(product_id: ProductId, body: ProductChange):
    changes = body.model_dump(exclude_none=True, mode="json")
    if not changes:
        raise BadRequest("body: no field to change", field="body")
    product = await products.update(product_id, changes)
    if product is None:
        raise NotFound(f"product {product_id} does not exist", field="product_id")
    # Invalidate after commit: the next read repopulates from the database.
    try:
        await service.redis.delete(_cache_key(product_id))
    except Exception as e:  # cannot invalidate: the TTL bounds staleness
        log.warning("cache invalidation of %s failed: %s", product_id, e)
    return product


# `:uuid`: /inventory/reservations (POST only) is not a product id, so a GET
# there is a 405, not a 422 about product_id; a bad id is still a 422 naming it.
@app.get("/inventory/{product_id:uuid}", tags=["inventory"])
async def get_stock(product_id: ProductId):
    row = await inventory.stock(product_id)
    if row is None:
        raise NotFound(f"product {product_id} does not exist", field="product_id")
    return row


@app.get("/inventory", tags=["inventory"])
async def list_stock(limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                     offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    return {"items": await inventory.all_stock(limit=limit, offset=offset)}


@app.post("/inventory/reservations", status_code=201, tags=["inventory"], responses={
    200: {"description": "a repeat of an earlier reservation of this order (the same items)"},
    **errors(404, 409)})
async def reserve(body: ReserveRequest):
    items = [(i.product_id, i.quantity) for i in body.items]
    check_items(items)
    reservation, created = await inventory.reserve(body.order_id, items)
    return JSON(reservation, status_code=201 if created else 200)


@app.get("/admin/reservations", tags=["admin"])
async def list_reservations(state: Annotated[Literal["RESERVED", "CONFIRMED", "RELEASED"] | None, Query()] = None,
                            limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                            offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0):
    """Every reservation line, for checkers reading the final state."""
    return {"items": await inventory.reservations(state=state, limit=limit, offset=offset),
            "limit": limit, "offset": offset}


@app.post("/admin/reservations/sweep", tags=["admin"])
async def sweep_reservations(older_than_s: Annotated[float, Query(ge=0, le=86400)] = 60.0):
    """Give back what stale PENDING claims hold (the MongoDB inventory's
    recovery of a reserve that died midway; the PostgreSQL inventory reserves
    in one transaction and has none)."""
    if not hasattr(inventory, "sweep"):
        return {"claims": 0, "products_given_back": 0, "store": "postgresql"}
    return {**await inventory.sweep(older_than_s), "store": "mongodb"}


@service.background
async def _sweep(stop):
    if hasattr(inventory, "sweep_loop"):
        await inventory.sweep_loop(stop)


@app.get("/inventory/reservations/{order_id}", tags=["inventory"])
async def get_reservation(order_id: OrderId):
    r = await inventory.reservation(order_id)
    if r is None:
        raise NotFound(f"order {order_id} has no reservation", field="order_id")
    return r


@app.post("/inventory/reservations/{order_id}/confirm", tags=["inventory"], responses=errors(409))
async def confirm(order_id: OrderId):
    # JSON directly: a returned dict would go through jsonable_encoder first.
    return JSON(await inventory.confirm(order_id))


@app.post("/inventory/reservations/{order_id}/release", tags=["inventory"])
async def release(order_id: OrderId):
    return await inventory.release(order_id)
