"""The services through their HTTP APIs: saga, inventory, payments, cache, feeds."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=30) as c:
        yield c


def new_product(http, urls, *, stock=10, price="10.00", name=None):
    r = http.post(f"{urls['catalog']}/products", json={
        "sku": uuid.uuid4().hex[:12], "name": name or f"Test widget {uuid.uuid4().hex[:6]}",
        "price": price, "stock": stock, "category": "test"})
    assert r.status_code == 201, r.text
    return r.json()


def new_user(http, urls):
    r = http.post(f"{urls['users']}/users", json={"email": f"{uuid.uuid4().hex[:10]}@example.com",
                                                   "password": "correct horse"})
    assert r.status_code == 201, r.text
    return r.json()


def stock(http, urls, pid):
    r = http.get(f"{urls['catalog']}/inventory/{pid}")
    assert r.status_code == 200
    return r.json()


@pytest.fixture
def decline_rate(http, urls):
    def set_rate(rate):
        r = http.put(f"{urls['payments']}/admin/decline-rate", json={"rate": rate})
        assert r.status_code == 200
    yield set_rate
    set_rate(0.0)


def test_saga_happy_path(http, urls):
    p1, p2 = new_product(http, urls, price="2.50"), new_product(http, urls, price="10.00")
    user = new_user(http, urls)
    r = http.post(f"{urls['orders']}/orders", json={"user_id": user["id"], "items": [
        {"product_id": p1["id"], "quantity": 2}, {"product_id": p2["id"], "quantity": 1}]})
    assert r.status_code == 201, r.text
    order = r.json()["order"]
    assert order["status"] == "CONFIRMED" and Decimal(order["total_amount"]) == Decimal("15.00")
    s1 = stock(http, urls, p1["id"])
    assert (s1["available"], s1["reserved"], s1["sold"]) == (8, 0, 2)
    pay = http.get(f"{urls['payments']}/payments/by-order/{order['id']}").json()
    assert pay["status"] == "CAPTURED" and Decimal(pay["amount"]) == Decimal("15.00")
    assert http.get(f"{urls['orders']}/orders/{order['id']}").json()["status"] == "CONFIRMED"


def test_saga_compensates_a_declined_payment(http, urls, decline_rate):
    p = new_product(http, urls, stock=5)
    user = new_user(http, urls)
    decline_rate(1.0)
    r = http.post(f"{urls['orders']}/orders", json={"user_id": user["id"],
                                                    "items": [{"product_id": p["id"], "quantity": 3}]})
    assert r.status_code == 402, r.text
    body = r.json()
    assert body["field"] == "payment" and body["compensated"] is True
    assert body["order"]["status"] == "CANCELLED"
    s = stock(http, urls, p["id"])
    assert (s["available"], s["reserved"], s["sold"]) == (5, 0, 0)     # released
    res = http.get(f"{urls['catalog']}/inventory/reservations/{body['order']['id']}").json()
    assert res["state"] == "RELEASED"
    pay = http.get(f"{urls['payments']}/payments/by-order/{body['order']['id']}").json()
    assert pay["status"] == "DECLINED"


def test_out_of_stock_rejects_without_an_order(http, urls):
    p = new_product(http, urls, stock=1)
    user = new_user(http, urls)
    r = http.post(f"{urls['orders']}/orders", json={"user_id": user["id"],
                                                    "items": [{"product_id": p["id"], "quantity": 2}]})
    assert r.status_code == 409 and r.json()["field"] == "items"
    assert stock(http, urls, p["id"])["available"] == 1
    r = http.get(f"{urls['orders']}/users/{user['id']}/orders", params={"read": "primary"})
    assert r.json()["items"] == []


def test_idempotency_key_gives_exactly_one_order(http, urls):
    p = new_product(http, urls, stock=10)
    user = new_user(http, urls)
    body = {"user_id": user["id"], "items": [{"product_id": p["id"], "quantity": 1}]}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = http.post(f"{urls['orders']}/orders", json=body, headers=key)
    again = http.post(f"{urls['orders']}/orders", json=body, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["order"]["id"] == again.json()["order"]["id"] and again.json()["replayed"]
    assert stock(http, urls, p["id"])["sold"] == 1
    r = http.get(f"{urls['orders']}/users/{user['id']}/orders", params={"read": "primary"})
    assert len(r.json()["items"]) == 1
    other = http.post(f"{urls['orders']}/orders", headers=key, json={**body, "items": [
        {"product_id": p["id"], "quantity": 2}]})
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"


def test_inventory_is_idempotent_by_order_id(http, urls):
    p = new_product(http, urls, stock=10)
    order = str(uuid.uuid4())
    req = {"order_id": order, "items": [{"product_id": p["id"], "quantity": 4}]}
    r1 = http.post(f"{urls['catalog']}/inventory/reservations", json=req)
    r2 = http.post(f"{urls['catalog']}/inventory/reservations", json=req)
    assert (r1.status_code, r2.status_code) == (201, 200)
    assert stock(http, urls, p["id"])["available"] == 6 and stock(http, urls, p["id"])["reserved"] == 4
    for _ in range(2):
        assert http.post(f"{urls['catalog']}/inventory/reservations/{order}/confirm").status_code == 200
    s = stock(http, urls, p["id"])
    assert (s["available"], s["reserved"], s["sold"]) == (6, 0, 4)
    for _ in range(2):
        assert http.post(f"{urls['catalog']}/inventory/reservations/{order}/release").status_code == 200
    s = stock(http, urls, p["id"])
    assert (s["available"], s["reserved"], s["sold"]) == (10, 0, 0)
    # Releasing what never was reserved is a harmless no-op (a compensation may race ahead).
    r = http.post(f"{urls['catalog']}/inventory/reservations/{uuid.uuid4()}/release")
    assert r.status_code == 200 and r.json()["state"] == "NONE"
    diff = http.post(f"{urls['catalog']}/inventory/reservations",
                     json={**req, "items": [{"product_id": p["id"], "quantity": 1}]})
    assert diff.status_code == 409


def test_stock_never_goes_negative_under_concurrent_reservations(http, urls):
    import concurrent.futures as cf
    p = new_product(http, urls, stock=5)

    def reserve(_):
        with httpx.Client(timeout=30) as c:
            return c.post(f"{urls['catalog']}/inventory/reservations", json={
                "order_id": str(uuid.uuid4()), "items": [{"product_id": p["id"], "quantity": 1}]}).status_code
    with cf.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(reserve, range(12)))
    assert codes.count(201) == 5 and codes.count(409) == 7, codes
    s = stock(http, urls, p["id"])
    assert (s["available"], s["reserved"]) == (0, 5)


def test_payments_idempotent_and_refund_before_charge_voids(http, urls):
    order, user = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"order_id": order, "user_id": user, "amount": "12.34"}
    assert http.post(f"{urls['payments']}/payments", json=body).status_code == 201
    assert http.post(f"{urls['payments']}/payments", json=body).status_code == 200
    r = http.post(f"{urls['payments']}/payments", json={**body, "amount": "99.00"})
    assert r.status_code == 409 and r.json()["field"] == "charge_key"
    refunded = http.post(f"{urls['payments']}/payments/{order}/refund").json()
    assert refunded["voided"] and [p["status"] for p in refunded["payments"]] == ["REFUNDED"]
    again = http.post(f"{urls['payments']}/payments/{order}/refund").json()
    assert [p["status"] for p in again["payments"]] == ["REFUNDED"]          # idempotent
    # a refund that overtakes its charge voids the order: the late charge is refused
    late = str(uuid.uuid4())
    assert http.post(f"{urls['payments']}/payments/{late}/refund").json()["payments"] == []
    r = http.post(f"{urls['payments']}/payments", json={**body, "order_id": late})
    assert r.status_code == 409 and r.json()["field"] == "order_id"
    assert late in http.get(f"{urls['payments']}/admin/voided", params={"limit": 10000}).json()["items"]


def test_distinct_charge_keys_are_distinct_charges(http, urls):
    """What the double-charge mutation exploits: the key, not the order, makes a charge unique."""
    order = str(uuid.uuid4())
    body = {"order_id": order, "user_id": str(uuid.uuid4()), "amount": "5.00"}
    assert http.post(f"{urls['payments']}/payments", json={**body, "charge_key": "a"}).status_code == 201
    assert http.post(f"{urls['payments']}/payments", json={**body, "charge_key": "b"}).status_code == 201
    assert http.get(f"{urls['payments']}/payments/by-order/{order}").json()["charges"] == 2


def test_reservation_after_release_is_refused(http, urls):
    p = new_product(http, urls, stock=5)
    order = str(uuid.uuid4())
    assert http.post(f"{urls['catalog']}/inventory/reservations/{order}/release").json()["state"] == "NONE"
    r = http.post(f"{urls['catalog']}/inventory/reservations", json={
        "order_id": order, "items": [{"product_id": p["id"], "quantity": 1}]})
    assert r.status_code == 409 and "released" in r.json()["message"]
    assert stock(http, urls, p["id"])["available"] == 5


def test_cache_aside_read_and_invalidation_on_write(http, urls):
    p = new_product(http, urls, price="5.00")
    url = f"{urls['catalog']}/products/{p['id']}"
    assert http.get(url).headers["x-cache"] == "miss"
    hit = http.get(url)
    assert hit.headers["x-cache"] == "hit" and hit.json()["price"] == "5.00"
    r = http.patch(url, json={"price": "7.25"})
    assert r.status_code == 200 and r.json()["version"] == 2
    after = http.get(url)
    assert after.headers["x-cache"] == "miss" and after.json()["price"] == "7.25"
    assert http.get(url).headers["x-cache"] == "hit"


def test_search_is_fed_from_catalog_changes(http, urls):
    word = "zq" + uuid.uuid4().hex[:8]
    p = new_product(http, urls, name=f"Gizmo {word}")
    deadline = time.monotonic() + 15
    while True:
        items = http.get(f"{urls['search']}/search", params={"q": word}).json()["items"]
        if items:
            break
        assert time.monotonic() < deadline, "product never reached the search index"
        time.sleep(0.1)
    assert items[0]["product_id"] == p["id"]
    http.patch(f"{urls['catalog']}/products/{p['id']}", json={"name": f"Gadget {word}"})
    deadline = time.monotonic() + 15
    while http.get(f"{urls['search']}/documents/{p['id']}").json()["version"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert http.get(f"{urls['search']}/search", params={"q": "Gadget " + word}).json()["items"]


def test_analytics_receives_order_facts(http, urls):
    p = new_product(http, urls, price="3.00")
    user = new_user(http, urls)
    r = http.post(f"{urls['orders']}/orders", json={"user_id": user["id"],
                                                    "items": [{"product_id": p["id"], "quantity": 2}]})
    oid = r.json()["order"]["id"]
    deadline = time.monotonic() + 15
    while (f := http.get(f"{urls['analytics']}/sales/orders/{oid}")).status_code != 200:
        assert time.monotonic() < deadline, "order never reached analytics"
        time.sleep(0.1)
    assert f.json()["status"] == "CONFIRMED" and Decimal(f.json()["total_amount"]) == Decimal("6.00")


def test_login_session_and_dashboard_composition(http, urls):
    user = new_user(http, urls)
    r = http.post(f"{urls['users']}/sessions", json={"email": user["email"], "password": "correct horse"})
    assert r.status_code == 201
    tok = r.json()["token"]
    assert http.get(f"{urls['users']}/sessions/{tok}").json()["user_id"] == user["id"]
    bad = http.post(f"{urls['users']}/sessions", json={"email": user["email"], "password": "wrong pw"})
    assert bad.status_code == 401 and bad.json()["field"] == "password"
    prof = http.put(f"{urls['users']}/users/{user['id']}/profile", json={"preferences": {"lang": "ja"}})
    assert prof.json()["profile"]["preferences"] == {"lang": "ja"}
    d = http.get(f"{urls['users']}/dashboard/{user['id']}").json()
    assert d["user"]["id"] == user["id"] and d["partial"] == []
    assert d["orders"]["items"] == [] and d["payments"]["items"] == []


def test_profile_update_of_unknown_user_is_404(http, urls):
    r = http.put(f"{urls['users']}/users/{uuid.uuid4()}/profile", json={"avatar_url": "x"})
    assert r.status_code == 404 and r.json()["field"] == "user_id"


def test_release_after_confirm_restocks_and_confirm_after_release_conflicts(http, urls):
    p = new_product(http, urls, stock=10)
    order = str(uuid.uuid4())
    req = {"order_id": order, "items": [{"product_id": p["id"], "quantity": 3}]}
    assert http.post(f"{urls['catalog']}/inventory/reservations", json=req).status_code == 201
    assert http.post(f"{urls['catalog']}/inventory/reservations/{order}/confirm").status_code == 200
    assert http.post(f"{urls['catalog']}/inventory/reservations/{order}/release").json()["state"] == "RELEASED"
    s = stock(http, urls, p["id"])
    assert (s["available"], s["reserved"], s["sold"]) == (10, 0, 0)
    r = http.post(f"{urls['catalog']}/inventory/reservations/{order}/confirm")
    assert r.status_code == 409 and r.json()["field"] == "order_id"
    r = http.post(f"{urls['catalog']}/inventory/reservations/{uuid.uuid4()}/confirm")
    assert r.status_code == 404


def test_concurrent_multi_item_orders_conserve_stock_without_5xx(http, urls):
    """Overlapping multi-item sagas in parallel: no deadlock, no 5xx, and per
    product initial == available + reserved + sold with nothing left reserved."""
    import concurrent.futures as cf
    import random as rnd
    products = [new_product(http, urls, stock=15, price="1.00") for _ in range(3)]
    user = new_user(http, urls)

    def order(i):
        r = rnd.Random(i)
        items = [{"product_id": p["id"], "quantity": r.randint(1, 3)}
                 for p in r.sample(products, r.randint(2, 3))]
        with httpx.Client(timeout=60) as c:
            return c.post(f"{urls['orders']}/orders", json={"user_id": user["id"], "items": items}).status_code
    with cf.ThreadPoolExecutor(12) as ex:
        codes = list(ex.map(order, range(40)))
    assert all(c in (201, 409) for c in codes), codes
    assert codes.count(201) > 0 and codes.count(409) > 0   # stock ran out on purpose
    for p in products:
        s = stock(http, urls, p["id"])
        assert s["reserved"] == 0 and s["available"] >= 0
        assert s["available"] + s["reserved"] + s["sold"] == s["initial"] == 15
    confirmed = http.get(f"{urls['orders']}/users/{user['id']}/orders",
                         params={"read": "primary", "limit": 100}).json()["items"]
    assert len(confirmed) == codes.count(201)
    assert all(o["status"] == "CONFIRMED" for o in confirmed)


@pytest.mark.parametrize("raw", [
    b'{"preferences": {"x": 1e20}}',          # was committed, then every read of the user was a 500
    b'{"preferences": {"x": 123456789012345678901234567890}}',
    b'{"preferences": {"x": "\\ud800"}}',
    b'{"preferences": {"\\ud800": 1}}',
    b'{"preferences": {"x": NaN}}',
    b'{"preferences": {"x": Infinity}}',
    b'{"preferences": {"x": 1e400}}',
])
def test_unstorable_preferences_are_refused_and_reads_stay_fine(http, urls, raw):
    uid = new_user(http, urls)["id"]
    good = {"theme": "dark", "big": 2 ** 63 - 1, "ratio": 0.1, "list": [1, 2.5, "ü"]}
    r = http.put(f"{urls['users']}/users/{uid}/profile", json={"preferences": good})
    assert r.status_code == 200 and r.json()["profile"]["preferences"] == good, r.text
    r = http.put(f"{urls['users']}/users/{uid}/profile", content=raw,
                 headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "preferences", r.text
    # Nothing was written: every read still answers, with the earlier preferences.
    r = http.get(f"{urls['users']}/users/{uid}")
    assert r.status_code == 200 and r.json()["profile"]["preferences"] == good, r.text
    assert http.get(f"{urls['users']}/dashboard/{uid}").status_code == 200
    r = http.put(f"{urls['users']}/users/{uid}/profile", json={"avatar_url": "https://example.com/a.png"})
    assert r.status_code == 200 and r.json()["profile"]["preferences"] == good, r.text


def test_an_order_total_over_the_column_is_refused_and_its_stock_released(http, urls):
    # orders.total_amount is DECIMAL(10,2); found by the contract fuzzer as a 500.
    p = new_product(http, urls, stock=5, price="99999999.99")
    user = new_user(http, urls)
    r = http.post(f"{urls['orders']}/orders", headers={"Idempotency-Key": uuid.uuid4().hex},
                  json={"user_id": user["id"], "items": [{"product_id": p["id"], "quantity": 2}]})
    assert r.status_code == 422 and r.json()["field"] == "items", r.text
    assert stock(http, urls, p["id"])["available"] == 5
    replay = http.post(f"{urls['orders']}/orders", headers={"Idempotency-Key": r.request.headers["Idempotency-Key"]},
                       json={"user_id": user["id"], "items": [{"product_id": p["id"], "quantity": 2}]})
    assert replay.status_code == 422, replay.text
