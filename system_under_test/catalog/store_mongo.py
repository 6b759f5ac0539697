"""The catalog on MongoDB (the seed's engine), through pymongo's async API.

Same methods as `PgJsonbProductRepository` and `Inventory` (store.py), same
answers.  Collections in the database named by MONGODB_URL:

    products          {_id: product id, sku, name, ..., version, created_at, updated_at}
    inventory         {_id: product id, available, reserved, sold, initial}
    reservations      {_id: order id, state, items: [{product_id, quantity}]}
    released_orders   {_id: order id}   the tombstone of a released order

Stock never goes negative: a reservation takes stock with one conditional
`update_one` per item (`available >= quantity` in the filter) and checks
`modified_count`; a miss gives back what the earlier items took.  No
`find_one_and_update` (O(collection size) on SecantusDB, docs/engines.md) and
no multi-document transaction on the hot path.

Idempotency by order id is the unique `_id` of `reservations`: the first
reserve of an order inserts its claim (state PENDING) before it takes any
stock, and a repeat finds the claim.  Every state change is a conditional
update on the state it leaves (PENDING -> RESERVED -> CONFIRMED, RESERVED or
CONFIRMED -> RELEASED), so exactly one caller moves stock for it.  A release
writes the tombstone first, then releases what is RESERVED or CONFIRMED; a
reserve that was PENDING meanwhile sees the tombstone after it commits its
claim and releases itself, so one of the two always sees the other.

Every stock movement of an order on a product is marked on that product's
inventory document, `holds.<order id>`, in the same single-document update
that moves the stock: set when a reserve takes it, removed when the
confirmation moves it to sold or a release gives it back, each update
filtered on the marker.  So each movement happens at most once however
often it is retried, and what an order holds can be read from the inventory
itself.  That closes the gap a crash leaves: a catalog process that dies (or
loses MongoDB) between taking an order's stock and committing its claim
leaves a PENDING claim; `sweep()` (every SWEEP_EVERY_S in the service, and
`POST /admin/reservations/sweep`) gives back what such a claim's order holds
once the claim is older than SWEEP_AFTER_S, and drops the claim.  A reserve
still running when its claim is swept finds it gone at its commit, gives back
what it took and answers 503.  Likewise a confirmation or a release
interrupted between its state change and its stock moves finishes them when
it is repeated.  (A release after a confirmation moves sold stock back
without a marker: the confirmation removed it.)

pymongo errors become `Unavailable` (503) here, where they enter; a
duplicate key is the only one that means something else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from decimal import Decimal
from uuid import UUID

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..common.errors import Conflict, NotFound, Unavailable
from ..common.metrics import DB_LATENCY
from .store import _reservation

__all__ = ["MongoCatalog", "MongoProductRepository", "MongoInventory"]

POOL = "mongo"
log = logging.getLogger("msdb.catalog.mongo")


class MongoCatalog:
    """One client, its collections and indexes; `open()` makes the indexes."""

    # Tunables, patchable by tests.
    SERVER_SELECTION_MS = 2000
    SOCKET_TIMEOUT_MS = 10000
    MAX_POOL_SIZE = 20

    def __init__(self, url: str):
        self.client = AsyncMongoClient(
            url, tz_aware=True, uuidRepresentation="standard", appname="msdb-catalog",
            serverSelectionTimeoutMS=self.SERVER_SELECTION_MS,
            connectTimeoutMS=self.SERVER_SELECTION_MS, socketTimeoutMS=self.SOCKET_TIMEOUT_MS,
            maxPoolSize=self.MAX_POOL_SIZE, retryWrites=False)
        db = self.client.get_default_database()
        self.db = db
        self.products = db["products"]
        self.inventory = db["inventory"]
        self.reservations = db["reservations"]
        self.released = db["released_orders"]

    def __repr__(self) -> str:
        return f"MongoCatalog(database={self.db.name!r})"

    async def open(self) -> None:
        """Indexes every query uses: SecantusDB scans without one."""
        try:
            async with op("create_indexes"):
                await self.products.create_index([("created_at", ASCENDING), ("_id", ASCENDING)])
                await self.products.create_index([("category", ASCENDING), ("created_at", ASCENDING),
                                                  ("_id", ASCENDING)])
                await self.products.create_index("sku")
                await self.reservations.create_index("state")
        except Unavailable:
            pass   # MongoDB is down at start-up: /health says so; indexes on the next start

    async def close(self) -> None:
        await self.client.close()

    async def health(self) -> dict:
        start = time.perf_counter()
        try:
            await self.db.command("ping")
        except PyMongoError as e:
            return {"ok": False, "engine": "mongodb",
                    "error": f"{type(e).__name__}: {e}".strip()[:300]}
        return {"ok": True, "engine": "mongodb", "ms": round((time.perf_counter() - start) * 1000, 2)}


@asynccontextmanager
async def op(query: str):
    """One named MongoDB operation: timed into db_query_duration_seconds, and
    its failures (server selection, network, timeouts) a 503."""
    start = time.perf_counter()
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as e:
        raise Unavailable(f"mongodb unavailable: {type(e).__name__}: {str(e)[:200]}",
                          extra={"store": "mongodb"}) from None
    finally:
        DB_LATENCY.labels(POOL, query).observe(time.perf_counter() - start)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _product(d: dict) -> dict:
    doc = {k: v for k, v in d.items() if k not in ("_id", "version", "created_at", "updated_at")}
    return {"id": UUID(d["_id"]), **doc, "version": d["version"], "updated_at": d["updated_at"]}


class MongoProductRepository:
    def __init__(self, cat: MongoCatalog):
        self.cat = cat

    async def create(self, doc: dict, stock: int) -> dict:
        from uuid import uuid4
        now = _now()
        pid = str(uuid4())
        d = {"_id": pid, **doc, "version": 1, "created_at": now, "updated_at": now}
        try:
            # The stock first: a product is never visible without its inventory.
            async with op("insert_inventory"):
                await self.cat.inventory.insert_one({"_id": pid, "available": stock, "reserved": 0,
                                                     "sold": 0, "initial": stock})
            async with op("insert_product"):
                await self.cat.products.insert_one(d)
        except DuplicateKeyError:
            raise Conflict("product already exists", field="sku") from None
        return _product(d)

    async def get(self, product_id: UUID) -> dict | None:
        async with op("get_product"):
            d = await self.cat.products.find_one({"_id": str(product_id)})
        return _product(d) if d else None

    async def list(self, *, limit: int, offset: int, category: str | None) -> list[dict]:
        flt = {} if category is None else {"category": category}
        async with op("list_products" if category is None else "list_products_by_category"):
            docs = await self.cat.products.find(flt).sort(
                [("created_at", ASCENDING), ("_id", ASCENDING)]).skip(offset).limit(limit).to_list()
        return [_product(d) for d in docs]

    async def update(self, product_id: UUID, changes: dict) -> dict | None:
        async with op("update_product"):
            r = await self.cat.products.update_one(
                {"_id": str(product_id)},
                {"$set": {**changes, "updated_at": _now()}, "$inc": {"version": 1}})
            if not r.matched_count:
                return None
            d = await self.cat.products.find_one({"_id": str(product_id)})
        return _product(d) if d else None


def _items(d: dict) -> list[tuple[str, int]]:
    """A reservation document's (product id, quantity) pairs."""
    return [(it["product_id"], it["quantity"]) for it in d["items"]]


