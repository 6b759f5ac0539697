"""A targets file: your own deployment as a stack msdb runs against but
never starts (`msdb run SCENARIO --target FILE`, `msdb target export`).

The file (YAML, field by field in docs/targets.md) says where the services
answer, which Toxiproxy proxy is which link, optionally the PostgreSQL
admin DSNs (samplers, heartbeats), the replica and Redis, and per part the
commands of its process faults, each an argument list run without a shell.

Reading it is strict (pydantic, like stack.json): an unknown key, a wrong
type or a host other than loopback (unless `allow_remote: true`) is a
ConfigError (exit 2) naming the key.  `resolve()` then reaches the
deployment: a URL that does not answer is an InfraError (exit 3) naming
it, a proxy the API does not have is exit 2 naming its key.  The result is
a `StackInfo` (backend "target") saved in a scratch state dir, so that the
run's helper processes (nemesis, lag monitor) open it like any other stack.

`TargetBackend` starts and stops nothing: `down()` only removes that
scratch dir, and a process fault is the file's command for it.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import psycopg
import requests
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chaos.client import ToxiproxyServer

from ..errors import ConfigError, InfraError, UsageError
from ..files import read_yaml
from .info import (SCHEMA, Database, Engine, Instance, Part, ProxyApi, ProxyLink, RedisInfo,
                   Replica, Service, StackInfo)
from .proxies import repoint_proxy
from .status import PartStatus, StatusProbe, status

__all__ = ["TargetFile", "TargetBackend", "TargetActions", "load_target", "resolve",
           "export_target", "ACTIONS", "REQUIRED_SERVICES", "missing_for"]

FORMAT = 1
ACTIONS = ("kill", "pause", "resume", "stop", "start", "restart", "running")
# The workload calls these; cdc (the relay) is optional: without it, no CDC lag.
REQUIRED_SERVICES = ("users", "catalog", "orders", "payments", "search", "analytics")
ACTION_TIMEOUT_S = 180.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LinkEntry(_Strict):
    kind: Literal["db", "replica-db", "redis", "http", "replication", "cdc-db", "mongo", "es", "kafka"]
    from_: str = Field(alias="from")
    to: str


class ToxiproxyEntry(_Strict):
    api: str
    links: dict[str, LinkEntry]


class InstanceEntry(_Strict):
    role: Literal["primary", "replica"] = "primary"
    replica_of: str | None = None
    services: list[str] = []
    admin_dsn: str


class DatabaseEntry(_Strict):
    instance: str
    database: str
    role: str
    dsn: str
    link: str | None = None


class ReplicaEntry(_Strict):
    instance: str
    primary: str
    dsn: str
    link: str | None = None     # the streaming link's proxy, if it has one


class RedisEntry(_Strict):
    url: str


class PartEntry(_Strict):
    kind: Literal["postgres", "postgres-replica", "redis", "service", "proxy", "process", "engine",
                  "engine-storage"] = "process"
    endpoint: str = ""
    timeout_s: float = Field(default=ACTION_TIMEOUT_S, gt=0, le=3600)
    kill: list[str] | None = None
    pause: list[str] | None = None
    resume: list[str] | None = None
    stop: list[str] | None = None
    start: list[str] | None = None
    restart: list[str] | None = None
    running: list[str] | None = None   # exit 0: running; anything else: not


class TargetFile(_Strict):
    msdb_target: Literal[1]
    name: str = "target"
    allow_remote: bool = False
    topology: str = "own"
    services: dict[str, str]
    toxiproxy: ToxiproxyEntry
    instances: dict[str, InstanceEntry] = {}
    databases: dict[str, DatabaseEntry] = {}
    replica: ReplicaEntry | None = None
    redis: RedisEntry | None = None
    parts: dict[str, PartEntry] = {}
    # The deployment's own service settings (services.yaml variables) that a
    # scenario needs: msdb cannot set them, only check that you did.
    settings: dict[str, dict[str, str]] = {}


# -- reading and checking the file ------------------------------------------------------

def _explain(err: dict) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    loc = loc.replace("from_", "from")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if err["type"] == "missing":
        return f"{loc}: missing key"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def load_target(path: str | Path) -> TargetFile:
    """The parsed, checked targets file (ConfigError naming the key otherwise)."""
    where = f"--target {str(path)!r}"
    raw = read_yaml(path, "--target")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys (msdb_target, services, toxiproxy, ...)")
    try:
        t = TargetFile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{where}: " + "; ".join(_explain(er) for er in e.errors()[:5])) from None
    _check(t, where)
    return t


def _host_ok(host: str | None, allow_remote: bool) -> bool:
    if allow_remote:
        return True
    if not host or host == "localhost":
        return bool(host)
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url(value: str, key: str, where: str, allow_remote: bool, schemes: tuple[str, ...]) -> None:
    try:
        u = urlsplit(value)
        port = u.port
    except ValueError as e:
        raise ConfigError(f"{where}: {key}: {value!r} is not a URL ({e})") from None
    if u.scheme not in schemes or not u.hostname:
        raise ConfigError(f"{where}: {key}: {value!r} is not a {'/'.join(schemes)} URL with a host")
    if port is None and u.scheme in ("http", "https") and not u.netloc:
        raise ConfigError(f"{where}: {key}: {value!r} has no host")
    if not _host_ok(u.hostname, allow_remote):
        raise ConfigError(f"{where}: {key}: host {u.hostname!r} is not loopback; a targets file "
                          f"reaches other hosts only with `allow_remote: true`")


def _dsn(value: str, key: str, where: str, allow_remote: bool) -> None:
    try:
        params = psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError as e:
        raise ConfigError(f"{where}: {key}: not a PostgreSQL connection string ({e})") from None
    host = params.get("host") or params.get("hostaddr")
    if host and host.startswith("/"):
        return      # a Unix socket is local
    if not _host_ok(host, allow_remote):
        raise ConfigError(f"{where}: {key}: host {host!r} is not loopback; a targets file "
                          f"reaches other hosts only with `allow_remote: true`")


def _check(t: TargetFile, where: str) -> None:
    remote = t.allow_remote
    missing = [s for s in REQUIRED_SERVICES if s not in t.services]
    if missing:
        raise ConfigError(f"{where}: services: missing {', '.join(missing)} (the workload calls "
                          f"{', '.join(REQUIRED_SERVICES)})")
    for name, url in t.services.items():
        _url(url, f"services.{name}", where, remote, ("http", "https"))
    _url(t.toxiproxy.api, "toxiproxy.api", where, remote, ("http",))
    try:
        ToxiproxyServer.at(t.toxiproxy.api)
    except ValueError as e:
        raise ConfigError(f"{where}: toxiproxy.api: {e}") from None
    if not t.toxiproxy.links:
        raise ConfigError(f"{where}: toxiproxy.links: name at least one proxy (name: {{kind, from, to}})")
    for name, inst in t.instances.items():
        _dsn(inst.admin_dsn, f"instances.{name}.admin_dsn", where, remote)
        if inst.role == "replica" and inst.replica_of not in t.instances:
            raise ConfigError(f"{where}: instances.{name}.replica_of: {inst.replica_of!r} is not an "
                              f"instance of this file ({', '.join(t.instances)})")
    for svc, db in t.databases.items():
        if db.instance not in t.instances:
            raise ConfigError(f"{where}: databases.{svc}.instance: {db.instance!r} is not under "
                              f"instances ({', '.join(t.instances) or 'none'})")
        _dsn(db.dsn, f"databases.{svc}.dsn", where, remote)
        if db.link is not None and db.link not in t.toxiproxy.links:
            raise ConfigError(f"{where}: databases.{svc}.link: {db.link!r} is not under toxiproxy.links")
    if t.replica is not None:
        for key in ("instance", "primary"):
            if getattr(t.replica, key) not in t.instances:
                raise ConfigError(f"{where}: replica.{key}: {getattr(t.replica, key)!r} is not under "
                                  f"instances ({', '.join(t.instances) or 'none'})")
        _dsn(t.replica.dsn, "replica.dsn", where, remote)
    if t.redis is not None:
        _url(t.redis.url, "redis.url", where, remote, ("redis", "rediss", "unix"))
    for name, part in t.parts.items():
        for action in ACTIONS:
            argv = getattr(part, action)
            if argv is None:
                continue
            key = f"parts.{name}.{action}"
            if not argv or not all(isinstance(a, str) and a for a in argv):
                raise ConfigError(f"{where}: {key}: give a non-empty argument list of strings "
                                  f"(run without a shell)")
            if shutil.which(argv[0]) is None:
                raise ConfigError(f"{where}: {key}: program {argv[0]!r} not found (give a path or a "
                                  f"command on PATH)")


# -- reaching the deployment --------------------------------------------------------------

def resolve(t: TargetFile, path: str | Path, state_dir: Path) -> StackInfo:
    """Reach every URL of the file and build its StackInfo (saved in state_dir)."""
    where = f"--target {str(path)!r}"
    http = requests.Session()
    http.trust_env = False
    try:
        for name, url in t.services.items():
            try:
                r = http.get(url.rstrip("/") + "/health", timeout=5)
            except requests.RequestException as e:
                raise InfraError(f"{where}: services.{name}: {url} does not answer "
                                 f"({type(e).__name__})") from None
            # 503 is a service that answers but finds a store down: a heal may fix it.
            if r.status_code not in (200, 503) or "json" not in r.headers.get("content-type", ""):
                raise InfraError(f"{where}: services.{name}: {url}/health answered HTTP "
                                 f"{r.status_code} ({r.headers.get('content-type') or 'no content type'})"
                                 f", not the {name} service's health document")
        try:
            have = ToxiproxyServer.at(t.toxiproxy.api, timeout=5).proxies()
        except Exception as e:  # the client raises plain Exceptions
            raise InfraError(f"{where}: toxiproxy.api: {t.toxiproxy.api} does not answer as a "
                             f"Toxiproxy API ({type(e).__name__}: {e})") from None
    finally:
        http.close()
    absent = sorted(set(t.toxiproxy.links) - set(have))
    if absent:
        raise ConfigError(f"{where}: toxiproxy.links.{absent[0]}: no proxy of that name at "
                          f"{t.toxiproxy.api} (it has: {', '.join(sorted(have)) or 'none'})")
    for name, inst in t.instances.items():
        _reach_pg(inst.admin_dsn, f"{where}: instances.{name}.admin_dsn")
    if t.redis is not None:
        import redis
        try:
            with redis.Redis.from_url(t.redis.url, socket_timeout=3, socket_connect_timeout=3) as r:
                r.ping()
        except redis.RedisError as e:
            raise InfraError(f"{where}: redis.url: {_safe(t.redis.url)} does not answer "
                             f"({type(e).__name__})") from None
    proxies = tuple(ProxyLink(name=n, kind=l_.kind, source=l_.from_, target=l_.to,
                              listen=str(have[n].listen), upstream=str(have[n].upstream))
                    for n, l_ in t.toxiproxy.links.items())
    parts = tuple(Part(name=n, kind=p.kind, endpoint=p.endpoint, proc=None,
                       actions={a: tuple(getattr(p, a)) for a in ACTIONS if getattr(p, a)} or None,
                       action_timeout_s=p.timeout_s)
                  for n, p in t.parts.items())
    info = StackInfo(
        schema=SCHEMA, backend="target", state="running", state_dir=str(state_dir),
        topology=t.topology, base_port=None, tls=False,
        services={n: Service(url=u.rstrip("/")) for n, u in t.services.items()},
        instances=tuple(Instance(name=n, role=i.role, replica_of=i.replica_of,
                                 services=tuple(i.services), admin_dsn=i.admin_dsn)
                        for n, i in t.instances.items()),
        databases={s: Database(instance=d.instance, database=d.database, role=d.role, dsn=d.dsn,
                               link=d.link) for s, d in t.databases.items()},
        replica=None if t.replica is None else Replica(
            instance=t.replica.instance, primary=t.replica.primary, dsn=t.replica.dsn,
            link=t.replica.link or ""),
        redis=None if t.redis is None else RedisInfo(url=t.redis.url),
        proxy=ProxyApi(api=t.toxiproxy.api.rstrip("/"), proxies=proxies),
        parts=parts,
        engines=(Engine(name="deployment", kind=t.name, version=None, stand_in=False),),
        target_file=str(Path(path).resolve()),
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    info.save(state_dir)
    return info


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    u = urlsplit(url)
    return url.replace(f":{u.password}@", ":***@") if u.password else url


def _reach_pg(dsn: str, what: str) -> None:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as c:
            c.execute("SELECT 1")
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InfraError(f"{what}: cannot connect ({first})") from None


# -- what a scenario needs from a target --------------------------------------------------

def missing_for(info: StackInfo, raw_schedule: list, needs: set[str], service_env: dict) -> str | None:
    """Why this scenario cannot run against this target, naming the key the
    targets file lacks; None if it can."""
    unset = _unset_settings(info, service_env)
    if unset:
        svc, key, value = unset[0]
        return (f"needs settings.{svc}.{key}: {value!r} (it runs the {svc} service with "
                f"{key}={value}; msdb cannot change your deployment's settings: set "
                f"{', '.join(f'{s}.{k}={v}' for s, k, v in unset)} there, and say so under "
                f"settings in the targets file)")
    by_part = {p.name: p for p in info.parts}
    for item in raw_schedule:
        if not isinstance(item, dict):
            continue    # the schedule parser names it
        kind, target = item.get("kind"), item.get("target")
        if kind in ("kill", "stop", "pause"):
            if target == "@orders-instance":
                if "orders" not in info.databases:
                    return ("needs databases.orders (which instance holds order_service_db: its "
                            f"{kind} fault targets that instance)")
                target = info.databases["orders"].instance
            heal = "resume" if kind == "pause" else "start"
            part = by_part.get(target)
            for action in (kind, heal):
                if part is None or not part.actions or action not in part.actions:
                    what = f"the {kind} fault" if action == kind else f"the heal of its {kind} fault"
                    return f"needs parts.{target}.{action} (the command for {what} on {target})"
        elif isinstance(target, str) and target not in info.proxy.names:
            return f"needs toxiproxy.links.{target} (the proxy its {kind} fault acts on)"
    if "replica" in needs:
        if info.replica is None:
            return "needs replica (the streaming replica whose lag it measures)"
        for inst in (info.replica.primary, info.replica.instance):
            if inst not in {i.name for i in info.instances}:
                return f"needs instances.{inst}.admin_dsn (its heartbeats are written on the " \
                       f"primary and read on the replica)"
    if "redis" in needs and info.redis is None:
        return "needs redis.url (the CDC bus's backlog is read from Redis)"
    if "cdc" in needs and "cdc" not in info.services:
        return "needs services.cdc (the CDC relay, whose lag it measures)"
    return None


def _declared_settings(info: StackInfo) -> dict[str, dict[str, str]]:
    if not info.target_file:
        return {}
    return load_target(info.target_file).settings


def _unset_settings(info: StackInfo, service_env: dict) -> list[tuple[str, str, str]]:
    """The scenario's service settings that the targets file does not declare."""
    if not service_env:
        return []
    declared = _declared_settings(info)
    return [(svc, k, str(v)) for svc, env in service_env.items() for k, v in env.items()
            if declared.get(svc, {}).get(k) != str(v)]


