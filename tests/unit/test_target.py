"""Targets files without a deployment: reading (strict, loopback only unless
allowed), what a scenario needs from one, and the process actions' commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError, InfraError, UsageError
from harness.files import read_yaml
from harness.stack.info import (SCHEMA, Database, Instance, Part, ProxyApi, ProxyLink, RedisInfo,
                                Replica, Service, StackInfo)
from harness.stack.target import (REQUIRED_SERVICES, TargetActions, TargetBackend, dump_target,
                                  export_target, load_target, missing_for)
from scenarios import registry


def minimal(**changes) -> dict:
    doc = {"msdb_target": 1,
           "services": {s: f"http://127.0.0.1:{16000 + i}" for i, s in enumerate(REQUIRED_SERVICES)},
           "toxiproxy": {"api": "http://127.0.0.1:16030",
                         "links": {"catalog-db": {"kind": "db", "from": "catalog", "to": "pg"}}}}
    doc.update(changes)
    return doc


def write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "target.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def error_of(tmp_path, doc) -> str:
    with pytest.raises(ConfigError) as e:
        load_target(write(tmp_path, doc))
    return str(e.value)


def test_a_minimal_file_reads(tmp_path):
    t = load_target(write(tmp_path, minimal()))
    assert t.toxiproxy.links["catalog-db"].from_ == "catalog"
    assert t.redis is None and t.replica is None and t.parts == {}


@pytest.mark.parametrize("change, named", [
    ({"colour": "red"}, "colour: unknown key"),
    ({"msdb_target": 2}, "msdb_target"),
    ({"allow_remote": "yes"}, "allow_remote"),
    ({"toxiproxy": {"api": "http://127.0.0.1:1", "links": {"x": {"kind": "dbx", "from": "a", "to": "b"}}}},
     "toxiproxy.links.x.kind"),
    ({"parts": {"orders": {"kill": "kill -9 1"}}}, "parts.orders.kill"),
    ({"parts": {"orders": {"kill": []}}}, "parts.orders.kill"),
    ({"parts": {"orders": {"kill": ["/no/such/program"]}}}, "parts.orders.kill: program '/no/such/program'"),
    ({"parts": {"orders": {"timeout_s": -1, "kill": ["true"]}}}, "parts.orders.timeout_s"),
    ({"redis": {"url": "http://127.0.0.1:1"}}, "redis.url"),
    ({"instances": {"pg": {"admin_dsn": "host=127.0.0.1 port=1", "role": "replica",
                           "replica_of": "nope"}}}, "instances.pg.replica_of"),
    ({"databases": {"orders": {"instance": "pg", "database": "d", "role": "r",
                               "dsn": "host=127.0.0.1"}}}, "databases.orders.instance"),
    ({"toxiproxy": {"api": "http://127.0.0.1", "links": {"a": {"kind": "db", "from": "a", "to": "b"}}}},
     "toxiproxy.api"),
])
def test_a_bad_file_is_exit_2_naming_the_key(tmp_path, change, named):
    assert named in error_of(tmp_path, minimal(**change))


def test_a_missing_service_is_named(tmp_path):
    doc = minimal()
    del doc["services"]["orders"]
    assert "services: missing orders" in error_of(tmp_path, doc)


@pytest.mark.parametrize("key, value", [
    ("services", "http://192.0.2.7:80"),
    ("redis", {"url": "redis://db.example.com:6379/0"}),
    ("instances", {"pg": {"admin_dsn": "postgresql://u:p@10.0.0.1:5432/postgres"}}),
])
def test_hosts_other_than_loopback_need_allow_remote(tmp_path, key, value):
    doc = minimal()
    if key == "services":
        doc["services"]["users"] = value
    else:
        doc[key] = value
    assert "not loopback" in error_of(tmp_path, doc)
    doc["allow_remote"] = True
    load_target(write(tmp_path, doc))       # allowed: nothing is contacted while reading


@pytest.mark.parametrize("content, named", [
    (b"\xff\xfe\x00binary", "not UTF-8 text"),
    (b"- just\n- a list\n", "expected a mapping"),
    (b"services: [unclosed\n", "not valid YAML"),
])
def test_unreadable_files_are_exit_2(tmp_path, content, named):
    p = tmp_path / "t.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=named):
        load_target(p)


def test_read_yaml_names_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml(tmp_path, "--target")
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml", "--target")


# -- what a scenario needs ------------------------------------------------------------------

def info_of(*, parts=(), databases=None, replica=False, redis=True, cdc=True,
            target_file=None) -> StackInfo:
    services = {s: Service(url=f"http://127.0.0.1:{16000 + i}") for i, s in enumerate(REQUIRED_SERVICES)}
    if cdc:
        services["cdc"] = Service(url="http://127.0.0.1:16026")
    names = ("catalog-db", "orders-db", "orders-to-payments", "orders-to-catalog", "orders-replication")
    return StackInfo(
        schema=SCHEMA, backend="target", state="running", state_dir="/nonexistent", topology="own",
        base_port=None, tls=False, services=services,
        instances=(Instance(name="pg", role="primary", replica_of=None, services=("orders",),
                            admin_dsn="host=127.0.0.1"),
                   Instance(name="pg-r", role="replica", replica_of="pg", services=("orders",),
                            admin_dsn="host=127.0.0.1")),
        databases=databases if databases is not None else {
            "orders": Database(instance="pg", database="order_service_db", role="order_service",
                               dsn="host=127.0.0.1")},
        replica=Replica(instance="pg-r", primary="pg", dsn="host=127.0.0.1", link="") if replica else None,
        redis=RedisInfo(url="redis://127.0.0.1:1") if redis else None,
        proxy=ProxyApi(api="http://127.0.0.1:16030", proxies=tuple(
            ProxyLink(name=n, kind="db", source="a", target="b", listen="x", upstream="y") for n in names)),
        parts=tuple(parts), engines=(), target_file=target_file)


def why(sc_name: str, info: StackInfo) -> str | None:
    sc = registry.get(sc_name)
    return missing_for(info, [dict(f) for f in sc.faults], sc.stack_needs(), sc.service_env)


def part(name, *actions) -> Part:
    return Part(name=name, kind="process", endpoint="", actions={a: ("true",) for a in actions})


def test_network_fault_scenarios_need_only_their_proxy():
    assert why("smoke", info_of()) is None
    assert why("db-latency", info_of()) is None
    assert why("db-down", info_of()) is None


def test_a_kill_fault_needs_the_kill_and_the_start_command():
    assert why("db-restart", info_of()) == \
        "needs parts.pg.kill (the command for the kill fault on pg)"
    assert "parts.pg.start" in why("db-restart", info_of(parts=[part("pg", "kill")]))
    assert why("db-restart", info_of(parts=[part("pg", "kill", "start")])) is None
    assert "needs databases.orders" in why("db-restart", info_of(databases={}))


def test_a_pause_fault_is_healed_by_resume():
    info = info_of(parts=[part("search", "pause", "start")])
    assert "parts.search.resume" in missing_for(info, [{"kind": "pause", "target": "search"}], set(), {})


def test_a_proxy_the_file_does_not_name_is_missing():
    assert missing_for(info_of(), [{"kind": "latency", "target": "users-db"}], set(), {}) == \
        "needs toxiproxy.links.users-db (the proxy its latency fault acts on)"


def test_lag_scenarios_need_the_replica_redis_and_the_relay():
    sc = registry.get("cdc-lag")
    faults = [dict(f) for f in sc.faults]
    search = [part("search", "kill", "start")]
    assert "redis.url" in missing_for(info_of(parts=search, redis=False), faults, sc.stack_needs(), {})
    assert "services.cdc" in missing_for(info_of(parts=search, cdc=False), faults, sc.stack_needs(), {})
    assert missing_for(info_of(parts=search), faults, sc.stack_needs(), {}) is None
    assert missing_for(info_of(), [], {"replica"}, {}).startswith("needs replica")
    assert missing_for(info_of(replica=True), [], {"replica"}, {}) is None


def test_scenario_settings_must_be_declared_by_the_file(tmp_path):
    sc = registry.get("replica-lag")
    path = write(tmp_path, minimal())
    msg = missing_for(info_of(replica=True, target_file=str(path)), [], sc.stack_needs(), sc.service_env)
    assert msg.startswith("needs settings.orders.ORDER_HISTORY_READ: 'replica'")
    path = write(tmp_path, minimal(settings={"orders": {"ORDER_HISTORY_READ": "replica"}}))
    info = info_of(replica=True, target_file=str(path))
    assert missing_for(info, [], sc.stack_needs(), sc.service_env) is None


# -- the process actions ------------------------------------------------------------------------

def test_actions_run_their_commands_without_a_shell(tmp_path):
    log = tmp_path / "log"
    py = [sys.executable, "-c"]
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    parts = [Part(name="svc", kind="service", endpoint="", actions={
        "kill": (*py, append, str(log), "kill; rm -rf /"),     # a shell would run the rm
        "start": (*py, append, str(log), "start"),
        "running": (*py, "import sys; sys.exit(1)"),
        "stop": (*py, "import sys; sys.stderr.write('refused'); sys.exit(4)"),
    })]
    acts = TargetActions(info_of(parts=parts))
    assert acts.names() == ["svc"]
    acts.kill("svc")
    acts.start("svc")
    assert log.read_text().splitlines() == ["kill; rm -rf /", "start"]
    assert acts.running("svc") is False
    acts.resume("svc")             # no resume command: heal's resume is skipped, not an error
    with pytest.raises(InfraError, match="parts.svc.stop: .* exited 4: refused"):
        acts.stop("svc")
    with pytest.raises(InfraError, match="parts.svc.pause: the targets file has no command"):
        acts.pause("svc")


def test_an_action_that_hangs_is_stopped_at_its_timeout():
    p = Part(name="svc", kind="service", endpoint="", action_timeout_s=0.5,
             actions={"kill": (sys.executable, "-c", "import time; time.sleep(30)")})
    with pytest.raises(InfraError, match="did not finish within 0.5 s"):
        TargetActions(info_of(parts=[p])).kill("svc")


def test_a_part_without_a_running_command_counts_as_running():
    assert TargetActions(info_of(parts=[part("svc", "kill")])).running("svc") is True


def test_a_target_is_never_started_and_down_only_removes_the_scratch_dir(tmp_path):
    b = TargetBackend(tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    with pytest.raises(UsageError, match="not started by msdb"):
        b.up()
    assert b.down() == [] and not (tmp_path / "scratch").exists()


def test_an_export_reads_back_as_a_targets_file(tmp_path):
    info = info_of(replica=True, parts=[Part(name="pg", kind="postgres", endpoint="127.0.0.1:1",
                                              proc={"pid": 1})])
    text = dump_target(export_target(info, python=sys.executable))
    t = load_target(write(tmp_path, text))
    assert t.parts["pg"].kill[-4:] == ["kill", "pg", "--state-dir", str(Path("/nonexistent").resolve())]
    assert t.replica.instance == "pg-r" and t.redis.url == "redis://127.0.0.1:1"
    assert set(t.toxiproxy.links) == info.proxy.names


def test_an_export_of_a_seed_engines_stack_reads_back(tmp_path):
    from dataclasses import replace
    info = info_of(parts=[Part(name="kafka", kind="engine", endpoint="127.0.0.1:1", proc={"pid": 1})])
    links = info.proxy.proxies + (ProxyLink(name="bus-kafka", kind="kafka", source="cdc", target="kafka",
                                            listen="x", upstream="y"),)
    info = replace(info, proxy=ProxyApi(api=info.proxy.api, proxies=links))
    t = load_target(write(tmp_path, dump_target(export_target(info, python=sys.executable))))
    assert t.toxiproxy.links["bus-kafka"].kind == "kafka" and t.parts["kafka"].kind == "engine"