def _line(order_id: str, it: dict, state: str, price) -> dict:
    return {"product_id": UUID(it["product_id"]), "quantity": it["quantity"],
            "state": "RESERVED" if state == "PENDING" else state, "unit_price": price}


class MongoInventory:
    """Stock per product: available + reserved + sold = initial."""

    def __init__(self, cat: MongoCatalog):
        self.cat = cat

    @staticmethod
    def _stock(d: dict) -> dict:
        return {"product_id": UUID(d["_id"]), "available": d["available"],
                "reserved": d["reserved"], "sold": d["sold"], "initial": d["initial"]}

    async def stock(self, product_id: UUID) -> dict | None:
        async with op("get_stock"):
            d = await self.cat.inventory.find_one({"_id": str(product_id)})
        return self._stock(d) if d else None

    async def all_stock(self, *, limit: int, offset: int) -> list[dict]:
        async with op("list_stock"):
            docs = await self.cat.inventory.find({}).sort("_id", ASCENDING).skip(offset) \
                .limit(limit).to_list()
        return [self._stock(d) for d in docs]

    async def _prices(self, pids: list[str]) -> dict[str, Decimal | None]:
        async with op("get_prices"):
            docs = await self.cat.products.find({"_id": {"$in": pids}}, {"price": 1}).to_list()
        return {d["_id"]: Decimal(str(d["price"])) if d.get("price") is not None else None
                for d in docs}

    async def reservations(self, *, state: str | None, limit: int, offset: int) -> list[dict]:
        # One document per order, one line per item: the lines are paged.
        flt = {} if state is None else {"state": {"$in": [state, "PENDING"]}
                                        if state == "RESERVED" else state}
        async with op("list_reservations"):
            docs = await self.cat.reservations.find(flt).sort("_id", ASCENDING).to_list()
        lines = [{"order_id": UUID(d["_id"]), "product_id": UUID(it["product_id"]),
                  "quantity": it["quantity"],
                  "state": "RESERVED" if d["state"] == "PENDING" else d["state"]}
                 for d in docs for it in sorted(d["items"], key=lambda i: i["product_id"])]
        return lines[offset:offset + limit]

    async def reservation(self, order_id: UUID) -> dict | None:
        async with op("get_reservation"):
            d = await self.cat.reservations.find_one({"_id": str(order_id)})
        if d is None:
            return None
        prices = await self._prices([it["product_id"] for it in d["items"]])
        rows = [_line(d["_id"], it, d["state"], prices.get(it["product_id"]))
                for it in sorted(d["items"], key=lambda i: i["product_id"])]
        return _reservation(order_id, rows)

    async def reserve(self, order_id: UUID, items: list[tuple[UUID, int]]) -> tuple[dict, bool]:
        """Reserve all items or none.  Returns (reservation, created_now);
        idempotent by order id (see the module docstring)."""
        oid = str(order_id)
        wanted = {str(pid): q for pid, q in items}
        async with op("reserve_tombstone"):
            if await self.cat.released.find_one({"_id": oid}, {"_id": 1}):
                raise Conflict(f"order {order_id} was released (its saga was cancelled); "
                               f"it cannot reserve again", field="order_id")
        claim = {"_id": oid, "state": "PENDING", "created_at": _now(),
                 "items": [{"product_id": p, "quantity": q} for p, q in sorted(wanted.items())]}
        try:
            async with op("reserve_claim"):
                await self.cat.reservations.insert_one(claim)
        except DuplicateKeyError:
            return await self._existing(order_id, wanted), False
        taken: list[tuple[str, int]] = []
        hold = f"holds.{oid}"
        try:
            for pid, q in sorted(wanted.items()):   # product order, as store.py takes locks
                async with op("reserve_stock"):
                    r = await self.cat.inventory.update_one(
                        {"_id": pid, "available": {"$gte": q}, hold: {"$exists": False}},
                        {"$inc": {"available": -q, "reserved": q}, "$set": {hold: "R"}})
                if r.modified_count != 1:
                    await self._give_back(oid, taken)
                    await self._drop_claim(oid)
                    await self._refuse(pid, q)
                taken.append((pid, q))
            async with op("reserve_commit"):
                r = await self.cat.reservations.update_one({"_id": oid, "state": "PENDING"},
                                                           {"$set": {"state": "RESERVED"}})
        except Unavailable:
            raise   # the claim stays PENDING, holding what it took, until sweep() (module docstring)
        if r.modified_count != 1:
            # The claim was swept while this reserve ran (it was older than
            # SWEEP_AFTER_S): what the sweep did not give back, give back now.
            await self._give_back(oid, taken)
            raise Unavailable(f"the reservation of order {order_id} took longer than "
                              f"{self.SWEEP_AFTER_S:g} s and was abandoned; retry")
        # A release that came while we were PENDING left its tombstone and
        # left the stock to us.
        async with op("reserve_tombstone"):
            released = await self.cat.released.find_one({"_id": oid}, {"_id": 1})
        if released:
            await self._release_doc(oid)
            raise Conflict(f"order {order_id} was released (its saga was cancelled); "
                           f"it cannot reserve again", field="order_id")
        return await self.reservation(order_id), True

    async def _existing(self, order_id: UUID, wanted: dict) -> dict:
        async with op("get_reservation"):
            d = await self.cat.reservations.find_one({"_id": str(order_id)})
        if d is None:   # its reserve failed and dropped the claim meanwhile
            raise Conflict(f"reservation for order {order_id} is being changed concurrently",
                           field="order_id")
        if {it["product_id"]: it["quantity"] for it in d["items"]} != wanted:
            raise Conflict(f"order {order_id} already has a different reservation", field="items")
        if d["state"] == "RELEASED":
            raise Conflict(f"order {order_id} was released (its saga was cancelled); "
                           f"it cannot reserve again", field="order_id")
        if d["state"] == "PENDING":
            raise Conflict(f"reservation for order {order_id} is being made concurrently",
                           field="order_id")
        return await self.reservation(order_id)

    async def _give_back(self, oid: str, taken: list[tuple[str, int]]) -> int:
        """Give back the reserved stock of `oid` that is still held; returns
        how many products gave some back (each at most once)."""
        n = 0
        for pid, q in taken:
            async with op("reserve_undo"):
                r = await self.cat.inventory.update_one(
                    {"_id": pid, f"holds.{oid}": "R"},
                    {"$inc": {"available": q, "reserved": -q}, "$unset": {f"holds.{oid}": ""}})
            n += r.modified_count
        return n

    # A claim left PENDING this long is a dead reserve's (a live one commits in
    # milliseconds; the saga's calls time out in seconds).
    SWEEP_AFTER_S = 60.0
    SWEEP_EVERY_S = 10.0

    async def sweep(self, older_than_s: float | None = None) -> dict:
        """Give back what the orders of stale PENDING claims hold, and drop the
        claims (module docstring).  Returns what it did."""
        age = self.SWEEP_AFTER_S if older_than_s is None else older_than_s
        cutoff = datetime.fromtimestamp(time.time() - age, timezone.utc)
        async with op("sweep_pending"):
            docs = await self.cat.reservations.find(
                {"state": "PENDING", "created_at": {"$lte": cutoff}}).to_list()
        out = {"claims": 0, "products_given_back": 0}
        for d in docs:
            oid = d["_id"]
            out["products_given_back"] += await self._give_back(oid, _items(d))
            async with op("sweep_pending"):
                r = await self.cat.reservations.delete_one({"_id": oid, "state": "PENDING"})
            out["claims"] += r.deleted_count
        return out

    async def sweep_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.SWEEP_EVERY_S)
                return
            except TimeoutError:
                pass
            try:
                done = await self.sweep()
            except Unavailable as e:
                log.warning("reservation sweep: %s", e)
                continue
            if done["claims"]:
                log.warning("reservation sweep: %d stale PENDING claim(s) dropped, stock given back "
                            "on %d product(s)", done["claims"], done["products_given_back"])

    async def _drop_claim(self, oid: str) -> None:
        async with op("reserve_undo"):
            await self.cat.reservations.delete_one({"_id": oid, "state": "PENDING"})

    async def _refuse(self, pid: str, q: int) -> None:
        async with op("get_stock"):
            d = await self.cat.inventory.find_one({"_id": pid})
        if d is None:
            raise NotFound(f"product {pid} does not exist", field="items", extra={"product_id": pid})
        raise Conflict(f"not enough stock for product {pid}: {q} wanted, {d['available']} "
                       f"available", field="items",
                       extra={"product_id": pid, "available": d["available"]})

    async def confirm(self, order_id: UUID) -> dict:
        """RESERVED -> CONFIRMED (reserved stock becomes sold).  Idempotent."""
        oid = str(order_id)
        async with op("confirm_stock"):
            r = await self.cat.reservations.update_one({"_id": oid, "state": "RESERVED"},
                                                       {"$set": {"state": "CONFIRMED"}})
        if r.modified_count == 1:
            await self._sell(oid, await self._doc(oid))
            return {"order_id": order_id, "state": "CONFIRMED"}
        d = await self._doc(oid)
        if d is not None and d["state"] == "CONFIRMED":
            await self._sell(oid, d)    # a confirmation cut off before its stock moves: finish them
        if d is None:
            raise NotFound(f"order {order_id} has no reservation", field="order_id")
        if d["state"] == "RELEASED":
            raise Conflict(f"reservation of order {order_id} was released", field="order_id")
        if d["state"] == "PENDING":
            raise Conflict(f"reservation of order {order_id} is not made yet", field="order_id")
        return {"order_id": order_id, "state": "CONFIRMED"}

    async def _sell(self, oid: str, d: dict) -> None:
        """Reserved -> sold for every item `oid` still holds (each at most once)."""
        for it in d["items"]:
            async with op("confirm_stock"):
                await self.cat.inventory.update_one(
                    {"_id": it["product_id"], f"holds.{oid}": "R"},
                    {"$inc": {"reserved": -it["quantity"], "sold": it["quantity"]},
                     "$unset": {f"holds.{oid}": ""}})

    async def _doc(self, oid: str) -> dict | None:
        async with op("get_reservation"):
            return await self.cat.reservations.find_one({"_id": oid})

    async def release(self, order_id: UUID) -> dict:
        """Give the stock back.  Idempotent; releasing nothing is a no-op."""
        oid = str(order_id)
        async with op("release_tombstone"):
            # The tombstone first: a reservation arriving after this is refused.
            await self.cat.released.update_one({"_id": oid}, {"$setOnInsert": {"at": _now()}},
                                               upsert=True)
        d = await self._release_doc(oid)
        if d is None:
            return {"order_id": order_id, "state": "NONE"}
        return {"order_id": order_id, "state": "RELEASED"}

    async def _release_doc(self, oid: str) -> dict | None:
        """Move a RESERVED or CONFIRMED reservation to RELEASED and give its
        stock back; exactly one caller wins each transition."""
        for _ in range(3):   # the state may change under us once (RESERVED -> CONFIRMED)
            d = await self._doc(oid)
            if d is not None and d["state"] == "RELEASED":
                # a release cut off before its stock moves: give back what is still held
                await self._give_back(oid, _items(d))
            if d is None or d["state"] in ("RELEASED", "PENDING"):
                return d      # PENDING: its reserve sees the tombstone and releases
            was = d["state"]
            async with op("release_stock"):
                r = await self.cat.reservations.update_one({"_id": oid, "state": was},
                                                           {"$set": {"state": "RELEASED"}})
            if r.modified_count != 1:
                continue
            if was == "RESERVED":
                await self._give_back(oid, _items(d))
            else:
                for it in d["items"]:
                    async with op("release_stock"):
                        await self.cat.inventory.update_one(
                            {"_id": it["product_id"]},
                            {"$inc": {"available": it["quantity"], "sold": -it["quantity"]}})
            return d
        return await self._doc(oid)
