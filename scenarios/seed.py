"""Seed users and products through the services' APIs (never their databases).

Idempotent: a user that exists (409) is logged in to learn its id, and
products are only created up to the count wanted.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests

from .data import product_doc, user_credentials

__all__ = ["seed", "SeedError"]


class SeedError(RuntimeError):
    pass


RETRIES = 5


def _post(session: requests.Session, url: str, body: dict) -> requests.Response:
    """POST, retrying transient failures (503, no connection): seeding is set-up,
    and a stack just healed from a fault may need a moment."""
    for attempt in range(RETRIES):
        try:
            r = session.post(url, json=body, timeout=30)
        except requests.RequestException as e:
            if attempt == RETRIES - 1:
                raise SeedError(f"POST {url} failed: {e}") from None
        else:
            if r.status_code != 503 or attempt == RETRIES - 1:
                return r
        time.sleep(0.2 * 2 ** attempt)
    raise AssertionError("unreachable")


def seed(urls: dict[str, str], *, users: int, products: int, stock: int = 100_000,
         concurrency: int = 8, fresh_products: bool = False) -> dict:
    """Returns {"users": [{"id", "email", "password"}...], "products": [ids...]}.

    fresh_products: create `products` new ones for this run alone (a checker
    that audits stock then sees only this run's orders)."""
    users_url, catalog_url = urls["users"], urls["catalog"]
    s = requests.Session()
    try:
        existing = s.get(f"{catalog_url}/products", params={"limit": 500}, timeout=30)
        existing.raise_for_status()
    except requests.RequestException as e:
        raise SeedError(f"GET {catalog_url}/products failed: {e}") from None
    have = [] if fresh_products else [p["id"] for p in existing.json()["items"]]
    base = len(existing.json()["items"]) + int(time.time()) % 1_000_000 * 1000 if fresh_products else 0

    def make_product(i: int) -> str:
        r = _post(s, f"{catalog_url}/products", product_doc(base + i, stock=stock))
        if r.status_code != 201:
            raise SeedError(f"creating product {i}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()["id"]

    def make_user(i: int) -> dict:
        cred = user_credentials(i)
        r = _post(s, f"{users_url}/users", cred)
        if r.status_code == 201:
            return {"id": r.json()["id"], "email": cred["email"], "password": cred["password"]}
        if r.status_code == 409:
            r = _post(s, f"{users_url}/sessions", {"email": cred["email"], "password": cred["password"]})
            if r.status_code == 201:
                return {"id": r.json()["user_id"], "email": cred["email"], "password": cred["password"]}
        raise SeedError(f"seeding user {cred['email']}: HTTP {r.status_code} {r.text[:200]}")

    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        new = list(ex.map(make_product, range(len(have), products)))
        seeded_users = list(ex.map(make_user, range(users)))
    return {"users": seeded_users, "products": (have + new)[:max(products, len(have))]}
