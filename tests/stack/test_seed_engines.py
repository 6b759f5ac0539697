"""`--engines seed`: the stand-ins for MongoDB, Elasticsearch and Kafka as parts
of a fresh stack of its own (base port MSDB_TEST_BASE_PORT + 600), and the
catalog on MongoDB through its API and through pymongo directly.

Every figure here is measured on stand-ins (docs/engines.md).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.stack import engines as seed_engines

if seed_engines.missing():
    pytest.skip(f"the seed-engines extra is not installed ({', '.join(seed_engines.missing())}): "
                f"{seed_engines.EXTRA}", allow_module_level=True)

import httpx  # noqa: E402
import pymongo  # noqa: E402

from chaos.client import ToxiproxyServer  # noqa: E402
from harness.stack.backend import fresh_stack  # noqa: E402
from harness.stack.embedded import StackOptions  # noqa: E402
from tests.fix_stack import wait_no_leftovers  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_PORT = int(os.environ.get("MSDB_TEST_BASE_PORT", "25400")) + 600


@pytest.fixture(scope="module")
def seed_backend(tmp_path_factory):
    state = tmp_path_factory.mktemp("msdb-seed")
    with fresh_stack(StackOptions(state_dir=state, base_port=BASE_PORT, engines="seed"),
                     log=lambda *a: None) as b:
        yield b
        final = b.info()
    left = wait_no_leftovers(final)
    assert not left, f"processes outlived the seed stack: {left}"


@pytest.fixture(scope="module")
def info(seed_backend):
    return seed_backend.info()


@pytest.fixture(scope="module")
def catalog(info):
    with httpx.Client(base_url=info.services["catalog"].url, timeout=15, trust_env=False) as c:
        yield c


def _product(catalog, stock: int) -> str:
    r = catalog.post("/products", json={"sku": f"seed-{uuid.uuid4().hex[:8]}", "name": "seed shoe",
                                        "price": "9.90", "category": "seed", "stock": stock})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_status_healthy_with_the_stand_ins(seed_backend):
    parts = {p.name: p for p in seed_backend.status()}
    for name in ("mongo", "elasticsearch", "kafka", "seaweedfs"):
        assert name in parts, sorted(parts)
    bad = [(p.name, p.detail) for p in parts.values() if not p.healthy]
    assert not bad


def test_stack_json_lists_each_engine(info):
    engines = {e.name: e for e in info.engines}
    assert engines["catalog"].kind == "secantusdb"
    for name, instead_of in (("catalog", "mongodb"), ("search", "elasticsearch"), ("bus", "kafka")):
        e = engines[name]
        if name != "catalog" and not seed_engines.adapters()[name]:
            continue   # that service's adapter has not landed: it stays on its embedded engine
        assert e.stand_in is True and e.stands_in_for == instead_of and e.version, e
    links = {p.name: p for p in info.proxy.proxies}
    assert {"catalog-mongo", "search-es", "bus-kafka"} <= set(links)
    assert links["catalog-mongo"].upstream.endswith(str(BASE_PORT + 11))
    for p in info.parts:
        if p.name in seed_engines.SEED_PARTS:
            assert "127.0.0.1" in p.endpoint and p.proc, p


def test_pymongo_finds_what_the_api_created(info, catalog):
    pid = _product(catalog, 7)
    mongo_part = info.part("mongo")
    with pymongo.MongoClient(mongo_part.endpoint, directConnection=True,
                             serverSelectionTimeoutMS=5000) as m:
        db = m[seed_engines.MONGO_DATABASE]
        doc = db.products.find_one({"_id": pid})
        stock = db.inventory.find_one({"_id": pid})
    assert doc is not None and doc["name"] == "seed shoe"
    assert stock == {"_id": pid, "available": 7, "reserved": 0, "sold": 0, "initial": 7}


def test_concurrent_reserves_keep_stock_exact(catalog, info):
    stock, n_orders = 30, 60
    pid = _product(catalog, stock)
    orders = [str(uuid.uuid4()) for _ in range(n_orders)]
    url = info.services["catalog"].url

    def reserve(order_id: str) -> tuple[str, int]:
        with httpx.Client(base_url=url, timeout=15, trust_env=False) as c:
            r = c.post("/inventory/reservations",
                       json={"order_id": order_id, "items": [{"product_id": pid, "quantity": 1}]})
            return order_id, r.status_code

    # Every order twice, interleaved: the repeat is the saga's retry.
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(reserve, orders + orders))
    codes = [c for _, c in results]
    assert set(codes) <= {200, 201, 409}, codes
    created = {o for o, c in results if c == 201}
    assert len(created) == stock            # each order created at most once, stock exhausted
    assert len([c for c in codes if c == 201]) == stock
    s = catalog.get(f"/inventory/{pid}").json()
    assert (s["available"], s["reserved"], s["sold"]) == (0, stock, 0)
    # A retry of a made reservation answers 200 with it.
    some = sorted(created)[0]
    assert reserve(some)[1] == 200
    # Release gives back exactly once (tombstone), confirm moves to sold.
    rel, conf = sorted(created)[:10], sorted(created)[10:15]
    for o in rel:
        assert catalog.post(f"/inventory/reservations/{o}/release").json()["state"] == "RELEASED"
        assert catalog.post(f"/inventory/reservations/{o}/release").json()["state"] == "RELEASED"
    for o in conf:
        assert catalog.post(f"/inventory/reservations/{o}/confirm").status_code == 200
        assert catalog.post(f"/inventory/reservations/{o}/confirm").status_code == 200
    s = catalog.get(f"/inventory/{pid}").json()
    assert (s["available"], s["reserved"], s["sold"]) == (10, stock - 15, 5)
    assert s["available"] + s["reserved"] + s["sold"] == s["initial"]
    # After its release an order may not reserve again.
    assert reserve(rel[0])[1] == 409
    lines = [r for r in catalog.get("/admin/reservations", params={"limit": 10000}).json()["items"]
             if r["product_id"] == pid]
    assert len(lines) == stock
    assert {r["state"] for r in lines} == {"RESERVED", "CONFIRMED", "RELEASED"}


def test_bad_input_is_4xx_naming_the_field(catalog):
    r = catalog.post("/inventory/reservations", json={"order_id": "nope", "items": []})
    assert r.status_code == 422 and "order_id" in r.text
    r = catalog.post("/inventory/reservations",
                     json={"order_id": str(uuid.uuid4()),
                           "items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]})
    assert r.status_code == 404 and r.json()["field"] == "items"


def _median_ms(catalog, path: str, n: int = 12) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert catalog.get(path).status_code == 200
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def test_latency_on_catalog_mongo_shows_on_catalog_reads(info, catalog):
    """Calibration: a 200 ms latency toxic on the catalog-mongo link adds
    ~200 ms to a catalog read that goes to MongoDB (stock reads are not cached)."""
    pid = _product(catalog, 3)
    path = f"/inventory/{pid}"
    api = ToxiproxyServer.at(info.proxy.api)
    base = _median_ms(catalog, path)
    api.add_toxic("catalog-mongo", "latency", attributes={"latency": 200, "jitter": 0},
                  name="calibration")
    try:
        slow = _median_ms(catalog, path)
    finally:
        api.remove_toxic("catalog-mongo", "calibration")
    added = slow - base
    print(f"catalog read on MongoDB (stand-in): {base:.1f} ms; with 200 ms on catalog-mongo: "
          f"{slow:.1f} ms (+{added:.1f} ms)")
    assert 180 <= added <= 320, (base, slow)
    assert _median_ms(catalog, path, 5) < base + 100   # healed
