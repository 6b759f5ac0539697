"""`ComposeBackend`: the seed's real engines in docker-compose (`msdb up --backend compose`).

The stack itself is `docker-compose.yml` at the top of the repository, with
one override file per PostgreSQL topology other than `single`
(`deploy/compose/topology-grouped.yml`, `topology-dedicated.yml`); docs/compose.md
says what runs.  This module owns what msdb needs to know about it:

    compose_files()      the -f files of a topology
    compose_argv()       every docker compose command msdb runs, as a pure function
    link_upstream()      where Toxiproxy points a link (a compose hostname:port)
    toxiproxy_config()   Toxiproxy's -config JSON (deploy/compose/generate.py writes it)
    Secrets              the passwords the compose file uses: environment, then
                         ./.env, then the development defaults in deploy/compose/.env.example
    stack_info()         the `StackInfo` of a compose stack, as the host sees it
                         (published 127.0.0.1 ports) or as a container does (hostnames)
    ComposeBackend       up / down / info / status / actions / repoint
    ComposeActions       process faults as `docker compose kill|pause|unpause|stop|start|restart`

Ports: the embedded stack's block (base 15400) for everything the embedded
stack also runs, and 15470.. for the seed's engines only compose runs
(`SEED_PORTS`).  Every port is published on 127.0.0.1 only.

Nothing here was run against a Docker engine on the machine it was written
on (it has none): see docs/compose.md for what was validated.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

import yaml

from .. import utc
from ..errors import InfraError, UsageError
from .info import (SCHEMA, Database, Engine, Instance, Part, ProxyApi, ProxyLink, RedisInfo,
                   Replica, Service, StackInfo)
from .proxies import repoint_proxy
from .redis_srv import REDIS_KEYS
from .status import PartStatus, StatusProbe, status
from .topology import (DEFAULT_BASE_PORT, SERVICE_BY_NAME, SERVICES, TOPOLOGIES, Layout,
                       LinkSpec, layout)

__all__ = ["ComposeBackend", "ComposeActions", "Secrets", "compose_argv", "compose_files",
           "link_upstream", "toxiproxy_config", "stack_info", "redis_acl_template",
           "require_docker", "PROJECT", "PROJECT_DIR", "SEED_PORTS", "PART_SERVICE",
           "ACTIONS"]

PROJECT = "msdb"
PROJECT_DIR = Path(__file__).resolve().parent.parent.parent   # where docker-compose.yml lives
COMPOSE_FILE = "docker-compose.yml"
DEPLOY_DIR = "deploy/compose"
ENV_EXAMPLE = f"{DEPLOY_DIR}/.env.example"

ARCHIVE_TIMEOUT_S = 900        # seed §7.1, as docker-compose.yml sets archive_timeout
PG_PORT = 5432                 # inside the compose network
REDIS_PORT = 6379
TOXIPROXY_API_PORT = 8474
# Host ports of the engines the embedded stack does not run (outside its block).
SEED_PORTS = {"mongo": 15470, "elasticsearch": 15471, "kafka": 15472, "connect": 15473,
              "prometheus": 15474, "locust": 15475}
# The seed's stores that compose runs beside the services' own (which engine
# each service uses is a later issue): compose service -> (Engine.name, kind).
SEED_ENGINES = {"mongo": ("catalog-seed-engine", "mongodb"),
                "elasticsearch": ("search-seed-engine", "elasticsearch"),
                "kafka": ("bus-seed-engine", "kafka"),
                "connect": ("cdc-seed-engine", "debezium-connect")}

# A part's name in stack.json (as the embedded stack names it) -> its compose service.
PART_SERVICE = {"proxy": "toxiproxy"}
ACTIONS = ("kill", "pause", "resume", "stop", "start", "restart", "running")
_VERB = {"kill": ["kill", "-s", "KILL"], "pause": ["pause"], "resume": ["unpause"],
         "stop": ["stop"], "start": ["start"], "restart": ["restart"],
         "running": ["ps", "--status", "running", "-q"], "ps": ["ps", "-q"]}


# -- files and commands (pure) ------------------------------------------------------------

def compose_files(topology: str) -> list[str]:
    """The -f files of a topology, relative to the project dir (`single` is the base file)."""
    layout(topology)   # a UsageError naming a bad topology
    files = [COMPOSE_FILE]
    if topology != "single":
        files.append(f"{DEPLOY_DIR}/topology-{topology}.yml")
    return files


def compose_argv(project: str, files: Sequence[str | Path], action: str,
                 service: str | None = None, *, purge: bool = False) -> list[str]:
    """The docker compose command of `action`: up, down, or a part action
    (kill, pause, resume, stop, start, restart, running, ps) on one service."""
    head = ["docker", "compose", "-p", project]
    for f in files:
        head += ["-f", str(f)]
    if action == "up":
        # --build: the services' image is this checkout, never a stale one.
        return head + ["up", "-d", "--wait", "--build"]
    if action == "down":
        return head + ["down", "--remove-orphans"] + (["-v"] if purge else [])
    if action not in _VERB:
        raise UsageError(f"compose action {action!r} is not one of up, down, {', '.join(_VERB)}")
    if service:
        return head + _VERB[action] + [service]
    if action == "ps":
        return head + _VERB[action]            # every container of the project
    raise UsageError(f"compose action {action!r} needs a service")


def link_upstream(link: LinkSpec, lay: Layout) -> str:
    """What Toxiproxy points `link` at inside the compose network."""
    if link.target == "redis":
        return f"redis:{REDIS_PORT}"
    if link.target in SERVICE_BY_NAME:
        return f"{link.target}:{lay.service_ports[link.target]}"
    return f"{link.target}:{PG_PORT}"          # a PostgreSQL instance (its compose service)


def toxiproxy_config(topology: str) -> list[dict]:
    """Toxiproxy's -config file: one proxy per link, named and numbered as
    in the embedded stack, listening on every interface of its container."""
    lay = layout(topology, DEFAULT_BASE_PORT)
    return [{"name": l_.name, "listen": f"0.0.0.0:{l_.listen_port}",
             "upstream": link_upstream(l_, lay), "enabled": True} for l_ in lay.links]


def redis_env(user: str) -> str:
    return f"MSDB_REDIS_{user.upper()}_PASSWORD"


def role_env(role: str) -> str:
    return f"MSDB_PG_{role.upper()}_PASSWORD"


def redis_acl_template() -> str:
    """Redis's ACL file with @VAR@ for each password (deploy/compose/redis/start.sh
    fills them in from the environment): the embedded stack's users and keys."""
    lines = [f"user default on >@{redis_env('default')}@ ~* &* +@all"]
    for user, patterns in REDIS_KEYS.items():
        keys = " ".join(f"~{p}" for p in patterns)
        lines.append(f"user {user} on >@{redis_env(user)}@ {keys} &* +@all -@admin -@dangerous +info")
    return "\n".join(lines) + "\n"