# -- the backend --------------------------------------------------------------------------

class TargetActions:
    """A targets file's process actions: its commands, run without a shell."""

    def __init__(self, info: StackInfo):
        self.info = info
        self.parts = {p.name: p for p in info.parts}

    def _argv(self, part: str, action: str) -> tuple[str, ...] | None:
        p = self.parts.get(part)
        if p is None:
            raise KeyError(f"no part named {part!r} in the targets file "
                           f"(parts: {', '.join(self.parts) or 'none'})")
        return (p.actions or {}).get(action)

    def _run(self, part: str, action: str, *, required: bool = True) -> int | None:
        argv = self._argv(part, action)
        if argv is None:
            if required:
                raise InfraError(f"parts.{part}.{action}: the targets file has no command for it")
            return None
        try:
            r = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=self._timeout(part))
        except subprocess.TimeoutExpired:
            raise InfraError(f"parts.{part}.{action}: {argv[0]} did not finish within "
                             f"{self._timeout(part):g} s") from None
        except OSError as e:
            raise InfraError(f"parts.{part}.{action}: could not run {argv[0]!r}: {e}") from None
        if action != "running" and r.returncode != 0:
            tail = (r.stderr.strip() or r.stdout.strip())[-500:]
            raise InfraError(f"parts.{part}.{action}: {argv[0]} exited {r.returncode}: {tail}")
        return r.returncode

    def _timeout(self, part: str) -> float:
        return self.parts[part].action_timeout_s or ACTION_TIMEOUT_S

    def names(self) -> list[str]:
        return [p.name for p in self.info.parts if p.actions]

    def running(self, part: str) -> bool:
        """The part's `running` command says so (exit 0); without one, msdb
        cannot tell and takes it as running (its health probe still judges it)."""
        rc = self._run(part, "running", required=False)
        return rc is None or rc == 0

    def kill(self, part: str) -> None:
        self._run(part, "kill")

    def pause(self, part: str) -> None:
        self._run(part, "pause")

    def resume(self, part: str) -> None:
        self._run(part, "resume", required=False)   # heal resumes every part it can

    def stop(self, part: str) -> None:
        self._run(part, "stop")

    def start(self, part: str) -> None:
        self._run(part, "start")

    def restart(self, part: str) -> None:
        if self._argv(part, "restart") is not None:
            self._run(part, "restart")
            return
        if self.running(part):
            self.stop(part)
        self.start(part)


