"""Malformed and hostile requests to every endpoint get a 4xx that names the field.

Endpoints come from each service's own /openapi.json, so a new endpoint is
covered without editing this file.  No request may produce a 5xx, a
traceback or a hang.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

pytestmark = pytest.mark.integration

SERVICES = ("users", "catalog", "orders", "payments", "search", "analytics")
HOSTILE_STRINGS = ["x" * 5000, "nul\x00byte", "'; DROP TABLE users; --"]


def _resolve(spec, schema):
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _assert_4xx_naming(r: httpx.Response, field: str | None = None):
    assert 400 <= r.status_code < 500, f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert body.get("error") and isinstance(body.get("field"), str) and body["field"], body
    if field is not None:
        named = {body["field"]} | {e["field"] for e in body.get("errors", [])}
        assert field in named, f"expected {field!r} to be named, got {named} ({body})"


@pytest.fixture(scope="module")
def specs(urls):
    out = {}
    with httpx.Client(timeout=10) as c:
        for svc in SERVICES:
            out[svc] = c.get(f"{urls[svc]}/openapi.json").json()
    return out


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=30) as c:
        yield c


def _ops(spec):
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            yield path, method.upper(), op


def _fill(path, params, override=None):
    for p in params:
        if p["in"] == "path":
            value = override.get(p["name"]) if override and p["name"] in override else str(uuid.uuid4())
            path = path.replace("{" + p["name"] + "}", value)
    return path


def test_every_service_documents_its_api(specs):
    for svc, spec in specs.items():
        paths = set(spec["paths"])
        assert "/health" in paths and "/metrics" in paths, svc


@pytest.mark.parametrize("svc", SERVICES)
def test_bad_path_parameters_are_named(specs, urls, http, svc):
    n = 0
    for path, method, op in _ops(specs[svc]):
        params = op.get("parameters", [])
        for p in [p for p in params if p["in"] == "path"]:
            for bad in ("not-a-uuid", "1' OR '1'='1", "x" * 3000, "..%2F..%2Fetc"):
                url = urls[svc] + _fill(path, params, {p["name"]: bad})
                r = http.request(method, url, json={})
                # a path that no longer matches a route is a 404 naming the route
                if r.status_code == 404 and r.json().get("error") == "not_found" and "field" not in r.json():
                    continue
                _assert_4xx_naming(r, p["name"])
                n += 1
    if any("{" in p for p in specs[svc]["paths"]):
        assert n > 0


@pytest.mark.parametrize("svc", SERVICES)
def test_bad_query_parameters_are_named(specs, urls, http, svc):
    for path, method, op in _ops(specs[svc]):
        params = op.get("parameters", [])
        for p in [p for p in params if p["in"] == "query"]:
            schema = _resolve(specs[svc], p.get("schema", {}))
            types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
            bads = ["abc", "-5", "99999999999999999999"] if "integer" in types else \
                ["x" * 5000, "nul\x00"]
            # the other required query parameters get valid values, so that the
            # bad one is what the service has to name
            good = {q["name"]: "1" if "integer" in {_resolve(specs[svc], q.get("schema", {})).get("type")}
                    else "a" for q in params if q["in"] == "query" and q.get("required")
                    and q["name"] != p["name"]}
            for bad in bads:
                url = urls[svc] + _fill(path, params)
                r = http.request(method, url, params={**good, p["name"]: bad})
                if r.status_code == 404:   # valid query, unknown (random) id: named too
                    _assert_4xx_naming(r)
                    continue
                _assert_4xx_naming(r, p["name"])


@pytest.mark.parametrize("svc", SERVICES)
def test_malformed_and_hostile_bodies_are_named(specs, urls, http, svc):
    spec = specs[svc]
    for path, method, op in _ops(spec):
        if "requestBody" not in op:
            continue
        url = urls[svc] + _fill(path, op.get("parameters", []))
        # malformed JSON, wrong top-level types, no body at all
        for raw in (b'{"a": ', b"[1, 2]", b'"text"', b"", b"\xff\xfe"):
            r = http.request(method, url, content=raw, headers={"content-type": "application/json"})
            _assert_4xx_naming(r, "body")
        # oversized and deeply nested bodies
        r = http.request(method, url, content=b'{"a": "' + b"x" * 200_000 + b'"}',
                         headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] == "body"
        r = http.request(method, url, content=b"[" * 20_000 + b"]" * 20_000,
                         headers={"content-type": "application/json"})
        _assert_4xx_naming(r, "body")
        # every property, one hostile value at a time; unknown properties are named too
        schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
        r = http.request(method, url, json={"no_such_field": 1})
        _assert_4xx_naming(r, "no_such_field")
        for prop, ps in schema.get("properties", {}).items():
            ps = _resolve(spec, ps)
            types = {ps.get("type")} | {_resolve(spec, s).get("type") for s in ps.get("anyOf", [])}
            values = []
            if "string" in types:
                values += HOSTILE_STRINGS[:2]
                if not types & {"number", "integer"}:
                    values.append(12345)
            if "integer" in types or "number" in types:
                values += [-1, "many", 1e308, "NaN"]
            if "array" in types:
                values += [[], "not-a-list", [{"product_id": "nope", "quantity": -1}]]
            if "object" in types:
                values += ["not-an-object", {"k": "\x00"}, {"deep": [[[[[[[[[[[1]]]]]]]]]]]}]
            for v in values:
                r = http.request(method, url, json={prop: v})
                _assert_4xx_naming(r)
                named = {r.json()["field"]} | {e["field"] for e in r.json().get("errors", [])}
                assert any(n == prop or n.startswith(prop + "[") or n.startswith(prop + ".")
                           for n in named), (svc, method, path, prop, v, r.json())


def test_nested_item_errors_name_the_exact_field(urls, http):
    uid = str(uuid.uuid4())
    r = http.post(f"{urls['orders']}/orders", json={"user_id": uid, "items": [
        {"product_id": str(uuid.uuid4()), "quantity": 1},
        {"product_id": str(uuid.uuid4()), "quantity": -3}]})
    _assert_4xx_naming(r, "items[1].quantity")
    r = http.post(f"{urls['orders']}/orders", json={"user_id": uid, "items": []})
    _assert_4xx_naming(r, "items")
    pid = str(uuid.uuid4())
    r = http.post(f"{urls['orders']}/orders", json={"user_id": uid, "items": [
        {"product_id": pid, "quantity": 1}, {"product_id": pid, "quantity": 1}]})
    _assert_4xx_naming(r, "items[1].product_id")
    r = http.post(f"{urls['orders']}/orders", json={"user_id": uid, "items": [
        {"product_id": pid, "quantity": 1}]})
    assert r.status_code == 404 and r.json()["field"] == "items"     # unknown product
    r = http.post(f"{urls['catalog']}/inventory/reservations", json={
        "order_id": str(uuid.uuid4()), "items": [{"product_id": pid, "quantity": 1}]})
    assert r.status_code == 404 and r.json()["product_id"] == pid


@pytest.mark.parametrize("key", ["k" * 300, "has space", "tab\there"])
def test_bad_idempotency_key_is_named(urls, http, key):
    r = http.post(f"{urls['orders']}/orders", headers={"Idempotency-Key": key},
                  json={"user_id": str(uuid.uuid4()), "items": [{"product_id": str(uuid.uuid4()), "quantity": 1}]})
    _assert_4xx_naming(r, "Idempotency-Key")


def test_unknown_ids_are_404_naming_the_id(urls, http):
    missing = str(uuid.uuid4())
    for url, field in [(f"{urls['users']}/users/{missing}", "user_id"),
                       (f"{urls['users']}/dashboard/{missing}", "user_id"),
                       (f"{urls['catalog']}/products/{missing}", "product_id"),
                       (f"{urls['catalog']}/inventory/{missing}", "product_id"),
                       (f"{urls['orders']}/orders/{missing}", "order_id"),
                       (f"{urls['payments']}/payments/by-order/{missing}", "order_id"),
                       (f"{urls['search']}/documents/{missing}", "product_id"),
                       (f"{urls['analytics']}/sales/orders/{missing}", "order_id")]:
        r = http.get(url)
        assert r.status_code == 404 and r.json()["field"] == field, (url, r.text)
    r = http.get(f"{urls['users']}/no/such/route")
    assert r.status_code == 404 and "no route" in r.json()["message"]
    r = http.delete(f"{urls['orders']}/orders")
    assert r.status_code == 405


def test_openapi_documents_the_error_body_and_real_statuses(specs, urls, http):
    cdc = http.get(f"{urls['cdc']}/openapi.json").json()
    for svc, spec in {**specs, "cdc": cdc}.items():
        schemas = spec["components"]["schemas"]
        assert "HTTPValidationError" not in schemas and "ErrorBody" in schemas, svc
        for path, method, op in _ops(spec):
            for code, resp in op["responses"].items():
                if code.startswith("4") or (code == "503" and path != "/health"):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (svc, method, path, code)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"]), (svc, method, path)
        assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert {"201", "200", "402", "409"} <= set(specs["orders"]["paths"]["/orders"]["post"]["responses"])
    assert {"201", "200", "402", "409"} <= set(specs["payments"]["paths"]["/payments"]["post"]["responses"])
    assert "401" in specs["users"]["paths"]["/sessions"]["post"]["responses"]
    assert "409" in specs["users"]["paths"]["/users"]["post"]["responses"]
    email = specs["users"]["components"]["schemas"]["RegisterUser"]["properties"]["email"]
    assert email["format"] == "email" and email["pattern"]
    price = specs["catalog"]["components"]["schemas"]["NewProduct"]["properties"]["price"]
    assert {b["type"] for b in price["anyOf"]} == {"number", "string"} and \
        all(("maximum" in b) or ("pattern" in b) for b in price["anyOf"])


def test_405_allows_every_method_of_the_path_and_typed_ids_are_named(urls, http):
    r = http.options(f"{urls['catalog']}/products")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "POST"}, r.headers
    r = http.get(f"{urls['catalog']}/inventory/reservations")     # not a product id
    assert r.status_code == 405 and r.headers["allow"] == "POST", (r.status_code, r.text)
    r = http.get(f"{urls['catalog']}/inventory/not-a-uuid")
    _assert_4xx_naming(r, "product_id")
    assert r.status_code == 422