# -- secrets ------------------------------------------------------------------------------

def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip().strip("'\"")
    return out


@dataclass(frozen=True)
class Secrets:
    """The passwords the compose file hands its containers, resolved the way
    docker compose resolves `${VAR:-default}`: the environment, then the
    project's .env, then the development defaults."""
    values: Mapping[str, str]

    def __repr__(self) -> str:          # never print a password
        return f"Secrets({len(self.values)} values)"

    @classmethod
    def load(cls, project_dir: Path = PROJECT_DIR,
             environ: Mapping[str, str] | None = None) -> "Secrets":
        environ = os.environ if environ is None else environ
        vals = _read_env_file(Path(project_dir) / ENV_EXAMPLE)
        vals.update(_read_env_file(Path(project_dir) / ".env"))
        vals.update({k: v for k, v in environ.items() if k in vals and v})
        return cls(vals)

    @classmethod
    def blank(cls) -> "Secrets":
        """No passwords (a container that needs only the service URLs: Locust)."""
        return cls({})

    def get(self, var: str) -> str:
        return self.values.get(var, "")

    @property
    def superuser(self) -> str:
        return self.get("MSDB_PG_PASSWORD")

    def role(self, role: str) -> str:
        return self.get(role_env(role))

    def redis(self, user: str = "default") -> str:
        return self.get(redis_env(user))