class TargetBackend:
    """`StackBackend` of a deployment described by a targets file."""

    kind = "target"

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)

    def __repr__(self) -> str:
        return f"TargetBackend({str(self.state_dir)!r})"

    @classmethod
    def open(cls, path: str | Path, state_dir: Path | None = None) -> "TargetBackend":
        """Read and reach the targets file; its StackInfo goes to state_dir
        (a new scratch dir if None: `down()` removes it)."""
        t = load_target(path)
        state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="msdb-target-"))
        try:
            resolve(t, path, state)
        except BaseException:
            if state_dir is None:
                shutil.rmtree(state, ignore_errors=True)
            raise
        return cls(state)

    def up(self, *, timeout_s: float = 0) -> StackInfo:
        raise UsageError("a targets file's deployment is not started by msdb; start it yourself, "
                         "then `msdb run SCENARIO --target FILE`")

    def down(self, *, purge: bool = False) -> list[str]:
        """Stops nothing (msdb did not start it): removes the scratch state dir."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return []

    def info(self) -> StackInfo:
        return StackInfo.load(self.state_dir)

    def status(self, probe: StatusProbe | None = None) -> list[PartStatus]:
        return status(self.state_dir, probe)

    def actions(self) -> TargetActions:
        return TargetActions(self.info())

    def repoint(self, link: str, upstream: str) -> None:
        repoint_proxy(self.info().proxy.api, link, upstream)

    def set_overrides(self, overrides: dict[str, dict[str, str]]) -> list[str]:
        """Nothing to change when the targets file declares these settings as the
        deployment's own; msdb cannot set them otherwise."""
        unset = _unset_settings(self.info(), overrides)
        if unset:
            raise UsageError("msdb cannot change a deployment's service settings: "
                             + ", ".join(f"{s}.{k}={v}" for s, k, v in unset))
        return []


