"""Search on an Elasticsearch-API server through `ElasticsearchIndex` and the
elasticsearch 7.17 client.

The server is osmem-server (an in-memory OpenSearch-API stand-in, from PyPI),
started here on 127.0.0.1 and stopped by PID; the client's product check is
bypassed as the adapter does.  Checked: the mapping, the LSN guard as
external versions (re-delivery, an older change, a delete and a late older
change after it), filters; and against the session stack, the same ids as
the PostgreSQL path for the same CDC envelopes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from decimal import Decimal

import pytest

pytest.importorskip("elasticsearch", reason="elasticsearch (7.17) is not installed: "
                    "pip install -e '.[seed-engines]'")
osmem = pytest.importorskip("osmem_server", reason="osmem-server is not installed: "
                            "pip install -e '.[seed-engines]'")

from harness.stack import procs  # noqa: E402
from system_under_test.common.errors import Unavailable  # noqa: E402
from system_under_test.search.index_es import MAPPING, ElasticsearchIndex  # noqa: E402

PORT = int(os.environ.get("MSDB_TEST_SEED_PORT", "30540")) + 1


def _listening(port: int) -> str | None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return None
    except OSError as e:
        return str(e)


@pytest.fixture(scope="module")
def es_url(tmp_path_factory) -> str:
    if _listening(PORT) is None:
        pytest.fail(f"port {PORT} for osmem-server is taken (set MSDB_TEST_SEED_PORT)")
    _, rec = procs.spawn("osmem", [osmem.resolve_binary(), "-addr", f"127.0.0.1:{PORT}", "-no-stdin-watch",
                                   "-parent-pid", str(os.getpid())],
                         log_path=tmp_path_factory.mktemp("osmem") / "osmem.log")
    try:
        procs.wait_ready(rec, lambda: _listening(PORT), what="osmem-server", timeout=15)
        yield f"http://127.0.0.1:{PORT}"
    finally:
        assert procs.stop(rec, timeout=10), "osmem-server outlived its stop"


def _product(pid, lsn, *, name, category="tools", price="10.00", version=1, op="c", description=""):
    row = {"id": str(pid), "sku": "s", "version": version,
           "doc": {"name": name, "category": category, "price": price, "description": description}}
    return {"op": op, "before": row if op == "d" else None, "after": None if op == "d" else row,
            "source": {"db": "catalog", "schema": "public", "table": "products", "lsn": lsn,
                       "ts_ms": time.time() * 1000}}


def _run(coro_fn):
    return asyncio.run(coro_fn())


def test_mapping_lsn_guard_and_filters(es_url):
    index_name = f"products-{uuid.uuid4().hex[:6]}"
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def go():
        ix = ElasticsearchIndex(es_url, index=index_name)
        try:
            await ix.open()
            mapping = (await ix.es.indices.get_mapping(index=index_name))[index_name]["mappings"]
            assert set(mapping["properties"]) == set(MAPPING["properties"])
            batch = [_product(a, 100, name="Red running shoe", category="shoes", price="30.00"),
                     _product(b, 101, name="Blue running shoe", category="shoes", price="80.00"),
                     _product(c, 102, name="Running hat", category="hats", price="12.50")]
            assert len(await ix.apply_changes(batch)) == 3
            assert await ix.apply_changes(batch) == [], "a re-delivered batch is dropped"
            older = _product(a, 99, name="Stale name", version=0, op="u")
            assert await ix.apply_changes([older]) == []
            assert (await ix.get(a))["name"] == "Red running shoe"

            ids = lambda items: {str(i["product_id"]) for i in items}  # noqa: E731
            assert ids(await ix.search("running shoe", limit=10)) == {str(a), str(b)}
            assert ids(await ix.search("running", limit=10, category="hats")) == {str(c)}
            assert ids(await ix.search("shoe", limit=10, max_price=Decimal("50"))) == {str(a)}
            assert ids(await ix.search("running", limit=10, min_price=Decimal("12.50"),
                                       max_price=Decimal("30"))) == {str(a), str(c)}
            hit = (await ix.search("hat", limit=1))[0]
            assert hit["price"] == Decimal("12.50") and hit["version"] == 1

            gone = _product(b, 200, name="Blue running shoe", op="d")
            assert len(await ix.apply_changes([gone])) == 1
            late = _product(b, 150, name="Blue running shoe", version=2, op="u")
            assert await ix.apply_changes([late]) == [], "a late older change does not resurrect"
            assert await ix.get(b) is None and await ix.count() == 2
            assert ids(await ix.search("shoe", limit=10)) == {str(a)}
            v = await ix.versions(limit=10, offset=0)
            assert [str(x["product_id"]) for x in v] == sorted([str(a), str(c)])
            assert [str(x["product_id"]) for x in await ix.versions(limit=10, offset=1)] == [sorted([str(a), str(c)])[1]]
        finally:
            await ix.close()
    _run(go)


def test_store_errors_are_unavailable():
    async def go():
        ix = ElasticsearchIndex("http://127.0.0.1:9", index="nowhere")   # nothing listens on port 9
        ix.TIMEOUT_S = 2
        try:
            with pytest.raises(Unavailable):
                await ix.search("x", limit=1)
            with pytest.raises(Unavailable):
                await ix.apply_changes([_product(uuid.uuid4(), 1, name="x")])
            assert (await ix.health())["ok"] is False
        finally:
            await ix.close()
    _run(go)


@pytest.mark.integration
@pytest.mark.slow
def test_same_ids_as_the_postgresql_path(es_url, stack, urls):
    """The session stack's search (PostgreSQL full-text, fed by CDC over Redis
    Streams) and the Elasticsearch adapter fed with the same envelopes answer
    the same queries and filters with the same ids."""
    import httpx
    import orjson
    import redis

    word = "zq" + uuid.uuid4().hex[:8]
    specs = [("Alpha gadget", "tools", "5.00"), ("Beta gadget", "tools", "15.00"),
             ("Gamma gadget", "toys", "25.00"), ("Delta widget", "toys", "35.00"),
             ("Epsilon gadget widget", "garden", "45.00")]
    with httpx.Client(timeout=30) as http:
        made = []
        for name, category, price in specs:
            r = http.post(f"{urls['catalog']}/products", json={
                "sku": uuid.uuid4().hex[:12], "name": f"{name} {word}", "price": price, "stock": 5,
                "category": category, "description": "sturdy and small"})
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
        # An update and a delete travel through CDC too, where the API allows them.
        assert http.patch(f"{urls['catalog']}/products/{made[1]}",
                          json={"name": f"Beta gizmo {word}"}).status_code == 200
        deadline = time.monotonic() + 20
        while True:
            doc = http.get(f"{urls['search']}/documents/{made[1]}")
            if doc.status_code == 200 and doc.json()["version"] == 2 and \
                    len(http.get(f"{urls['search']}/search", params={"q": word, "limit": 100}).json()["items"]) == 5:
                break
            assert time.monotonic() < deadline, "the products never reached the PostgreSQL index"
            time.sleep(0.2)

        r = redis.Redis.from_url(stack.redis.url)
        try:
            envelopes = [orjson.loads(f[b"e"]) for _, f in r.xrange("bus:cdc.catalog")]
        finally:
            r.close()
        mine = [e for e in envelopes if (e.get("after") or e.get("before") or {}).get("id") in made]
        assert len(mine) >= 6

        queries = [{"q": word}, {"q": f"gadget {word}"}, {"q": f"widget {word}"},
                   {"q": word, "category": "toys"}, {"q": word, "min_price": "10", "max_price": "40"},
                   {"q": f"gadget {word}", "category": "tools", "max_price": "20"},
                   {"q": f"gizmo {word}"}, {"q": f"sturdy {word}", "min_price": "30"}]
        pg = {i: [it["product_id"] for it in
                  http.get(f"{urls['search']}/search", params={**q, "limit": 100}).json()["items"]]
              for i, q in enumerate(queries)}

    async def go():
        ix = ElasticsearchIndex(es_url, index=f"products-{word}")
        try:
            assert len(await ix.apply_changes(mine)) == len(mine)
            out = {}
            for i, q in enumerate(queries):
                kw = {k: (Decimal(v) if k.endswith("price") else v) for k, v in q.items() if k != "q"}
                out[i] = [str(it["product_id"]) for it in await ix.search(q["q"], limit=100, **kw)]
            return out
        finally:
            await ix.close()
    es = _run(go)
    for i, q in enumerate(queries):
        assert set(es[i]) == set(pg[i]), (q, es[i], pg[i])
    assert any(pg.values()) and not all(len(v) == 5 for v in pg.values())
