"""The search index on Elasticsearch 7 (or an OpenSearch-API server), through
the `elasticsearch` 7.17 client.

One index, `products` by default, with an explicit mapping (`MAPPING`):
name, category and description as `english` text (category also as a
`keyword` for filters), the price as a scaled float, version and LSN.

The LSN guard is Elasticsearch's own optimistic concurrency: every write is
`version_type=external` with `version=<source LSN>`, so a change whose LSN is
not newer than the document's is refused (409) and counted as not applied,
exactly as the PostgreSQL index's `WHERE source_lsn < EXCLUDED.source_lsn`.
A delete writes a tombstone document (`deleted: true`) rather than deleting:
Elasticsearch forgets a deleted document's version after `index.gc_deletes`
(60 s), after which a late re-delivered older change would bring it back.
Searches, counts and reads leave tombstones out.

A batch is one `_bulk` request with `refresh=wait_for`: it returns once the
changes are visible to search, which is what the CDC lag measures.

Store errors (connection refused or reset, timeouts, 5xx) become
`Unavailable` (HTTP 503); a bulk item that fails for another reason than a
version conflict fails the batch, which the bus then delivers again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from uuid import UUID

from elasticsearch import AsyncElasticsearch
from elasticsearch.exceptions import (ConnectionError as EsConnectionError, NotFoundError,
                                      TransportError)

from ..common.errors import Unavailable
from .index import product_change

__all__ = ["ElasticsearchIndex", "MAPPING", "SETTINGS", "search_body"]

log = logging.getLogger("msdb.search.es")

SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}
MAPPING = {
    "dynamic": "strict",
    "properties": {
        "product_id": {"type": "keyword"},
        "name": {"type": "text", "analyzer": "english"},
        "category": {"type": "text", "analyzer": "english",
                     "fields": {"keyword": {"type": "keyword"}}},
        "description": {"type": "text", "analyzer": "english"},
        "price": {"type": "scaled_float", "scaling_factor": 100},
        "version": {"type": "integer"},
        "source_lsn": {"type": "long"},
        "deleted": {"type": "boolean"},
        "indexed_at": {"type": "date"},
    },
}
# PostgreSQL's setweight A/B/C on name/category/description, as boosts.
FIELDS = ["name^5", "category^2", "description"]
CENT = Decimal("0.01")


def _price(v) -> str | None:
    if v is None:
        return None
    try:
        return str(Decimal(str(v)).quantize(CENT))
    except (InvalidOperation, ValueError):
        return None


def search_body(q: str, *, limit: int, category: str | None = None,
                min_price: Decimal | None = None, max_price: Decimal | None = None) -> dict:
    """multi_match over the three fields, every term required (as
    websearch_to_tsquery's AND), with filters that do not score."""
    filters: list[dict] = []
    if category is not None:
        filters.append({"term": {"category.keyword": category}})
    rng = {k: str(v) for k, v in (("gte", min_price), ("lte", max_price)) if v is not None}
    if rng:
        filters.append({"range": {"price": rng}})
    return {"query": {"bool": {
                "must": [{"multi_match": {"query": q, "fields": FIELDS, "type": "cross_fields",
                                          "operator": "and"}}],
                "filter": filters, "must_not": [{"term": {"deleted": True}}]}},
            "size": limit, "sort": [{"_score": "desc"}, {"product_id": "asc"}],
            "_source": ["product_id", "name", "category", "price", "version"]}
# search_body's keys are the 7.17 client's search() parameters (its `body=` is deprecated).


class ElasticsearchIndex:
    """`SearchIndex` on Elasticsearch.  `open()` creates the index if missing."""

    TIMEOUT_S = 10

    def __init__(self, url: str, *, index: str = "products", product_check: bool = False):
        self.index = index
        self.es = AsyncElasticsearch(url, timeout=self.TIMEOUT_S, max_retries=0)
        self._ready = False
        if not product_check:
            # The 7.x client refuses servers that are not Elastic's own build
            # (OpenSearch, the osmem stand-in).  There is no public switch;
            # this is the flag its first request would have set.
            self.es.transport._verified_elasticsearch = True

    async def _call(self, what: str, coro):
        try:
            return await coro
        except EsConnectionError as e:   # includes timeouts
            raise Unavailable(f"search index unavailable ({what}): {type(e).__name__}") from e
        except TransportError as e:
            if isinstance(e.status_code, int) and e.status_code >= 500 or e.status_code == 429:
                raise Unavailable(f"search index unavailable ({what}): {e.status_code} {e.error}") from e
            raise

    async def open(self) -> None:
        """Create the index with its mapping (once; an existing index is kept).
        An unreachable server is not fatal here: the service starts and says so
        in /health, as it does when its database is down."""
        try:
            if not await self.es.indices.exists(index=self.index):
                await self.es.indices.create(index=self.index, settings=SETTINGS, mappings=MAPPING)
            self._ready = True
        except TransportError as e:
            if getattr(e, "error", "") == "resource_already_exists_exception":
                self._ready = True
            else:
                log.warning("search index %s not created yet: %s", self.index, e)

    async def close(self) -> None:
        await self.es.close()

    async def health(self) -> dict:
        try:
            ok = await self.es.ping()
            return {"ok": bool(ok), "engine": "elasticsearch"}
        except Exception as e:  # any failure is unhealthy
            return {"ok": False, "engine": "elasticsearch", "error": f"{type(e).__name__}: {e}"[:300]}

    async def apply_changes(self, events: list[dict]) -> list[dict]:
        """One bulk request; an item refused as a version conflict was already
        applied (or superseded).  Returns the events applied."""
        ops: list[dict] = []
        batch: list[dict] = []
        now = datetime.now(timezone.utc).isoformat()
        if not self._ready:
            await self.open()
        for e in events:
            ch = product_change(e)
            if ch is None:
                continue
            pid = str(ch.id)
            if ch.deleted:
                doc = {"product_id": pid, "deleted": True, "source_lsn": ch.lsn, "indexed_at": now}
            else:
                doc = {"product_id": pid, "version": ch.version, "name": ch.name,
                       "description": ch.description, "category": ch.category,
                       "price": _price(ch.price), "deleted": False, "source_lsn": ch.lsn,
                       "indexed_at": now}
            ops.append({"index": {"_index": self.index, "_id": pid, "version": ch.lsn,
                                  "version_type": "external"}})
            ops.append(doc)
            batch.append(e)
        if not ops:
            return []
        resp = await self._call("bulk", self.es.bulk(body=ops, refresh="wait_for"))
        applied = []
        for e, item in zip(batch, resp["items"]):
            res = item.get("index") or {}
            status = res.get("status", 500)
            if status in (200, 201):
                applied.append(e)
            elif status == 409:
                continue   # the LSN guard: not newer than what the document has
            elif status >= 500 or status == 429:
                raise Unavailable(f"search index refused a write: {status} {res.get('error')}")
            else:
                raise RuntimeError(f"search index refused {res.get('_id')}: {status} {res.get('error')}")
        return applied

    async def search(self, q: str, *, limit: int, category: str | None = None,
                     min_price: Decimal | None = None, max_price: Decimal | None = None) -> list[dict]:
        body = search_body(q, limit=limit, category=category, min_price=min_price, max_price=max_price)
        try:
            resp = await self._call("search", self.es.search(index=self.index, **body))
        except NotFoundError:
            return []   # no index yet: nothing was indexed
        out = []
        for h in resp["hits"]["hits"]:
            s = h["_source"]
            out.append({"product_id": UUID(s["product_id"]), "name": s.get("name"),
                        "category": s.get("category"),
                        "price": Decimal(s["price"]) if s.get("price") is not None else None,
                        "version": s.get("version"), "score": h.get("_score")})
        return out

    async def get(self, product_id: UUID) -> dict | None:
        try:
            resp = await self._call("get", self.es.get(index=self.index, id=str(product_id)))
        except NotFoundError:
            return None
        s = resp["_source"]
        if s.get("deleted"):
            return None
        return {"product_id": UUID(s["product_id"]), "version": s.get("version"), "name": s.get("name"),
                "description": s.get("description"), "category": s.get("category"),
                "price": Decimal(s["price"]) if s.get("price") is not None else None,
                "indexed_at": s.get("indexed_at")}

    async def count(self) -> int:
        try:
            resp = await self._call("count", self.es.count(
                index=self.index, body={"query": {"bool": {"must_not": [{"term": {"deleted": True}}]}}}))
        except NotFoundError:
            return 0
        return int(resp["count"])

    PAGE = 1000

    async def versions(self, *, limit: int, offset: int) -> list[dict]:
        """Live documents by product id, paged with search_after (from + size
        stops at 10,000 in Elasticsearch)."""
        out: list[dict] = []
        after = None
        skipped = 0
        while len(out) < limit:
            body = {"query": {"bool": {"must_not": [{"term": {"deleted": True}}]}},
                    "size": self.PAGE, "sort": [{"product_id": "asc"}],
                    "_source": ["product_id", "version", "source_lsn"]}
            if after is not None:
                body["search_after"] = after
            try:
                hits = (await self._call("versions", self.es.search(index=self.index, **body)))["hits"]["hits"]
            except NotFoundError:
                return []
            if not hits:
                break
            after = hits[-1]["sort"]
            for h in hits:
                if skipped < offset:
                    skipped += 1
                    continue
                s = h["_source"]
                out.append({"product_id": UUID(s["product_id"]), "version": s.get("version"),
                            "source_lsn": s.get("source_lsn")})
                if len(out) >= limit:
                    break
        return out
