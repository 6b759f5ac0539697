"""Prometheus metrics of one service process (prometheus_client).

- http_request_duration_seconds{method,route,status}   request latency per route
- db_query_duration_seconds{pool,query}                 time inside the database
- psycopg_pool_<stat>{pool}                             psycopg_pool get_stats()
- cache_requests_total{result}                          cache-aside hits/misses
- peer_request_duration_seconds{peer,outcome}           service-to-service calls
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, CounterMetricFamily

__all__ = ["REGISTRY", "HTTP_LATENCY", "DB_LATENCY", "CACHE", "PEER_LATENCY",
           "EVENTS", "PoolCollector", "MetricsMiddleware"]

REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets from 0.5 ms to 30 s (the seed's acquire timeout).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
            0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))

HTTP_LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency by route",
                         ["method", "route", "status"], registry=REGISTRY, buckets=_BUCKETS)
DB_LATENCY = Histogram("db_query_duration_seconds", "Time inside the database per named query "
                       "(after the connection was acquired)", ["pool", "query"],
                       registry=REGISTRY, buckets=_BUCKETS)
CACHE = Counter("cache_requests_total", "Cache-aside lookups", ["result"], registry=REGISTRY)
PEER_LATENCY = Histogram("peer_request_duration_seconds", "Calls to other services",
                         ["peer", "outcome"], registry=REGISTRY, buckets=_BUCKETS)
EVENTS = Counter("bus_events_total", "Events published or consumed", ["topic", "direction"],
                 registry=REGISTRY)

# psycopg_pool get_stats() keys: gauges, and counters (cumulative since start).
_POOL_GAUGES = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting")
_POOL_COUNTERS = ("requests_num", "requests_queued", "requests_wait_ms", "requests_errors",
                  "usage_ms", "returns_bad", "connections_num", "connections_ms",
                  "connections_errors", "connections_lost")


class PoolCollector:
    """Reads each pool's get_stats() at scrape time, so figures are current."""

    def __init__(self):
        self.pools: dict[str, object] = {}

    def add(self, name: str, pool) -> None:
        self.pools[name] = pool

    def collect(self):
        gauges = {k: GaugeMetricFamily(f"psycopg_pool_{k}", f"psycopg_pool {k}", labels=["pool"])
                  for k in _POOL_GAUGES}
        counters = {k: CounterMetricFamily(f"psycopg_pool_{k}", f"psycopg_pool {k} (cumulative)",
                                           labels=["pool"]) for k in _POOL_COUNTERS}
        for name, pool in self.pools.items():
            stats = pool.get_stats()
            for k, fam in gauges.items():
                fam.add_metric([name], stats.get(k, 0))
            for k, fam in counters.items():
                fam.add_metric([name], stats.get(k, 0))
        yield from gauges.values()
        yield from counters.values()

    def describe(self):
        return []


POOLS = PoolCollector()
REGISTRY.register(POOLS)


class MetricsMiddleware:
    """Pure ASGI middleware: latency per route template (not per raw path)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in ("/metrics",):
                HTTP_LATENCY.labels(scope["method"], path, str(status[0])).observe(
                    time.perf_counter() - start)
