"""The docker-compose stack without Docker: the compose file and its generated
files agree with harness.stack.topology (the embedded stack's layout), the
compose file validates (docker-compose 1.29 `config`, promtool), and
ComposeBackend maps faults to docker compose commands and refuses to start
without a Docker engine.  Nothing here starts a container (tests/docker does)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import InfraError, UsageError
from harness.stack import compose
from harness.stack.compose import (ComposeActions, ComposeBackend, Secrets, compose_argv,
                                   compose_files, stack_info, toxiproxy_config)
from harness.stack.info import StackInfo
from harness.stack.redis_srv import REDIS_KEYS
from harness.stack.topology import PEER_LINKS, REDIS_USERS, SERVICES, TOPOLOGIES, layout

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "compose"
ONE_SHOT = {"migrate", "connect-init"}

sys.path.insert(0, str(DEPLOY))
import generate  # noqa: E402  deploy/compose/generate.py

sys.path.remove(str(DEPLOY))


def load(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def merged(topology: str) -> dict:
    """The services of a topology, override merged the way compose merges the
    keys our override files use (mappings key by key, command/profiles replaced)."""
    base = load("docker-compose.yml")
    for rel in compose_files(topology)[1:]:
        for name, over in load(rel)["services"].items():
            svc = base["services"].setdefault(name, {})
            for k, v in over.items():
                if isinstance(v, dict) and isinstance(svc.get(k), dict):
                    svc[k] = {**svc[k], **v}
                else:
                    svc[k] = v
    return {n: s for n, s in base["services"].items()
            if not set(s.get("profiles", ())) - {f"topology-{topology}"} or not s.get("profiles")}


@pytest.fixture(scope="module")
def base() -> dict:
    return load("docker-compose.yml")


# -- the compose file ---------------------------------------------------------------------

def test_compose_file_names_the_seeds_engines(base):
    svcs = base["services"]
    image = {n: s.get("image", "") for n, s in svcs.items()}
    assert image["pg-main"] == "postgres:14" and image["pg-replica"] == "postgres:14"
    assert image["mongo"] == "mongo:5"
    assert re.fullmatch(r"elasticsearch:7\.17\.\d+", image["elasticsearch"])
    assert image["redis"] == "redis:6"
    assert image["kafka"].startswith("apache/kafka:")
    assert "KRaft" not in image["kafka"] and "ZOOKEEPER" not in json.dumps(svcs["kafka"]).upper()
    assert svcs["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert image["connect"].startswith("quay.io/debezium/connect:")
    assert image["toxiproxy"].startswith("ghcr.io/shopify/toxiproxy:")
    assert image["prometheus"].startswith("prom/prometheus:")
    for name in [s.name for s in SERVICES] + ["migrate", "locust-master", "locust-worker"]:
        assert svcs[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert image[name] == "msdb/msdb:dev", name
    assert "--master" in svcs["locust-master"]["command"]
    assert "--worker" in svcs["locust-worker"]["command"]
    assert svcs["locust-worker"]["deploy"]["replicas"] >= 2
    assert "/app/locustfile.py" in svcs["locust-master"]["command"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_long_running_container_has_a_healthcheck(topology):
    for name, svc in merged(topology).items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
            continue
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert "restart" not in svc, f"{name}: a restart policy would undo a kill fault"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_one_shots_are_awaited_so_up_wait_exits_0(topology):
    """`up --wait` fails on an exited container nobody waits for (docker/compose#10596)."""
    svcs = merged(topology)
    for one in ONE_SHOT:
        waiters = [n for n, s in svcs.items() if isinstance(s.get("depends_on"), dict)
                   and s["depends_on"].get(one, {}).get("condition") == "service_completed_successfully"
                   and n not in ONE_SHOT]
        assert waiters, f"no long-running service waits for {one}"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_ports_are_published_on_loopback_in_the_embedded_block(topology):
    lay = layout(topology)
    svcs = merged(topology)
    published = {}
    for name, svc in svcs.items():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name}: {p} is not loopback-only"
            host = p.split(":")[1]
            published[name] = published.get(name, []) + [host]
    for inst in lay.instances:
        assert published[inst.name] == [str(inst.port)], inst.name
    assert published["redis"] == [str(lay.redis_port)]
    for s in SERVICES:
        assert published[s.name] == [str(lay.service_ports[s.name])], s.name
    first, last = lay.links[0].listen_port, lay.links[-1].listen_port
    assert published["toxiproxy"] == [str(lay.proxy_api_port), f"{first}-{last}"]
    assert svcs["toxiproxy"]["ports"][0].endswith(":8474")
    for name, port in compose.SEED_PORTS.items():
        service = "locust-master" if name == "locust" else name
        assert published[service] == [str(port)], name
        assert port >= lay.base_port + 70, f"{name} is inside the embedded port block"


