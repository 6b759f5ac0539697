"""The one config loader: the seed §3.2 YAML shape with ${ENV} interpolation.

    database:
      host: ${DB_HOST}
      ...
      pool: {max: 20, min: 5, acquire: 30000, idle: 10000}
      dialect: postgres
      ssl: require

`load()` returns typed, frozen value objects.  Any wrong, missing or unknown
key raises `ConfigError` whose message starts with the dotted key path, e.g.
``database.pool.max: expected an integer >= 1, got 'lots'``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from psycopg.conninfo import make_conninfo

__all__ = ["ConfigError", "PoolConfig", "DatabaseConfig", "ReplicaConfig",
           "ServiceConfig", "load", "DEFAULT_CONFIG_PATH"]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("services.yaml")

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECTIONS = ("database", "replica", "redis", "peers", "http", "warehouse", "engines")
# Which engine serves each store (issue: the seed's engines).  The defaults are
# the embedded path's: the catalog and search on PostgreSQL, the bus on Redis.
ENGINE_CHOICES = {"catalog": ("postgres", "mongodb"), "search": ("postgres", "elasticsearch"),
                  "bus": ("redis", "kafka")}


class ConfigError(ValueError):
    """A config key is missing, unknown or has a bad value; the message names it."""


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    max: int = 20
    min: int = 5
    acquire: int = 30000   # ms to wait for a connection before giving up
    idle: int = 10000      # ms a connection may sit unused before the pool shrinks

    def __post_init__(self):
        if self.max < 1:
            raise ConfigError(f"database.pool.max: must be >= 1, got {self.max}")
        if not 0 <= self.min <= self.max:
            raise ConfigError(f"database.pool.min: must be between 0 and pool.max "
                              f"({self.max}), got {self.min}")
        if self.acquire <= 0:
            raise ConfigError(f"database.pool.acquire: must be > 0 ms, got {self.acquire}")
        if self.idle <= 0:
            raise ConfigError(f"database.pool.idle: must be > 0 ms, got {self.idle}")


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    host: str
    port: int
    name: str
    username: str
    password: str = field(repr=False)
    pool: PoolConfig
    dialect: str = "postgres"
    ssl: str = "require"
    # The CA that verify-ca / verify-full check the server against; None:
    # libpq's default (~/.postgresql/root.crt).
    sslrootcert: str | None = None

    def conninfo(self, *, host: str | None = None, port: int | None = None) -> str:
        extra = {"sslrootcert": self.sslrootcert} if self.sslrootcert else {}
        return make_conninfo(host=host or self.host, port=port or self.port, dbname=self.name,
                             user=self.username, password=self.password, sslmode=self.ssl,
                             connect_timeout=5, application_name=self.username, **extra)


@dataclass(frozen=True, kw_only=True)
class ReplicaConfig:
    host: str
    port: int


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    database: DatabaseConfig | None = None
    replica: ReplicaConfig | None = None
    redis_url: str | None = field(default=None, repr=False)
    peers: Mapping[str, str] = field(default_factory=dict)
    peer_timeout_ms: int = 5000
    warehouse_path: str | None = None
    engines: "EnginesConfig" = field(default_factory=lambda: EnginesConfig())


@dataclass(frozen=True, kw_only=True)
class EnginesConfig:
    """The engine behind the catalog, search and the CDC bus, and where it is.
    A URL is required only for an engine that is chosen."""
    catalog: str = "postgres"
    search: str = "postgres"
    bus: str = "redis"
    mongodb_url: str | None = field(default=None, repr=False)    # mongodb://user:pw@host:port/db?...
    elasticsearch_url: str | None = field(default=None, repr=False)   # http://user:pw@host:port
    kafka_bootstrap: str | None = None                          # host:port[,host:port]
    # Where the catalog's changes arrive on Kafka, for a consumer that does
    # not reach the catalog's store itself (search): the middle part of
    # msdb.catalog.<namespace>.products, the schema on PostgreSQL and the
    # database on MongoDB.  Empty: the database of mongodb_url where the
    # catalog is on MongoDB, else `public`.
    catalog_cdc_namespace: str | None = None


def _interpolate(value: Any, key: str, env: Mapping[str, str]) -> Any:
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got in (None, ""):
            if default is None:
                raise ConfigError(f"{key}: environment variable {name} is not set")
            return default
        return got
    return _VAR.sub(sub, value)


def _int(value: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise ConfigError(f"{key}: {n} is outside {lo}..{hi}")
    return n


def _str(value: Any, key: str) -> str:
    if value is None or (isinstance(value, str) and value == ""):
        raise ConfigError(f"{key}: missing value")
    if not isinstance(value, (str, int)):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return str(value)


def _mapping(raw: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(raw).__name__}")
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}: unknown key (allowed: {', '.join(allowed)})")
    for k in required:
        if k not in raw:
            raise ConfigError(f"{key}.{k}: missing key")
    return raw


def _database(raw: Any, env: Mapping[str, str]) -> DatabaseConfig:
    keys = ("host", "port", "name", "username", "password", "pool", "dialect", "ssl")
    raw = _mapping(raw, "database", (*keys, "sslrootcert"), required=keys)
    v = {k: _interpolate(raw[k], f"database.{k}", env) for k in keys if k != "pool"}
    rootcert = _interpolate(raw.get("sslrootcert", ""), "database.sslrootcert", env)
    pool_keys = ("max", "min", "acquire", "idle")
    pool = _mapping(raw["pool"], "database.pool", pool_keys, required=pool_keys)
    pool_cfg = PoolConfig(**{
        k: _int(_interpolate(pool[k], f"database.pool.{k}", env), f"database.pool.{k}")
        for k in pool_keys})
    if v["dialect"] != "postgres":
        raise ConfigError(f"database.dialect: only 'postgres' is supported, got {v['dialect']!r}")
    ssl = v["ssl"]
    if isinstance(ssl, bool):
        ssl = "require" if ssl else "disable"
    if ssl not in SSL_MODES:
        raise ConfigError(f"database.ssl: expected one of {', '.join(SSL_MODES)}, got {ssl!r}")
    return DatabaseConfig(
        host=_str(v["host"], "database.host"),
        port=_int(v["port"], "database.port", 1, 65535),
        name=_str(v["name"], "database.name"),
        username=_str(v["username"], "database.username"),
        password=_str(v["password"], "database.password"),
        pool=pool_cfg, dialect="postgres", ssl=ssl,
        sslrootcert=_str(rootcert, "database.sslrootcert") if rootcert else None)


def load(path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
         requires: tuple[str, ...] = ()) -> ServiceConfig:
    """Read the config file; sections named in `requires` must resolve fully.

    Sections a service does not require are still checked for unknown keys,
    but their ${VARS} may stay unset.
    """
    env = os.environ if env is None else env
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    raw = _mapping(raw or {}, "(top level)", _SECTIONS)
    for section in requires:
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown section")
        if section not in raw:
            raise ConfigError(f"{section}: missing section")

    def optional(section: str, fn):
        if section not in raw:
            return None
        try:
            return fn(raw[section])
        except ConfigError:
            if section in requires:
                raise
            return None

    database = optional("database", lambda r: _database(r, env))

    def replica(r):
        r = _mapping(r, "replica", ("host", "port"))
        host = _interpolate(r.get("host"), "replica.host", env)
        port = _interpolate(r.get("port"), "replica.port", env)
        if not host:
            return None
        return ReplicaConfig(host=str(host), port=_int(port, "replica.port", 1, 65535))

    def redis(r):
        r = _mapping(r, "redis", ("url",), required=("url",))
        url = _str(_interpolate(r["url"], "redis.url", env), "redis.url")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"redis.url: expected a redis:// URL, got {url!r}")
        return url

    def peers(r):
        r = _mapping(r, "peers", ("users", "catalog", "orders", "payments", "search", "analytics"))
        out = {}
        for k, v in r.items():
            url = _interpolate(v, f"peers.{k}", env)
            if url:
                if not str(url).startswith(("http://", "https://")):
                    raise ConfigError(f"peers.{k}: expected an http:// URL, got {url!r}")
                out[k] = str(url).rstrip("/")
        return out

    def http(r):
        r = _mapping(r, "http", ("timeout",))
        return _int(_interpolate(r.get("timeout", 5000), "http.timeout", env), "http.timeout", 1)

    def warehouse(r):
        r = _mapping(r, "warehouse", ("path",), required=("path",))
        return _str(_interpolate(r["path"], "warehouse.path", env), "warehouse.path")

    def engines(r):
        keys = ("catalog", "search", "bus", "mongodb_url", "elasticsearch_url", "kafka_bootstrap",
                "catalog_cdc_namespace")
        r = _mapping(r, "engines", keys)
        v = {k: _interpolate(r.get(k), f"engines.{k}", env) for k in keys}
        for store, choices in ENGINE_CHOICES.items():
            v[store] = v[store] or choices[0]
            if v[store] not in choices:
                raise ConfigError(f"engines.{store}: expected one of {', '.join(choices)}, "
                                  f"got {v[store]!r}")
        for store, engine, key, schemes in (("catalog", "mongodb", "mongodb_url", ("mongodb://",)),
                                            ("search", "elasticsearch", "elasticsearch_url",
                                             ("http://", "https://")),
                                            ("bus", "kafka", "kafka_bootstrap", ("",))):
            if v[store] == engine:
                url = _str(v[key], f"engines.{key}")
                if not url.startswith(schemes):
                    raise ConfigError(f"engines.{key}: expected a {' or '.join(schemes)} URL, "
                                      f"got {url!r}")
        ns = v["catalog_cdc_namespace"]
        if ns and not re.fullmatch(r"[A-Za-z0-9_-]+", str(ns)):
            raise ConfigError(f"engines.catalog_cdc_namespace: expected a schema or database name "
                              f"(letters, digits, _ and -), got {ns!r}")
        return EnginesConfig(**{k: (v[k] or None) if k.endswith(("_url", "_bootstrap", "_namespace"))
                                else v[k] for k in keys})

    return ServiceConfig(
        engines=optional("engines", engines) or EnginesConfig(),
        warehouse_path=optional("warehouse", warehouse),
        database=database,
        replica=optional("replica", replica),
        redis_url=optional("redis", redis),
        peers=optional("peers", peers) or {},
        peer_timeout_ms=optional("http", http) or 5000,
    )