# -- writing one for a running stack ------------------------------------------------------

def export_target(info: StackInfo, *, python: str = sys.executable) -> dict:
    """A targets file for a running embedded or compose stack.  Its process
    actions call back into msdb (`msdb part ACTION PART --state-dir DIR`)."""
    state = str(Path(info.state_dir).resolve())

    def act(action: str, part: str) -> list[str]:
        return [python, "-m", "harness.cli", "part", action, part, "--state-dir", state]

    fault_parts = [p for p in info.parts if p.kind != "proxy"]   # every heal needs the proxy
    doc = {
        "msdb_target": FORMAT,
        "name": f"msdb {info.backend} stack in {state}",
        "allow_remote": False,
        "topology": info.topology,
        "services": dict(info.urls),
        "toxiproxy": {"api": info.proxy.api,
                      "links": {p.name: {"kind": p.kind, "from": p.source, "to": p.target}
                                for p in info.proxy.proxies}},
        "instances": {i.name: {"role": i.role, "replica_of": i.replica_of,
                               "services": list(i.services), "admin_dsn": i.admin_dsn}
                      for i in info.instances},
        "databases": {s: {"instance": d.instance, "database": d.database, "role": d.role,
                          "dsn": d.dsn, "link": d.link} for s, d in info.databases.items()},
        "parts": {p.name: {"kind": p.kind, "endpoint": p.endpoint,
                           **{a: act(a, p.name) for a in ACTIONS}} for p in fault_parts},
    }
    if info.replica is not None:
        doc["replica"] = {"instance": info.replica.instance, "primary": info.replica.primary,
                          "dsn": info.replica.dsn, "link": info.replica.link or None}
    if info.redis is not None:
        doc["redis"] = {"url": info.redis.url}
    return doc


def dump_target(doc: dict) -> str:
    head = ("# msdb targets file (docs/targets.md).  Written by `msdb target export`; it holds\n"
            "# passwords, so it is readable by its owner only.  Process actions call back into\n"
            "# the msdb that started the stack.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=200, default_flow_style=None)
