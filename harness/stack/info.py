"""`StackInfo`: every endpoint a stack runs, as typed values (`stack.json`).

A backend writes it when its stack comes up and whenever a part gets a new
PID; everything else reads it through `StackInfo.load`, never as a dict.
The file carries a schema version.  Reading is strict: a missing key, an
unknown key or a value of the wrong type is a `ConfigError` (exit 2) that
names the key, so a stack.json written by another msdb version, or edited
by hand, is refused instead of half-understood.

pydantic (already here through FastAPI) does the strict parsing; the values
stay plain frozen dataclasses.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError

from ..errors import ConfigError, InfraError, NoStackError

__all__ = ["StackInfo", "Service", "Instance", "Database", "Replica", "RedisInfo", "ProxyLink",
           "ProxyApi", "Part", "Engine", "SCHEMA", "STACK_FILE"]

SCHEMA = 2
STACK_FILE = "stack.json"
_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, kw_only=True)
class Service:
    __pydantic_config__ = _STRICT
    url: str


@dataclass(frozen=True, kw_only=True)
class Instance:
    """A PostgreSQL server: a primary, or the streaming replica."""
    __pydantic_config__ = _STRICT
    name: str
    role: str                      # primary | replica
    replica_of: str | None
    services: tuple[str, ...]      # whose databases it holds
    admin_dsn: str                 # superuser, direct (never through a fault proxy): samplers
    datadir: str | None = None     # where the backend has one on this machine
    wal_archive: str | None = None
    audit_log: str | None = None   # the server's JSON log with pgaudit records (None: no audit)


@dataclass(frozen=True, kw_only=True)
class Database:
    """One service's database: its own login role only (seed §2.1)."""
    __pydantic_config__ = _STRICT
    instance: str
    database: str
    role: str
    dsn: str                       # direct
    link: str | None = None        # the fault proxy the service reaches it through
    dsn_via_proxy: str | None = None


@dataclass(frozen=True, kw_only=True)
class Replica:
    __pydantic_config__ = _STRICT
    instance: str
    primary: str
    dsn: str                       # orders' role on the replica
    link: str                      # the streaming link's fault proxy


@dataclass(frozen=True, kw_only=True)
class RedisInfo:
    __pydantic_config__ = _STRICT
    url: str                       # the admin (default) user


@dataclass(frozen=True, kw_only=True)
class ProxyLink:
    """One fault proxy: a link of the stack (kind db, replica-db, redis, http,
    replication, cdc-db), from a part to a part."""
    __pydantic_config__ = _STRICT
    name: str
    kind: str
    source: str
    target: str
    listen: str
    upstream: str


@dataclass(frozen=True, kw_only=True)
class ProxyApi:
    __pydantic_config__ = _STRICT
    api: str                       # Toxiproxy HTTP API
    proxies: tuple[ProxyLink, ...]

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.proxies}


@dataclass(frozen=True, kw_only=True)
class Part:
    """A process-level part: what process faults may target.  `proc` is the
    supervisor's record (PID and start time) where the backend has PIDs."""
    __pydantic_config__ = _STRICT
    name: str
    kind: str                      # postgres | redis | service | proxy | process
    endpoint: str
    proc: dict | None = None
    # A targets file's process actions: argument lists run without a shell
    # (kill, pause, resume, stop, start, restart, running).
    actions: dict[str, tuple[str, ...]] | None = None
    action_timeout_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Engine:
    """What serves one of the seed's stores, and whether it is the seed's own
    engine or a stand-in for it (`stands_in_for`)."""
    __pydantic_config__ = _STRICT
    name: str                      # the store: relational, catalog, search, cache, bus, ...
    kind: str                      # postgresql, redis, duckdb, ...
    version: str | None
    stand_in: bool
    stands_in_for: str | None = None


@dataclass(frozen=True, kw_only=True)
class StackInfo:
    __pydantic_config__ = _STRICT
    schema: int
    backend: str                   # embedded | compose | target
    state: str                     # starting | running
    state_dir: str
    topology: str
    base_port: int | None
    tls: bool
    services: dict[str, Service]
    instances: tuple[Instance, ...]
    databases: dict[str, Database]
    replica: Replica | None
    redis: RedisInfo | None        # None: a targets file without one
    proxy: ProxyApi
    parts: tuple[Part, ...]
    engines: tuple[Engine, ...]
    started_at: str | None = None
    up_seconds: float | None = None
    archive_timeout_s: int | None = None
    run_as: str | None = None
    analytics_db: str | None = None
    target_file: str | None = None   # backend target: the targets file it was read from
    # Service settings a scenario changed for its run (services.yaml variables).
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        return {k: s.url for k, s in self.services.items()}

    def instance(self, name: str) -> Instance:
        for i in self.instances:
            if i.name == name:
                return i
        raise KeyError(f"no PostgreSQL instance named {name!r} (have: "
                       f"{', '.join(i.name for i in self.instances)})")

    def instance_of(self, service: str) -> Instance:
        return self.instance(self.databases[service].instance)

    @property
    def off_postgres(self) -> frozenset[str]:
        """Services with a database on PostgreSQL that their store is not on
        (the catalog on MongoDB with --engines seed): the database is there,
        but the service never connects to it."""
        return frozenset(e.name for e in self.engines
                         if e.name in self.databases and not e.kind.startswith("postgresql"))

    @property
    def primaries(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.role == "primary")

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    # -- the file --------------------------------------------------------------------

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data, where: str = STACK_FILE) -> "StackInfo":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"{where}: schema {data.get('schema', data.get('version'))!r}; this msdb "
                              f"reads schema {SCHEMA}: stop that stack with the msdb that started "
                              f"it, then `msdb up` again")
        try:
            return _ADAPTER.validate_python(data)
        except ValidationError as e:
            raise ConfigError(f"{where}: " + "; ".join(_explain(er) for er in e.errors()[:5])) from None

    @classmethod
    def load(cls, state_dir: str | Path) -> "StackInfo":
        """The stack recorded in state_dir, or NoStackError (exit 3)."""
        path = Path(state_dir) / STACK_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NoStackError(f"no stack in {state_dir} (no {path}); start one with `msdb up`") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InfraError(f"{path} is corrupt ({e}); run `msdb down` and `msdb up --fresh`") from None
        return cls.from_json(data, str(path))

    def save(self, state_dir: str | Path | None = None) -> Path:
        path = Path(state_dir or self.state_dir) / STACK_FILE
        write_json_atomic(path, self.to_json())
        return path


def _explain(err: dict) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{loc}: unknown key"
    if err["type"] == "missing":
        return f"{loc}: missing key"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


_ADAPTER = TypeAdapter(StackInfo)


def write_json_atomic(path: Path, data, mode: int = 0o600) -> None:
    """Readers never see half a file: write aside, then rename."""
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        os.fchmod(f.fileno(), mode)
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