def test_pg_main_is_generates_pg_service(base):
    assert base["services"]["pg-main"] == generate.pg_service(layout("single").primaries[0])


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_instances_of_each_topology(topology):
    lay = layout(topology)
    svcs = merged(topology)
    pg = {n for n, s in svcs.items() if s.get("image") == "postgres:14"}
    assert pg == {i.name for i in lay.instances}
    for inst in lay.primaries:
        env = svcs[inst.name]["environment"]
        assert env["MSDB_DATABASES"].split() == list(inst.databases)
    assert svcs["pg-replica"]["environment"]["MSDB_PRIMARY_HOST"] == lay.replica.replica_of
    assert svcs["pg-replica"]["environment"]["MSDB_REPLICATION_PORT"] == \
        str(lay.link("orders-replication").listen_port)
    assert svcs["migrate"]["environment"]["MSDB_MIGRATE_HOSTS"] == generate.migrate_hosts(topology)
    assert svcs["toxiproxy"]["command"] == ["-host=0.0.0.0", f"-config=/config/{topology}.json"]
    for locust in ("locust-master", "locust-worker"):
        assert svcs[locust]["environment"]["MSDB_TOPOLOGY"] == topology


def test_postgres_security_and_wal_settings(base):
    cmd = " ".join(base["services"]["pg-main"]["command"])
    for setting in ("password_encryption=scram-sha-256", "wal_level=logical", "archive_mode=on",
                    "archive_timeout=900s", "shared_preload_libraries=pg_stat_statements"):
        assert setting in cmd
    init = (DEPLOY / "postgres" / "initdb" / "10-msdb.sh").read_text()
    for line in ("ssl = on", "ssl_min_protocol_version = 'TLSv1.3'", "openssl req",
                 "hostssl  all          all         all        scram-sha-256",
                 "REVOKE CONNECT, TEMPORARY ON DATABASE", "pg_create_logical_replication_slot",
                 "REPLICATION PASSWORD"):
        assert line in init, line
    entry = (DEPLOY / "postgres" / "entrypoint.sh").read_text()
    assert "pg_basebackup" in entry and " -R " in entry and "application_name=pg-replica" in entry