def _dsn(user: str, password: str, host: str, port: int, db: str) -> str:
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{auth}@{host}:{port}/{db}?sslmode=require"


# -- the StackInfo ------------------------------------------------------------------------

def image_versions(project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """compose service -> the tag of its image, from docker-compose.yml."""
    try:
        doc = yaml.safe_load((Path(project_dir) / COMPOSE_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for name, svc in (doc.get("services") or {}).items():
        image = (svc or {}).get("image") or ""
        if ":" in image.rsplit("/", 1)[-1]:
            out[name] = image.rsplit(":", 1)[1]
    return out


def stack_info(topology: str, state_dir: Path, secrets: Secrets, *, view: str = "host",
               versions: Mapping[str, str] | None = None, started_at: str | None = None,
               up_seconds: float | None = None) -> StackInfo:
    """The compose stack's endpoints.  view "host": the published 127.0.0.1
    ports (stack.json for msdb); view "network": compose hostnames (for a
    container inside the stack, e.g. Locust)."""
    if view not in ("host", "network"):
        raise UsageError(f"view {view!r} is not one of host, network")
    lay = layout(topology, DEFAULT_BASE_PORT)
    host = view == "host"
    versions = dict(versions or {})

    published = {i.name: i.port for i in lay.instances}

    def pg_addr(inst_name: str) -> tuple[str, int]:
        return ("127.0.0.1", published[inst_name]) if host else (inst_name, PG_PORT)

    def svc_url(name: str) -> str:
        port = lay.service_ports[name]
        return f"http://127.0.0.1:{port}" if host else f"http://{name}:{port}"

    def listen(l_: LinkSpec) -> str:
        return f"{'127.0.0.1' if host else 'toxiproxy'}:{l_.listen_port}"

    instances = tuple(Instance(
        name=spec.name, role="replica" if spec.replica_of else "primary",
        replica_of=spec.replica_of, services=tuple(spec.databases),
        admin_dsn=_dsn("postgres", secrets.superuser, *pg_addr(spec.name), "postgres"),
        datadir=None, wal_archive=None) for spec in lay.instances)
    databases = {}
    for svc in SERVICES:
        if not svc.database:
            continue
        inst = lay.instance_of(svc.name)
        link = lay.link(f"{svc.name}-db")
        pw = secrets.role(svc.role)
        h, p = listen(link).rsplit(":", 1)
        databases[svc.name] = Database(
            instance=inst.name, database=svc.database, role=svc.role,
            dsn=_dsn(svc.role, pw, *pg_addr(inst.name), svc.database),
            link=link.name, dsn_via_proxy=_dsn(svc.role, pw, h, int(p), svc.database))
    orders = SERVICE_BY_NAME["orders"]
    redis_host = ("127.0.0.1", lay.redis_port) if host else ("redis", REDIS_PORT)
    rpw = secrets.redis()
    redis_url = (f"redis://default{':' + quote(rpw, safe='') if rpw else ''}@"
                 f"{redis_host[0]}:{redis_host[1]}/0")
    api = f"http://127.0.0.1:{lay.proxy_api_port}" if host else f"http://toxiproxy:{TOXIPROXY_API_PORT}"
    proxies = tuple(ProxyLink(name=l_.name, kind=l_.kind, source=l_.source, target=l_.target,
                              listen=listen(l_), upstream=link_upstream(l_, lay))
                    for l_ in lay.links)

    def endpoint_of(name: str) -> str:
        if name in SEED_PORTS:
            return f"127.0.0.1:{SEED_PORTS[name]}" if host else name
        return ""
    parts = [Part(name="proxy", kind="proxy", endpoint=api),
             Part(name="redis", kind="redis", endpoint=f"{redis_host[0]}:{redis_host[1]}")]
    parts += [Part(name=i.name, kind="postgres-replica" if i.replica_of else "postgres",
                   endpoint="%s:%d" % pg_addr(i.name)) for i in lay.instances]
    parts += [Part(name=s.name, kind="service", endpoint=svc_url(s.name)) for s in SERVICES]
    parts += [Part(name=n, kind="process", endpoint=endpoint_of(n)) for n in SEED_ENGINES]

    pg_v = versions.get("postgresql") or versions.get("pg-main")
    rd_v = versions.get("redis")
    engines = [
        Engine(name="relational", kind="postgresql", version=pg_v, stand_in=False),
        Engine(name="cache", kind="redis", version=rd_v, stand_in=False),
        # What the services use today on every backend; the seed's engines
        # below run beside them until the services are moved onto them.
        Engine(name="catalog", kind="postgresql-jsonb", version=pg_v, stand_in=True,
               stands_in_for="mongodb"),
        Engine(name="search", kind="postgresql-fts", version=pg_v, stand_in=True,
               stands_in_for="elasticsearch"),
        Engine(name="bus", kind="redis-streams", version=rd_v, stand_in=True, stands_in_for="kafka"),
        Engine(name="analytics", kind="duckdb", version=None, stand_in=True,
               stands_in_for="redshift"),
        Engine(name="fault-proxy", kind="toxiproxy", version=versions.get("toxiproxy"),
               stand_in=False),
    ]
    engines += [Engine(name=ename, kind=kind, version=versions.get(svc), stand_in=False)
                for svc, (ename, kind) in SEED_ENGINES.items()]
    return StackInfo(
        schema=SCHEMA, backend="compose", state="running", state_dir=str(state_dir),
        topology=topology, base_port=DEFAULT_BASE_PORT, tls=True,
        services={s.name: Service(url=svc_url(s.name)) for s in SERVICES},
        instances=instances, databases=databases,
        replica=Replica(instance=lay.replica.name, primary=lay.replica.replica_of,
                        dsn=_dsn(orders.role, secrets.role(orders.role),
                                 *pg_addr(lay.replica.name), orders.database),
                        link="orders-replication"),
        redis=RedisInfo(url=redis_url),
        proxy=ProxyApi(api=api, proxies=proxies),
        parts=tuple(parts), engines=tuple(engines), started_at=started_at, up_seconds=up_seconds,
        archive_timeout_s=ARCHIVE_TIMEOUT_S,
        run_as=None, analytics_db=None)


# -- Docker -------------------------------------------------------------------------------

DOCKER_PROBE_TIMEOUT_S = 10.0


def require_docker(timeout_s: float = DOCKER_PROBE_TIMEOUT_S) -> str:
    """The Docker engine's version, or InfraError saying why there is none."""
    if shutil.which("docker") is None:
        raise InfraError("no Docker engine: the `docker` command is not installed "
                         "(the compose backend needs Docker with Compose v2)")
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise InfraError(f"no Docker engine is reachable: `docker info` did not answer "
                         f"within {timeout_s:.0f} s") from None
    version = r.stdout.strip()
    if r.returncode != 0 or not version or version == "<no value>":
        why = (r.stderr.strip().splitlines() or ["no server version"])[-1]
        raise InfraError(f"no Docker engine is reachable (`docker info`: {why}); start Docker, "
                         f"or use the embedded backend")
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                       timeout=timeout_s)
    if r.returncode != 0:
        raise InfraError("Docker Compose v2 is not installed (`docker compose version` failed); "
                         "the compose backend needs it for `up --wait`")
    return version


class ComposeActions:
    """`PartActions` of a compose stack: each action is one docker compose command."""

    COMMAND_TIMEOUT_S = 120.0
    HEALTHY_TIMEOUT_S = 180.0
    POLL_S = 1.0

    def __init__(self, project_dir: Path, files: Sequence[str], parts: Sequence[str],
                 project: str = PROJECT):
        self.project_dir = Path(project_dir)
        self.files = list(files)
        self.project = project
        self._parts = list(parts)

    def __repr__(self) -> str:
        return f"ComposeActions({self.project!r}, {self.files!r})"

    def service(self, part: str) -> str:
        if part not in self._parts:
            raise KeyError(f"no part named {part!r} (parts: {', '.join(self._parts)})")
        return PART_SERVICE.get(part, part)

    def argv(self, action: str, part: str) -> list[str]:
        return compose_argv(self.project, self.files, action, self.service(part))

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            r = subprocess.run(argv, cwd=self.project_dir, capture_output=True, text=True,
                               timeout=self.COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise InfraError(f"`{' '.join(argv)}` took longer than "
                             f"{self.COMMAND_TIMEOUT_S:.0f} s") from None
        if r.returncode != 0:
            raise InfraError(f"`{' '.join(argv)}` failed (exit {r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[-1500:]}")
        return r

    def names(self) -> list[str]:
        return list(self._parts)

    def running(self, part: str) -> bool:
        return bool(self._run(self.argv("running", part)).stdout.strip())

    def kill(self, part: str) -> None:
        self._run(self.argv("kill", part))

    def pause(self, part: str) -> None:
        self._run(self.argv("pause", part))

    def resume(self, part: str) -> None:
        # unpause of a container that is not paused is an error; heal resumes every part.
        if self._state(part) == "paused":
            self._run(self.argv("resume", part))

    def stop(self, part: str) -> None:
        self._run(self.argv("stop", part))

    def start(self, part: str) -> None:
        self._run(self.argv("start", part))
        self.wait_healthy(part)

    def restart(self, part: str) -> None:
        self._run(self.argv("restart", part))
        self.wait_healthy(part)

    def _container(self, part: str) -> str | None:
        ids = self._run(self.argv("ps", part)).stdout.split()
        return ids[0] if ids else None

    def _state(self, part: str) -> str | None:
        """running, paused, exited, ... (docker inspect), None without a container."""
        cid = self._container(part)
        if cid is None:
            return None
        r = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", cid],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or None

    def wait_healthy(self, part: str) -> None:
        """Until the container's healthcheck says healthy (every long-running
        container of docker-compose.yml has one)."""
        deadline = time.monotonic() + self.HEALTHY_TIMEOUT_S
        last = "no container"
        while time.monotonic() < deadline:
            cid = self._container(part)
            if cid:
                r = subprocess.run(["docker", "inspect", "-f",
                                    "{{if .State.Health}}{{.State.Health.Status}}{{else}}"
                                    "{{.State.Status}}{{end}}", cid],
                                   capture_output=True, text=True, timeout=30)
                last = r.stdout.strip() or r.stderr.strip()
                if last in ("healthy", "running"):
                    return
            time.sleep(self.POLL_S)
        raise InfraError(f"{part} was not healthy within {self.HEALTHY_TIMEOUT_S:.0f} s "
                         f"after a start ({last}); see `docker compose -p {self.project} logs "
                         f"{self.service(part)}`")


class ComposeBackend:
    """`StackBackend` of the docker-compose stack (project `msdb`)."""

    kind = "compose"

    def __init__(self, state_dir: Path, topology: str = "single", project_dir: Path | None = None):
        if topology not in TOPOLOGIES:
            raise UsageError(f"--topology {topology!r} is not one of {', '.join(TOPOLOGIES)}")
        self.state_dir = Path(state_dir)
        self.topology = topology
        self.project_dir = Path(project_dir) if project_dir is not None else PROJECT_DIR
        self.files = compose_files(topology)

    def __repr__(self) -> str:
        return f"ComposeBackend({str(self.state_dir)!r}, topology={self.topology!r})"

    def _argv(self, action: str, **kw) -> list[str]:
        return compose_argv(PROJECT, self.files, action, **kw)

    # -- lifecycle ----------------------------------------------------------------------

    def up(self, *, timeout_s: float = 300.0) -> StackInfo:
        """`docker compose up -d --wait`, then stack.json.  InfraError (exit 3)
        when there is no Docker engine, or the stack is not healthy in time."""
        if not (self.project_dir / COMPOSE_FILE).is_file():
            raise InfraError(f"no {COMPOSE_FILE} in {self.project_dir}")
        require_docker()
        t0 = time.monotonic()
        argv = self._argv("up")
        try:
            r = subprocess.run(argv, cwd=self.project_dir, capture_output=True, text=True,
                               timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise InfraError(f"the compose stack was not healthy within {timeout_s:.0f} s; "
                             f"see `docker compose -p {PROJECT} ps` and `... logs`") from None
        if r.returncode != 0:
            raise InfraError(f"`{' '.join(argv)}` failed (exit {r.returncode}):\n"
                             f"{(r.stderr or r.stdout).strip()[-3000:]}")
        return self.adopt(up_seconds=round(time.monotonic() - t0, 2))

    def adopt(self, *, up_seconds: float | None = None) -> StackInfo:
        """stack.json for the compose stack running now (brought up by `up()`,
        by hand, or by testcontainers): its endpoints as the host sees them."""
        secrets = Secrets.load(self.project_dir)
        versions = {**image_versions(self.project_dir), **_server_versions(self.topology, secrets)}
        info = stack_info(self.topology, self.state_dir.resolve(), secrets, view="host",
                          versions=versions, started_at=utc.utc_now(), up_seconds=up_seconds)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        info.save(self.state_dir)
        return info

    def down(self, *, purge: bool = False, log=lambda *a: None) -> list[str]:
        """`docker compose down` (`-v` with purge: every volume too) and stack.json
        removed; returns the containers still there.  Without a Docker engine
        there is nothing it can stop: it says so and returns []."""
        left: list[str] = []
        try:
            require_docker()
        except InfraError as e:
            log(f"{e}; nothing stopped")
        else:
            r = subprocess.run(self._argv("down", purge=purge), cwd=self.project_dir,
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                log(f"docker compose down failed: {(r.stderr or r.stdout).strip()[-1000:]}")
            ps = subprocess.run(self._argv("ps"),
                                cwd=self.project_dir, capture_output=True, text=True, timeout=60)
            left = ps.stdout.split()
        if not left:
            (self.state_dir / "stack.json").unlink(missing_ok=True)
            if purge and self.state_dir.exists():
                shutil.rmtree(self.state_dir)
        return left

    # -- what a run needs ---------------------------------------------------------------

    def info(self) -> StackInfo:
        return StackInfo.load(self.state_dir)

    def status(self, probe: StatusProbe | None = None) -> list[PartStatus]:
        return status(self.state_dir, probe)

    def actions(self) -> ComposeActions:
        try:
            parts = [p.name for p in self.info().parts]
        except InfraError:
            parts = [p.name for p in stack_info(self.topology, self.state_dir, Secrets.blank()).parts]
        return ComposeActions(self.project_dir, self.files, parts)

    def repoint(self, link: str, upstream: str) -> None:
        repoint_proxy(self.info().proxy.api, link, upstream)

    def set_overrides(self, overrides: dict[str, dict[str, str]]) -> list[str]:
        if not any(overrides.values()):
            return []
        asked = "; ".join(f"{svc}: {', '.join(sorted(env))}" for svc, env in sorted(overrides.items())
                          if env)
        raise UsageError(f"a compose stack's service settings are set in docker-compose.yml, so a "
                         f"scenario that changes them cannot run on it yet (asked: {asked})")


def _server_versions(topology: str, secrets: Secrets) -> dict[str, str]:
    """What the PostgreSQL and Redis servers say they are (best effort)."""
    out: dict[str, str] = {}
    lay = layout(topology, DEFAULT_BASE_PORT)
    try:
        import psycopg
        with psycopg.connect(_dsn("postgres", secrets.superuser, "127.0.0.1",
                                  lay.primaries[0].port, "postgres"), connect_timeout=5) as c:
            out["postgresql"] = c.execute("SHOW server_version").fetchone()[0].split()[0]
    except Exception:  # a version is a label: the tag from the compose file stands
        pass
    try:
        import redis
        with redis.Redis(host="127.0.0.1", port=lay.redis_port, username="default",
                         password=secrets.redis(), socket_timeout=5) as r:
            out["redis"] = r.info("server")["redis_version"]
    except Exception:
        pass
    return out


def _write_network_stack(state_dir: str, topology: str) -> Path:
    """stack.json as a container inside the stack sees it (no passwords):
    what the compose Locust points locustfile.py at."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    info = stack_info(topology, d, Secrets.blank(), view="network",
                      versions=image_versions(PROJECT_DIR))
    return info.save(d)


if __name__ == "__main__":
    # The compose Locust's entrypoint: python -m harness.stack.compose network-stack DIR TOPOLOGY
    import sys
    if len(sys.argv) != 4 or sys.argv[1] != "network-stack":
        sys.exit("usage: python -m harness.stack.compose network-stack DIR TOPOLOGY")
    print(_write_network_stack(sys.argv[2], sys.argv[3]))
