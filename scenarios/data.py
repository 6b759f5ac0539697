"""Deterministic test data: product documents and load-test user credentials."""

from __future__ import annotations

import random

__all__ = ["product_doc", "user_credentials", "SEARCH_WORDS", "LOAD_PASSWORD", "ENDPOINTS"]

# Every request name the shop workload reports (SLO files may set thresholds
# per name).  Here, not in workload.py, because importing Locust patches the
# standard library (gevent) and only `msdb run` may do that.
ENDPOINTS = ("catalog GET /inventory/{id}", "catalog GET /products", "catalog GET /products/{id}",
             "orders GET /users/{id}/orders", "orders POST /orders", "search GET /search",
             "users GET /dashboard/{id}", "users GET /sessions/{token}", "users POST /sessions",
             "users POST /users", "users GET /users/{id}", "analytics GET /sales/top-products",
             "orders GET /users/{id}/orders (read-your-writes)", "catalog PATCH /products/{id}")

CATEGORIES = ["garden", "kitchen", "books", "toys", "sports", "electronics", "office", "outdoor"]
ADJECTIVES = ["red", "blue", "compact", "heavy", "wireless", "organic", "classic", "foldable",
              "stainless", "bamboo", "solar", "vintage", "ergonomic", "waterproof", "smart"]
NOUNS = ["hose", "kettle", "novel", "robot", "racket", "headphones", "stapler", "tent",
         "lamp", "backpack", "blender", "puzzle", "bicycle", "notebook", "speaker", "chair"]
SEARCH_WORDS = ADJECTIVES + NOUNS + CATEGORIES
LOAD_PASSWORD = "msdb-load-password"


def product_doc(i: int, *, stock: int) -> dict:
    rng = random.Random(i)
    adj, noun, cat = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(CATEGORIES)
    return {"sku": f"MSDB-{i:06d}", "name": f"{adj.title()} {noun} {i}",
            "description": f"A {adj} {noun} for {cat} lovers. Item number {i}.",
            "category": cat, "price": f"{rng.randint(100, 20000) / 100:.2f}", "stock": stock}


def user_credentials(i: int) -> dict:
    return {"email": f"load-user-{i:05d}@msdb.test", "password": LOAD_PASSWORD,
            "first_name": f"Load{i}", "last_name": "Tester"}