def test_services_get_their_own_dsn_and_every_link_through_toxiproxy(base):
    """As the embedded stack's service_env: own database only, every link a proxy."""
    lay = layout("single")
    svcs = base["services"]
    for s in SERVICES:
        env = svcs[s.name]["environment"]
        assert svcs[s.name]["command"][-1] == str(lay.service_ports[s.name])
        assert "--host" in svcs[s.name]["command"]
        db_keys = {k for k in env if k.startswith("DB_")}
        if s.database:
            assert env["DB_HOST"] == "toxiproxy"
            assert env["DB_PORT"] == str(lay.link(f"{s.name}-db").listen_port)
            assert (env["DB_NAME"], env["DB_USER"]) == (s.database, s.role)
            assert f"MSDB_PG_{s.role.upper()}_PASSWORD" in env["DB_PASSWORD"]
            # seed §3.2
            assert (env["DB_POOL_MAX"], env["DB_POOL_MIN"], env["DB_POOL_ACQUIRE"],
                    env["DB_POOL_IDLE"], env["DB_SSL"]) == ("20", "5", "30000", "10000", "require")
        else:
            assert not db_keys, s.name
        if s.name in REDIS_USERS:
            port = lay.link(f"{s.name}-redis").listen_port
            assert re.fullmatch(rf"redis://{s.name}:\$\{{MSDB_REDIS_{s.name.upper()}_PASSWORD:-[\w-]+\}}"
                                rf"@toxiproxy:{port}/0", env["REDIS_URL"]), env["REDIS_URL"]
        else:
            assert "REDIS_URL" not in env
        peers = {k: v for k, v in env.items() if k.endswith("_URL") and k != "REDIS_URL"}
        want = {f"{b.upper()}_URL": f"http://toxiproxy:{lay.link(f'{a}-to-{b}').listen_port}"
                for a, b in PEER_LINKS if a == s.name}
        assert peers == want, s.name
        others = [o.database for o in SERVICES if o.database and o.name != s.name]
        if s.name != "cdc":      # the relay decodes its sources with its own role
            assert not any(db in json.dumps(env) for db in others), f"{s.name} sees another DSN"
    orders = svcs["orders"]["environment"]
    assert orders["DB_REPLICA_PORT"] == str(lay.link("orders-replica").listen_port)
    cdc = json.loads(re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", svcs["cdc"]["environment"]["CDC_SOURCES"]))
    for src, spec in cdc.items():
        assert f"port={lay.link(f'cdc-{src}-db').listen_port} " in spec["dsn"]
        assert spec["slot"] == f"cdc_{src}" and "sslmode=require" in spec["dsn"]
        assert " user=cdc_relay " in spec["dsn"]


def test_passwords_have_dev_defaults_only_in_env_example():
    example = compose._read_env_file(DEPLOY / ".env.example")
    assert all(v.startswith("dev-only-") for v in example.values())
    refs = {}
    for rel in ["docker-compose.yml", *(f"deploy/compose/topology-{t}.yml" for t in TOPOLOGIES[1:])]:
        text = "\n".join(ln for ln in (ROOT / rel).read_text().splitlines()
                         if not ln.lstrip().startswith("#"))
        for var, default in re.findall(r"\$\{(\w+):-([^}]*)\}", text):
            assert refs.setdefault(var, default) == default, var
    assert refs == example
    # a default is only ever the fallback of a ${VAR:-...}; no other file carries one
    for path in [ROOT / "docker-compose.yml", *DEPLOY.rglob("*")]:
        if not path.is_file() or path.name in (".env.example", "generate.py"):
            continue
        bare = re.sub(r"\$\{\w+:-dev-only-[\w-]+\}", "", path.read_text())
        assert "dev-only-" not in bare, f"{path}: a password outside ${{VAR:-default}}"


def test_debezium_connectors_read_passwords_from_the_environment():
    lay = layout("single")
    files = {p.stem: json.loads(p.read_text()) for p in (DEPLOY / "connect" / "connectors").glob("*.json")}
    assert set(files) == {"users-postgres", "orders-postgres", "catalog-mongodb"}
    assert files["catalog-mongodb"]["connector.class"].endswith("MongoDbConnector")
    for src in ("users", "orders"):
        c = files[f"{src}-postgres"]
        assert c["connector.class"].endswith("PostgresConnector")
        assert c["database.port"] == str(lay.link(f"cdc-{src}-db").listen_port)
        assert c["database.password"] == "${env:MSDB_PG_CDC_RELAY_PASSWORD}"
        assert c["publication.name"] == "msdb_cdc" and c["database.sslmode"] == "require"
    assert "${env:MSDB_MONGO_DEBEZIUM_PASSWORD}" in files["catalog-mongodb"]["mongodb.connection.string"]


# -- generated files ------------------------------------------------------------------------

def test_generated_files_are_fresh():
    stale = [str(rel) for rel, text in generate.rendered().items()
             if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != text]
    assert not stale, f"run `.venv/bin/python deploy/compose/generate.py`: stale {stale}"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_toxiproxy_config_is_the_embedded_stacks_links(topology):
    got = json.loads((DEPLOY / "toxiproxy" / f"{topology}.json").read_text())
    lay = layout(topology)
    assert [p["name"] for p in got] == [l_.name for l_ in lay.links]
    assert [p["listen"] for p in got] == [f"0.0.0.0:{l_.listen_port}" for l_ in lay.links]
    services = set(merged(topology))
    for p in got:
        host, port = p["upstream"].rsplit(":", 1)
        assert host in services, p
        assert p["enabled"] is True
    assert got == toxiproxy_config(topology)


def test_redis_acl_users_are_the_embedded_ones():
    text = (DEPLOY / "redis" / "users.acl.template").read_text()
    users = [line.split()[1] for line in text.splitlines()]
    assert users == ["default", *REDIS_KEYS]
    assert not re.search(r">(?!@MSDB_REDIS_\w+_PASSWORD@)", text), "a literal password"


def test_prometheus_scrapes_every_service():
    cfg = load("deploy/compose/prometheus.yml")
    targets = cfg["scrape_configs"][0]["static_configs"][0]["targets"]
    lay = layout("single")
    assert targets == [f"{s.name}:{lay.service_ports[s.name]}" for s in SERVICES]
    assert cfg["scrape_configs"][0]["metrics_path"] == "/metrics"


# -- validation by the real tools (offline) -------------------------------------------------

@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_docker_compose_config_accepts_each_topology(topology):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian's 1.29) is not installed: apt-get install docker-compose")
    argv = [exe, "-p", "msdb"] + [a for f in compose_files(topology) for a in ("-f", f)] + ["config", "-q"]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_promtool_accepts_the_prometheus_config():
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed: apt-get install prometheus")
    r = subprocess.run([exe, "check", "config", str(DEPLOY / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shell_scripts_parse():
    for script in [*DEPLOY.rglob("*.sh")]:
        shell = "sh" if script.read_text().startswith("#!/bin/sh") else "bash"
        r = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


# -- the backend ----------------------------------------------------------------------------

FILES = ["docker-compose.yml", "deploy/compose/topology-grouped.yml"]
HEAD = ["docker", "compose", "-p", "msdb", "-f", FILES[0], "-f", FILES[1]]


@pytest.mark.parametrize("action,verb", [
    ("kill", ["kill", "-s", "KILL"]), ("pause", ["pause"]), ("resume", ["unpause"]),
    ("stop", ["stop"]), ("start", ["start"]), ("restart", ["restart"]),
    ("running", ["ps", "--status", "running", "-q"]),
])
def test_fault_to_compose_command(action, verb):
    assert compose_argv("msdb", FILES, action, "pg-core") == HEAD + verb + ["pg-core"]


def test_up_and_down_commands():
    assert compose_argv("msdb", FILES, "up") == HEAD + ["up", "-d", "--wait", "--build"]
    assert compose_argv("msdb", FILES, "down") == HEAD + ["down", "--remove-orphans"]
    assert compose_argv("msdb", FILES, "down", purge=True) == HEAD + ["down", "--remove-orphans", "-v"]
    with pytest.raises(UsageError, match="'explode'"):
        compose_argv("msdb", FILES, "explode", "x")
    with pytest.raises(UsageError, match="needs a service"):
        compose_argv("msdb", FILES, "kill")


def test_compose_files_per_topology():
    assert compose_files("single") == ["docker-compose.yml"]
    assert compose_files("dedicated") == ["docker-compose.yml", "deploy/compose/topology-dedicated.yml"]
    with pytest.raises(UsageError, match="'huge'"):
        compose_files("huge")


def test_actions_name_parts_as_the_embedded_stack(tmp_path):
    info = stack_info("grouped", tmp_path, Secrets.blank())
    acts = ComposeActions(ROOT, compose_files("grouped"), [p.name for p in info.parts])
    assert acts.names()[:2] == ["proxy", "redis"]
    assert {"pg-core", "pg-transactions", "pg-reference", "pg-replica", "orders"} <= set(acts.names())
    assert acts.argv("kill", "proxy")[-4:] == ["kill", "-s", "KILL", "toxiproxy"]
    assert acts.argv("stop", "pg-transactions")[-2:] == ["stop", "pg-transactions"]
    with pytest.raises(KeyError, match="pg-main"):
        acts.argv("kill", "pg-main")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_stack_info_of_a_compose_stack(tmp_path, topology):
    secrets = Secrets.load(ROOT, environ={})
    info = stack_info(topology, tmp_path, secrets, versions=compose.image_versions(ROOT))
    again = StackInfo.from_json(json.loads(json.dumps(info.to_json(), default=str)))
    assert again == info
    lay = layout(topology)
    assert (info.backend, info.tls, info.base_port) == ("compose", True, 15400)
    assert info.urls == {s.name: f"http://127.0.0.1:{lay.service_ports[s.name]}" for s in SERVICES}
    assert info.proxy.api == "http://127.0.0.1:15430"
    assert [p.name for p in info.proxy.proxies] == [l_.name for l_ in lay.links]
    orders = info.databases["orders"]
    inst = lay.instance_of("orders")
    assert orders.dsn == (f"postgresql://order_service:dev-only-order-service@127.0.0.1:{inst.port}"
                          f"/order_service_db?sslmode=require")
    assert orders.dsn_via_proxy.split("@")[1].startswith(f"127.0.0.1:{lay.link('orders-db').listen_port}/")
    assert info.proxy.proxies[0].upstream == f"{lay.instance_of('users').name}:5432"
    assert info.replica.primary == inst.name and info.replica.dsn.split("@")[1].startswith("127.0.0.1:15409/")
    assert all(p.proc is None for p in info.parts)
    real = {e.kind: e for e in info.engines if not e.stand_in}
    assert real["postgresql"].version == "14" and real["mongodb"].version == "5"
    assert real["elasticsearch"].version.startswith("7.17.")
    stand_ins = {e.name: e.stands_in_for for e in info.engines if e.stand_in}
    assert stand_ins["catalog"] == "mongodb"    # what the services still use, said plainly


def test_network_view_for_the_compose_locust(tmp_path):
    info = stack_info("single", tmp_path, Secrets.blank(), view="network")
    assert info.urls["orders"] == "http://orders:15422"
    assert "dev-only" not in json.dumps(info.to_json(), default=str)
    assert info.proxy.proxies[0].listen == "toxiproxy:15431"


def test_secrets_come_from_environment_then_dotenv_then_defaults(tmp_path):
    (tmp_path / "deploy" / "compose").mkdir(parents=True)
    shutil.copy(DEPLOY / ".env.example", tmp_path / "deploy" / "compose" / ".env.example")
    (tmp_path / ".env").write_text("MSDB_PG_PASSWORD=from-dotenv\nMSDB_REDIS_DEFAULT_PASSWORD=x\n")
    s = Secrets.load(tmp_path, environ={"MSDB_REDIS_DEFAULT_PASSWORD": "from-env", "HOME": "/x"})
    assert (s.superuser, s.redis(), s.role("order_service")) == \
        ("from-dotenv", "from-env", "dev-only-order-service")
    assert "from" not in repr(s)


def test_set_overrides_is_refused_naming_the_settings(tmp_path):
    b = ComposeBackend(tmp_path, "single", project_dir=ROOT)
    assert b.set_overrides({}) == []
    with pytest.raises(UsageError, match=r"docker-compose\.yml.*orders: DB_POOL_MAX"):
        b.set_overrides({"orders": {"DB_POOL_MAX": "4"}})


def test_backend_refuses_a_bad_topology(tmp_path):
    with pytest.raises(UsageError, match="'huge'"):
        ComposeBackend(tmp_path, "huge")


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.skipif(_docker_engine_answers(), reason="a Docker engine answers here: up() would start the stack")
def test_up_without_a_docker_engine_is_an_infra_error(tmp_path):
    with pytest.raises(InfraError, match="Docker") as e:
        ComposeBackend(tmp_path, "single", project_dir=ROOT).up(timeout_s=30)
    assert e.value.exit_code == 3
    assert not (tmp_path / "stack.json").exists()


def test_up_with_a_docker_client_but_no_daemon(tmp_path, monkeypatch):
    """As on this machine: the client answers, the daemon does not (a fake client)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at "
                    "unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(InfraError, match="no Docker engine is reachable.*Cannot connect"):
        ComposeBackend(tmp_path / "state", "single", project_dir=ROOT).up(timeout_s=30)


def test_up_without_the_docker_command(tmp_path, monkeypatch):
    monkeypatch.setattr(compose.shutil, "which", lambda name: None)
    with pytest.raises(InfraError, match="`docker` command is not installed"):
        ComposeBackend(tmp_path, "single", project_dir=ROOT).up(timeout_s=30)
    # down() has nothing to stop and says so instead of failing
    (tmp_path / "stack.json").write_text("{}")
    said = []
    assert ComposeBackend(tmp_path, "single", project_dir=ROOT).down(log=said.append) == []
    assert not (tmp_path / "stack.json").exists() and "not installed" in said[0]
