"""What the embedded stack is made of: services, their databases, the
PostgreSQL instances of each topology, and the port block.

Port block (default base 15400, change with --base-port):

    base+0 .. base+4   PostgreSQL primaries (single: +0; grouped: +0..+2;
                       dedicated: +0..+4)
    base+9             PostgreSQL streaming replica of the orders instance
    base+10            Redis
    base+11 .. base+13 --engines seed: the MongoDB-, Elasticsearch- and
                       Kafka-protocol stand-ins (harness/stack/engines.py)
    base+14 .. base+19, base+27, base+28
                       --engines seed: SeaweedFS (the Kafka stand-in's S3
                       storage): master, volume, filer (each http + gRPC), S3
    base+20 .. base+26 services: users, catalog, orders, payments, search,
                       analytics, cdc (the CDC relay)
    base+30            fault proxy API (Toxiproxy-compatible)
    base+31 .. base+69 proxy listeners, one per link

The seed's three PostgreSQL options (second document, 推奨アーキテクチャ):
single (オプション1), grouped (オプション2), dedicated (オプション3).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = [
    "DEFAULT_BASE_PORT", "TOPOLOGIES", "SERVICES", "ServiceSpec", "InstanceSpec",
    "Layout", "layout", "LinkSpec", "PEER_LINKS", "REDIS_USERS", "CDC_SOURCES", "CDC_ROLE",
    "CDC_CONSUMERS", "ENGINE_MODES", "SEED_ENGINE_PORTS",
]

DEFAULT_BASE_PORT = 15400
PORT_BLOCK = 70
TOPOLOGIES = ("single", "grouped", "dedicated")
# `embedded`: PostgreSQL JSONB, PostgreSQL full-text search and Redis Streams
# stand in for MongoDB, Elasticsearch and Kafka; `seed`: protocol stand-ins.
ENGINE_MODES = ("embedded", "seed")
# --engines seed: part -> offset in the block (docs/engines.md).
SEED_ENGINE_PORTS = {"mongo": 11, "elasticsearch": 12, "kafka": 13,
                     "seaweedfs-master": 14, "seaweedfs-master-grpc": 15,
                     "seaweedfs-volume": 16, "seaweedfs-volume-grpc": 17,
                     "seaweedfs-filer": 18, "seaweedfs-filer-grpc": 19,
                     "seaweedfs-s3": 27, "seaweedfs-s3-grpc": 28}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    port_offset: int
    database: str | None = None   # PostgreSQL database (seed naming), None for DuckDB
    role: str | None = None       # its login role
    migrations: str | None = None  # package-relative migrations folder


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("users", 20, "user_service_db", "user_service", "users"),
    ServiceSpec("catalog", 21, "product_service_db", "product_service", "catalog"),
    ServiceSpec("orders", 22, "order_service_db", "order_service", "orders"),
    ServiceSpec("payments", 23, "payment_service_db", "payment_service", "payments"),
    ServiceSpec("search", 24, "search_service_db", "search_service", "search"),
    ServiceSpec("analytics", 25),
    ServiceSpec("cdc", 26),        # the CDC relay (Debezium in the seed)
)
SERVICE_BY_NAME = {s.name: s for s in SERVICES}

# Which instance holds each service's database, per topology.
_PLACEMENT = {
    "single": {"users": "pg-main", "orders": "pg-main", "payments": "pg-main",
               "catalog": "pg-main", "search": "pg-main"},
    "grouped": {"users": "pg-core", "orders": "pg-transactions",
                "payments": "pg-transactions", "catalog": "pg-reference",
                "search": "pg-reference"},
    "dedicated": {"users": "pg-users", "orders": "pg-orders", "payments": "pg-payments",
                  "catalog": "pg-catalog", "search": "pg-search"},
}
_INSTANCE_ORDER = {
    "single": ["pg-main"],
    "grouped": ["pg-core", "pg-transactions", "pg-reference"],
    "dedicated": ["pg-users", "pg-orders", "pg-payments", "pg-catalog", "pg-search"],
}
# Service-to-service calls: (caller, callee).
PEER_LINKS = (("users", "orders"), ("users", "payments"),
              ("orders", "catalog"), ("orders", "payments"))
# Services that use Redis (sessions, cache, bus).
REDIS_USERS = ("users", "catalog", "orders", "search", "analytics", "cdc")
# Databases the CDC relay decodes (logical replication slot per database).
CDC_SOURCES = ("users", "catalog", "orders")
CDC_ROLE = "cdc_relay"
# CDC consumer group -> (the service holding it, the source it consumes)
CDC_CONSUMERS = {"search": ("search", "catalog"), "analytics": ("analytics", "orders"),
                 "orders-user-replica": ("orders", "users")}
PROXY_FIRST_OFFSET = 31

REPLICA_NAME = "pg-replica"
REPLICA_OFFSET = 9
REDIS_OFFSET = 10
PROXY_API_OFFSET = 30


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    port: int
    databases: tuple[str, ...]   # service names whose databases it holds
    replica_of: str | None = None


@dataclass(frozen=True)
class LinkSpec:
    """One network link of the stack, carried by a named fault proxy.

    kind: db (service -> its database), replica-db (orders -> the replica, for
    history reads), redis (service -> Redis), http (service -> service),
    replication (the replica's streaming connection -> its primary),
    cdc-db (the CDC relay -> a source database it decodes).
    """
    name: str
    kind: str
    source: str        # who connects (a service, or the replica)
    target: str        # the part it reaches (an instance, redis, a service)
    listen_port: int
    upstream_port: int

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "from": self.source, "to": self.target,
                "listen": f"127.0.0.1:{self.listen_port}",
                "upstream": f"127.0.0.1:{self.upstream_port}"}


@dataclass(frozen=True)
class Layout:
    topology: str
    base_port: int
    instances: tuple[InstanceSpec, ...]   # primaries first, then the replica
    redis_port: int
    service_ports: dict
    engines: str = "embedded"

    def engine_port(self, name: str) -> int:
        """A --engines seed part's port (SEED_ENGINE_PORTS)."""
        return self.base_port + SEED_ENGINE_PORTS[name]

    def instance_of(self, service: str) -> InstanceSpec:
        for inst in self.instances:
            if inst.replica_of is None and service in inst.databases:
                return inst
        raise KeyError(service)

    @property
    def replica(self) -> InstanceSpec:
        return next(i for i in self.instances if i.replica_of is not None)

    @property
    def primaries(self) -> tuple[InstanceSpec, ...]:
        return tuple(i for i in self.instances if i.replica_of is None)

    @property
    def proxy_api_port(self) -> int:
        return self.base_port + PROXY_API_OFFSET

    @property
    def links(self) -> tuple[LinkSpec, ...]:
        """Every link, in a fixed order that fixes its proxy port."""
        out: list[tuple[str, str, str, str, int]] = []
        for svc in SERVICES:
            if svc.database:
                inst = self.instance_of(svc.name)
                out.append((f"{svc.name}-db", "db", svc.name, inst.name, inst.port))
        out.append(("orders-replica", "replica-db", "orders", self.replica.name, self.replica.port))
        for name in REDIS_USERS:
            out.append((f"{name}-redis", "redis", name, "redis", self.redis_port))
        for a, b in PEER_LINKS:
            out.append((f"{a}-to-{b}", "http", a, b, self.service_ports[b]))
        primary = next(i for i in self.primaries if i.name == self.replica.replica_of)
        out.append(("orders-replication", "replication", self.replica.name, primary.name, primary.port))
        for name in CDC_SOURCES:
            inst = self.instance_of(name)
            out.append((f"cdc-{name}-db", "cdc-db", "cdc", inst.name, inst.port))
        if self.engines == "seed":
            # After every embedded link, so that their ports do not move.  Kafka
            # clients connect to the address the broker advertises, and the
            # broker advertises one: one link that every bus client shares
            # (the relay, search, analytics, orders), named for the bus.
            out.append(("catalog-mongo", "mongo", "catalog", "mongo", self.engine_port("mongo")))
            out.append(("search-es", "es", "search", "elasticsearch",
                        self.engine_port("elasticsearch")))
            out.append(("bus-kafka", "kafka", "cdc", "kafka", self.engine_port("kafka")))
        return tuple(LinkSpec(n, k, s_, t, self.base_port + PROXY_FIRST_OFFSET + i, up)
                     for i, (n, k, s_, t, up) in enumerate(out))

    def link(self, name: str) -> LinkSpec:
        for l_ in self.links:
            if l_.name == name:
                return l_
        raise KeyError(name)

    def all_ports(self) -> dict[int, str]:
        ports = {i.port: f"PostgreSQL {i.name}" for i in self.instances}
        ports[self.redis_port] = "Redis"
        ports.update({p: f"service {s}" for s, p in self.service_ports.items()})
        ports[self.proxy_api_port] = "the fault proxy API"
        if self.engines == "seed":
            ports.update({self.engine_port(n): n for n in SEED_ENGINE_PORTS})
        ports.update({l_.listen_port: f"proxy {l_.name}" for l_ in self.links})
        return ports


def layout(topology: str, base_port: int = DEFAULT_BASE_PORT, engines: str = "embedded") -> Layout:
    if engines not in ENGINE_MODES:
        raise UsageError(f"--engines {engines!r} is not one of {', '.join(ENGINE_MODES)}")
    if topology not in TOPOLOGIES:
        raise UsageError(f"--topology {topology!r} is not one of {', '.join(TOPOLOGIES)}")
    if not isinstance(base_port, int) or not 1024 <= base_port <= 65535 - PORT_BLOCK:
        raise UsageError(f"--base-port {base_port!r} must be an integer between 1024 and "
                         f"{65535 - PORT_BLOCK} (the block uses {PORT_BLOCK} ports)")
    placement = _PLACEMENT[topology]
    instances = []
    for i, name in enumerate(_INSTANCE_ORDER[topology]):
        dbs = tuple(s for s, inst in placement.items() if inst == name)
        instances.append(InstanceSpec(name, base_port + i, dbs))
    orders_inst = placement["orders"]
    instances.append(InstanceSpec(REPLICA_NAME, base_port + REPLICA_OFFSET,
                                  ("orders",), replica_of=orders_inst))
    return Layout(
        topology=topology, base_port=base_port, instances=tuple(instances),
        redis_port=base_port + REDIS_OFFSET,
        service_ports={s.name: base_port + s.port_offset for s in SERVICES},
        engines=engines,
    )
